"""Pass 1: YAML text -> ``Spec`` (``spec.py``), validated.

YAML is read with a safe loader (no object tags) that also remembers the line of every
mapping and key, so each error can point at the line to fix. Everything is checked here
that can be checked without image sizes: known ops and attributes, types and ranges,
references, duplicates and cycles. Shapes are checked by ``shapes.infer_shapes``, which
``parse_spec`` runs once on the recipe's crop size so a channel mismatch is reported at
load time, and parameters that cannot fit in memory are refused (``fit.py``). The format
is documented in README.md, "The spec format".

Hostile text costs no more than its size: the loader refuses nesting deeper than
``MAX_DEPTH``, aliases standing for more than ``ALIAS_BUDGET`` nodes and integers that do
not fit in 64 bits, and every message quotes the user's values through ``excerpt``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import attrs
import networkx as nx
import yaml

from ..errors import SpecError, excerpt
from ..ops import OPS, Op
from ..ops.base import finite_number
from .fit import check_params_fit_memory, host_available_bytes
from .shapes import check_shapes
from .spec import (INITS, MAX_SEED, OPTIMIZERS, SCHEDULES, InputSpec, NodeSpec, OptimizerSpec,
                   ScheduleSpec, Spec, TrainSpec)

# ---- a YAML loader that keeps line numbers and refuses duplicate keys and bombs --------

MAX_DEPTH = 32
"""Deepest nesting of YAML collections a spec may use (a spec needs about 5)."""
ALIAS_BUDGET = 100_000
"""Most YAML nodes that aliases may stand for in all, counted as if each were written
out in full: ample for `<<: *defaults` on every node of a large spec, and far below
what a 400-byte alias bomb expands to (billions)."""
MAX_INTEGER = 2**63 - 1  # torch's sizes and seeds are 64-bit
_INTEGER_CHARS = 100  # longer integer text is refused before Python converts it


class _Mapping(dict):
    """A YAML mapping that knows the line of itself and of each of its keys."""

    line: int = 0
    key_lines: dict


class _Bounded(yaml.composer.Composer, yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
    """PyYAML's safe loader, bounded: nesting deeper than ``MAX_DEPTH`` and aliases
    that stand for more than ``ALIAS_BUDGET`` nodes are refused while composing, before
    anything walks the expanded document (the composer shares an aliased node; what
    reads the result does not). The events come from a subclass: libyaml's parser
    where PyYAML has it (5x faster), else PyYAML's own; the composing, where the bounds
    are kept, is PyYAML's, in Python, for both."""

    def __init__(self, stream):
        self._start_events(stream)
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self._depth = 0
        self._expanded = 0  # nodes the aliases so far stand for
        self._sizes: dict[int, int] = {}  # id(node) -> its size with aliases written out

    def _start_events(self, stream) -> None:
        raise NotImplementedError

    def compose_node(self, parent, index):
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)
            self._spend(node, event.anchor, line)
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise SpecError(f"nested deeper than {MAX_DEPTH} levels", line=line)
        node = super().compose_node(parent, index)
        self._depth -= 1
        children = node.value if isinstance(node, yaml.SequenceNode) else \
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else ()
        self._sizes[id(node)] = 1 + sum(self._sizes[id(child)] for child in children)
        return node

    def _spend(self, node, anchor: str, line: int) -> None:
        size = self._sizes.get(id(node))
        if size is None:
            raise SpecError(f"alias *{anchor[:40]} is used inside the node it names",
                            line=line)
        self._expanded += size
        if self._expanded > ALIAS_BUDGET:
            raise SpecError(f"aliases expand to more than {ALIAS_BUDGET:,} YAML nodes "
                            f"(*{anchor[:40]} alone stands for {size:,})", line=line)

    def construct_object(self, node, deep=False):
        """A value PyYAML cannot construct (``!!int abc``, ``!!timestamp x``) is a
        SpecError at its line, not whatever Python raised deep in the constructor."""
        try:
            return super().construct_object(node, deep)
        except SpecError:
            raise
        except (ValueError, TypeError, AttributeError, IndexError, KeyError, ArithmeticError):
            what = excerpt(node.value) if isinstance(node, yaml.ScalarNode) else f"a {node.id}"
            raise SpecError(f"invalid YAML: cannot read {what} as {excerpt(node.tag)}",
                            line=node.start_mark.line + 1) from None

    def construct_yaml_int(self, node):
        line = node.start_mark.line + 1
        if len(node.value) > _INTEGER_CHARS:
            raise SpecError(f"an integer of {len(node.value):,} characters is too large",
                            line=line)
        value = super().construct_yaml_int(node)
        if abs(value) > MAX_INTEGER:
            raise SpecError(f"integer {excerpt(value)} is too large (at most {MAX_INTEGER})",
                            line=line)
        return value


