"""The one error a user sees for a bad spec: it names the file, line, node and field."""

from __future__ import annotations


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
            subject.append(f"node '{self.node}'")
        if self.field:
            subject.append(f"field '{self.field}'")
        return where + (", ".join(subject) + ": " if subject else "") + self.problem

    def located(self, file: str | None) -> "SpecError":
        """The same error, with the spec file filled in where it was not known yet."""
        if self.file or not file:
            return self
        return SpecError(self.problem, file=file, line=self.line, node=self.node, field=self.field)
