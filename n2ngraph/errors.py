"""The one error a user sees for a bad spec: it names the file, line, node and field.

``excerpt`` is how any message quotes a value the user wrote: a short repr that looks
at only a few elements, so that a huge value (a YAML alias bomb, a 5,000-digit integer)
costs no more to report than a small one.
"""

from __future__ import annotations

import math

EXCERPT_CHARS = 60
"""The longest quotation of a user's value in a message."""
_NAME_CHARS = 80  # node and field names in the "where" part of a message


def excerpt(value, limit: int = EXCERPT_CHARS) -> str:
    """``repr(value)`` cut to at most ``limit`` characters ("..." marks a cut), built
    from at most about ``limit`` elements, however large or deep ``value`` is."""
    text = _bounded_repr(value, limit + 1, depth=3)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _bounded_repr(value, budget: int, depth: int) -> str:
    """A repr of ``value`` of about ``budget`` characters or more, never walking more
    than ``budget`` elements of a container nor more than ``depth`` levels into it."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        digits = int(value.bit_length() * math.log10(2)) + 1
        return f"<an integer of about {digits} digits>"  # repr() refuses over 4300 digits
    if isinstance(value, (str, bytes)):
        return repr(value[:budget])
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        return _bounded_container(value, budget, depth)
    if isinstance(value, (bool, int, float, type(None))):
        return repr(value)
    return repr(value)[:budget] if type(value).__repr__ is not object.__repr__ \
        else f"<{type(value).__name__}>"


def _bounded_container(value, budget: int, depth: int) -> str:
    opening, closing = ("{", "}") if isinstance(value, (dict, set, frozenset)) else \
        ("(", ")") if isinstance(value, tuple) else ("[", "]")
    if depth == 0:
        return opening + "..." + closing if value else opening + closing
    items = value.items() if isinstance(value, dict) else value
    parts, used = [], 2
    for item in items:
        if used >= budget:
            parts.append("...")
            break
        if isinstance(value, dict):
            text = (_bounded_repr(item[0], budget - used, depth - 1) + ": "
                    + _bounded_repr(item[1], budget - used, depth - 1))
        else:
            text = _bounded_repr(item, budget - used, depth - 1)
        parts.append(text)
        used += len(text) + 2
    return opening + ", ".join(parts) + closing


def _short_name(name: str) -> str:
    """A node or field name as a message shows it: control characters escaped, cut."""
    if not name.isprintable():
        name = name[:_NAME_CHARS].encode("unicode_escape").decode("ascii")
    return name if len(name) <= _NAME_CHARS else name[:_NAME_CHARS - 3] + "..."


class SpecError(ValueError):
    """A spec that cannot be compiled, with where and why.

    The message reads like a compiler diagnostic,
    ``specs/net.yaml:12: node 'conv2', field 'in_channels': expected 24, got 3``,
    and the parts stay available as attributes for tools and tests.
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 node: str | None = None, field: str | None = None):
        self.problem = message
        self.file = file
        self.line = line
        self.node = node
        self.field = field
        super().__init__(self._render())

    def _render(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        elif self.line:
            where = f"line {self.line}: "
        subject = []
        if self.node:
            subject.append(f"node '{_short_name(self.node)}'")
        if self.field:
            subject.append(f"field '{_short_name(self.field)}'")
        return where + (", ".join(subject) + ": " if subject else "") + self.problem

    def located(self, file: str | None) -> "SpecError":
        """The same error, with the spec file filled in where it was not known yet."""
        if self.file or not file:
            return self
        return SpecError(self.problem, file=file, line=self.line, node=self.node, field=self.field)