def _construct_mapping(loader: _Bounded, node: yaml.MappingNode) -> _Mapping:
    loader.flatten_mapping(node)
    mapping = _Mapping()
    mapping.line = node.start_mark.line + 1
    mapping.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, str):
            raise SpecError(f"keys must be names, got {excerpt(key)}", line=line)
        if key in mapping:
            raise SpecError(f"duplicate key {excerpt(key)} (first on line {mapping.key_lines[key]})",
                            line=line, node=key)
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.key_lines[key] = line
    return mapping


_Bounded.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Bounded.add_constructor("tag:yaml.org,2002:int", _Bounded.construct_yaml_int)
# YAML 1.1 (PyYAML) reads 1e-3 as a string, as it wants a dot in a float; learning rates
# are written that way, so exponent floats without a dot are floats here, as in YAML 1.2.
# (Written so that a long run of digits fails to match in linear time, not quadratic.)
_Bounded.add_implicit_resolver("tag:yaml.org,2002:float",
                               re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
                               list("-+0123456789."))


class _PyYAMLLoader(_Bounded, yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):
    def _start_events(self, stream) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)


if yaml.__with_libyaml__:
    class _LibYAMLLoader(_Bounded, yaml.cyaml.CParser):
        def _start_events(self, stream) -> None:
            yaml.cyaml.CParser.__init__(self, stream)

_LineLoader = _LibYAMLLoader if yaml.__with_libyaml__ else _PyYAMLLoader


def _line(mapping: Any, key: str | None = None) -> int | None:
    if not isinstance(mapping, _Mapping):
        return None
    if key is not None and key in mapping.key_lines:
        return mapping.key_lines[key]
    return mapping.line


# ---- loading ---------------------------------------------------------------------

_TOP_KEYS = {"name", "inputs", "nodes", "output", "loss", "train"}


MAX_SPEC_CHARS = 8 * 2**20
"""The longest spec read: about 180,000 nodes, which take a minute to load; the U-Net's
spec is 4.5 kB. (A file read to its end could be /dev/zero.)"""


def load_spec(path: str | Path) -> Spec:
    """Reads, parses and validates a spec file; every problem is a ``SpecError``."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SPEC_CHARS + 1)
        text = data.decode("utf-8")
    except OSError as e:
        raise SpecError(f"cannot read spec: {e.strerror or e}", file=str(path)) from None
    except UnicodeDecodeError:
        raise SpecError("spec is not UTF-8 text", file=str(path)) from None
    return parse_spec(text, file=str(path))


def parse_spec(text: str, file: str | None = None) -> Spec:
    """Like ``load_spec`` for YAML text already in memory (``file`` only labels errors)."""
    try:
        if len(text) > MAX_SPEC_CHARS:
            raise SpecError(f"spec is longer than {MAX_SPEC_CHARS:,} characters")
        try:
            doc = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            problem = e.problem or e.context
            if "nesting depth" in str(problem):  # newer libyaml's own limit, hit before ours
                problem = f"nested deeper than {MAX_DEPTH} levels"
            raise SpecError(f"invalid YAML: {problem}",
                            line=mark.line + 1 if mark else None) from None
        except yaml.YAMLError as e:
            raise SpecError(f"invalid YAML: {e}") from None
        except UnicodeError:  # a lone surrogate, which libyaml cannot encode
            raise SpecError("spec is not valid Unicode text") from None
        spec = _build(doc, file)
        check_shapes(spec)
        check_params_fit_memory(spec, host_available_bytes())
        return spec
    except SpecError as e:
        raise e.located(file) from None


def _build(doc: Any, file: str | None) -> Spec:
    if not isinstance(doc, dict):
        raise SpecError("a spec is a mapping with keys 'inputs', 'nodes', 'output'", line=1)
    for key in doc:
        if key not in _TOP_KEYS:
            raise SpecError(f"unknown top-level key {excerpt(key)} (expected one of "
                            f"{', '.join(sorted(_TOP_KEYS))})", line=_line(doc, key), field=key)
    for key in ("inputs", "nodes", "output"):
        if key not in doc:
            raise SpecError(f"missing top-level key '{key}'", line=_line(doc), field=key)

    inputs = _inputs(doc["inputs"], _line(doc, "inputs"))
    nodes = _nodes(doc["nodes"], _line(doc, "nodes"))
    _check_distinct(inputs, nodes)
    names = {i.name for i in inputs} | {n.name for n in nodes}
    for node in nodes:
        for source in node.inputs:
            if source not in names:
                raise SpecError(f"unknown input {excerpt(source)}", line=node.line, node=node.name,
                                field="in")
    output = _reference(doc, "output", names)
    loss = _reference(doc, "loss", names) if "loss" in doc else None
    nodes = _in_dependency_order(nodes)
    return Spec(name=_name(doc), inputs=inputs, nodes=nodes, output=output, loss=loss,
                train=_train(doc.get("train", {}), _line(doc, "train")), file=file)


def _check_distinct(inputs: tuple[InputSpec, ...], nodes: tuple[NodeSpec, ...]) -> None:
    """Every input, node and parameter has a name of its own: a node named like an
    input, or like another node's parameter (``conv1.weight``), would be one value."""
    owner = {f"{n.name}.{role}": f"a parameter of node {excerpt(n.name)} (line {n.line})"
             for n in nodes for role in n.op.params()}
    for item in (*inputs, *nodes):  # inputs first: a node may not take an input's name
        if item.name in owner:
            raise SpecError(f"name already used by {owner[item.name]}", line=item.line,
                            node=item.name)
        if isinstance(item, InputSpec):
            owner[item.name] = f"an input (line {item.line})"


def _name(doc) -> str:
    name = doc.get("name", "network")
    if not isinstance(name, str):
        raise SpecError(f"expected a string, got {excerpt(name)}", line=_line(doc, "name"), field="name")
    _check_name(name, _line(doc, "name"), field="name")
    return name


def _check_name(name: str, line, *, node: str | None = None, field: str | None = None) -> None:
    """Names end up in messages, file names and pictures: printable text only (no NUL,
    no newline), and not empty."""
    if not name or not name.isprintable():
        raise SpecError(f"a name must be printable text (no control characters: NUL, "
                        f"newline, tab...), not empty, got {excerpt(name)}",
                        line=line, node=node, field=field)
    if node is not None and ("#" in name or name.startswith("grad:")):
        raise SpecError(f"'#' and the prefix 'grad:' name the compiler's own values "
                        f"(workspaces, gradients), got {excerpt(name)}", line=line, node=node)


def _reference(doc, key: str, names: set[str]) -> str:
    value = doc[key]
    if not isinstance(value, str):
        raise SpecError(f"expected a node name, got {excerpt(value)}", line=_line(doc, key), field=key)
    if value not in names:
        raise SpecError(f"unknown node {excerpt(value)}", line=_line(doc, key), field=key)
    return value


def _inputs(raw, line) -> tuple[InputSpec, ...]:
    if not isinstance(raw, dict) or not raw:
        raise SpecError("'inputs' maps each input name to {channels: C}", line=line, field="inputs")
    inputs = []
    for name, body in raw.items():
        where = _line(raw, name)
        _check_name(name, where, node=name)
        if not isinstance(body, dict) or set(body) != {"channels"}:
            raise SpecError("an input is declared as {channels: C}", line=where, node=name)
        channels = body["channels"]
        if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
            raise SpecError(f"must be a positive integer, got {excerpt(channels)}", line=where,
                            node=name, field="channels")
        inputs.append(InputSpec(name=name, channels=channels, line=where))
    return tuple(inputs)


def _nodes(raw, line) -> tuple[NodeSpec, ...]:
    if not isinstance(raw, dict) or not raw:
        raise SpecError("'nodes' maps each node name to {op: ..., in: ..., attributes}",
                        line=line, field="nodes")
    return tuple(_node(name, body, _line(raw, name)) for name, body in raw.items())


def _node(name: str, body, line) -> NodeSpec:
    _check_name(name, line, node=name)
    if not isinstance(body, dict):
        raise SpecError("a node is a mapping like {op: relu, in: conv1}", line=line, node=name)
    if "op" not in body:
        raise SpecError("missing 'op'", line=line, node=name, field="op")
    op_name = body["op"]
    if not isinstance(op_name, str) or op_name not in OPS:
        raise SpecError(f"unknown op {excerpt(op_name)} (known: {', '.join(sorted(OPS))})",
                        line=_line(body, "op"), node=name, field="op")
    op_class = OPS[op_name]
    sources = _sources(name, body, op_class, line)
    fields = {f.name: f for f in attrs.fields(op_class)}
    given = {k: v for k, v in body.items() if k not in ("op", "in")}
    for key in given:
        if key not in fields:
            expected = ", ".join(fields) or "none"
            raise SpecError(f"unknown attribute {excerpt(key)} for op {op_name} (attributes: {expected})",
                            line=_line(body, key), node=name, field=key)
    for key, f in fields.items():
        if f.default is attrs.NOTHING and key not in given:
            raise SpecError(f"missing attribute '{key}' for op {op_name}", line=line,
                            node=name, field=key)
    try:
        op = op_class(**given)
    except SpecError as e:
        raise SpecError(e.problem, line=_line(body, e.field), node=name, field=e.field) from None
    return NodeSpec(name=name, op=op, inputs=sources, line=line)


def _sources(name: str, body, op_class: type[Op], line) -> tuple[str, ...]:
    roles = op_class.inputs
    where = _line(body, "in") or line
    if "in" not in body:
        raise SpecError(f"missing 'in' (the {op_class.name} op reads {', '.join(roles)})",
                        line=line, node=name, field="in")
    raw = body["in"]
    sources = [raw] if isinstance(raw, str) else raw
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        raise SpecError(f"expected a node name or a list of names, got {excerpt(raw)}", line=where,
                        node=name, field="in")
    if len(sources) != len(roles):
        raise SpecError(f"op {op_class.name} takes {len(roles)} input(s) ({', '.join(roles)}), "
                        f"got {len(sources)}", line=where, node=name, field="in")
    return tuple(sources)


def _in_dependency_order(nodes: tuple[NodeSpec, ...]) -> tuple[NodeSpec, ...]:
    """Nodes sorted so that each comes after its inputs, keeping the written order
    where the edges leave a choice; a cycle is an error naming one node on it."""
    graph = nx.DiGraph()
    position = {n.name: i for i, n in enumerate(nodes)}
    graph.add_nodes_from(position)
    for node in nodes:
        graph.add_edges_from((s, node.name) for s in node.inputs if s in position)
    try:
        order = list(nx.lexicographical_topological_sort(graph, key=position.__getitem__))
    except nx.NetworkXUnfeasible:
        cycle = [u for u, _ in nx.find_cycle(graph)]
        first = min(cycle, key=position.__getitem__)
        node = nodes[position[first]]
        raise SpecError(f"cycle: {' -> '.join(cycle + [cycle[0]])}", line=node.line,
                        node=node.name, field="in") from None
    return tuple(nodes[position[name]] for name in order)


def _train(raw, line) -> TrainSpec:
    if not isinstance(raw, dict):
        raise SpecError("'train' is a mapping", line=line, field="train")
    fields = {f.name: f for f in attrs.fields(TrainSpec)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        where = _line(raw, key)
        if key not in fields:
            raise SpecError(f"unknown training setting {excerpt(key)} (settings: {', '.join(fields)})",
                            line=where, field=f"train.{key}")
        if key == "optimizer":
            values[key] = _choice(value, where, OptimizerSpec, OPTIMIZERS, "train.optimizer",
                                  "{name: sgd, lr: 0.1}")
        elif key == "schedule":
            values[key] = _choice(value, where, ScheduleSpec, SCHEDULES, "train.schedule",
                                  "{name: cosine, eta_min: 0}")
        elif key == "init":
            if value not in INITS:
                raise SpecError(f"unknown init {excerpt(value)} (known: {', '.join(INITS)})",
                                line=where, field="train.init")
            values[key] = value
        elif key == "clip_grad_norm":
            values[key] = _number(value, where, f"train.{key}", low=0, low_open=True)
        elif key == "augment":
            values[key] = _flag(value, where, f"train.{key}")
        else:
            minimum = 0 if key == "seed" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise SpecError(f"expected an integer >= {minimum}, got {excerpt(value)}", line=where,
                                field=f"train.{key}")
            if key == "seed" and value > MAX_SEED:
                raise SpecError(f"expected a seed from 0 to {MAX_SEED}", line=where,
                                field="train.seed")
            values[key] = value
    return TrainSpec(**values)


# (low, high, high excluded) for settings whose range is narrower than "a number >= 0"
_RANGES = {"eps": (0, None, False), "gamma": (0, 1, False), "rampdown_fraction": (0, 1, False),
           "rampup_fraction": (0, 1, True)}


def _choice(raw, line, cls, settings_of: dict[str, tuple[str, ...]], field: str, example: str):
    """An optimizer or schedule: ``{name: ..., setting: value}``, where each name reads
    only its own settings (``settings_of[name]``)."""
    what = field.split(".")[-1]
    if not isinstance(raw, dict):
        raise SpecError(f"expected a mapping like {example}", line=line, field=field)
    name = raw.get("name", attrs.fields_dict(cls)["name"].default)
    if not isinstance(name, str) or name not in settings_of:
        raise SpecError(f"unknown {what} {excerpt(name)} (known: {', '.join(settings_of)})",
                        line=_line(raw, "name"), field=f"{field}.name")
    defaults = {f.name: f.default for f in attrs.fields(cls)}
    values: dict[str, Any] = {"name": name}
    for key, value in raw.items():
        where, setting = _line(raw, key), f"{field}.{key}"
        if key == "name":
            continue
        if key not in settings_of[name]:
            known = ", ".join(("name",) + settings_of[name])
            raise SpecError(f"unknown {name} setting {excerpt(key)} ({name} settings: {known})",
                            line=where, field=setting)
        default = defaults[key]
        if isinstance(default, bool):
            values[key] = _flag(value, where, setting)
        elif key == "betas":
            if not (isinstance(value, list) and len(value) == 2
                    and all(finite_number(b) and 0 <= b < 1 for b in value)):
                raise SpecError(f"expected two numbers in [0, 1) like [0.9, 0.999], got {excerpt(value)}",
                                line=where, field=setting)
            values[key] = tuple(float(b) for b in value)
        elif isinstance(default, int):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SpecError(f"expected an integer >= 1, got {excerpt(value)}", line=where,
                                field=setting)
            values[key] = value
        else:
            low, high, high_open = _RANGES.get(key, (0, None, False))
            values[key] = _number(value, where, setting, low=low, high=high, high_open=high_open)
    return cls(**values)


def _number(value, line, field, *, low=0, high=None, low_open=False, high_open=False) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not finite_number(value):
        shown = repr(value) if isinstance(value, float) else "an integer beyond float range"
        raise SpecError(f"expected a finite number, got {shown}", line=line, field=field)
    ok = finite_number(value) and (value > low if low_open else value >= low)
    if high is not None:
        ok = ok and (value < high if high_open else value <= high)
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        wanted = f"a number in {lo}{low}, {high}{hi}" if high is not None \
            else f"a number {'>' if low_open else '>='} {low}"
        raise SpecError(f"expected {wanted}, got {excerpt(value)}", line=line, field=field)
    return float(value)


def _flag(value, line, field) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"expected true or false, got {excerpt(value)}", line=line, field=field)
    return value
