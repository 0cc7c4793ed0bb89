"""The graph IR, and pass 2: ``Spec`` + input shapes -> the forward graph.

A ``Graph`` maps each *value* (a graph input, a parameter like ``conv1.weight``, an op
result named after its spec node, later a gradient ``grad:conv1``) to a frozen ``Node``
that says everything the later passes need, so they never look back at the spec. The
edges are the nodes' arguments; ``Graph.dag`` is them as a frozen networkx DiGraph, for
graph algorithms and pictures. Passes never change a graph: they build the next one.
Nodes that no requested output depends on are left out (inference never sees the loss
or the target).
"""

from __future__ import annotations

import functools
from types import MappingProxyType
from typing import Any, Iterable, Iterator, Mapping

import attrs
import networkx as nx

from ..ops import Op, Shape
from .shapes import infer_shapes
from .spec import Spec

KINDS = ("input", "param", "op", "vjp", "accumulate", "seed")


@attrs.frozen
class Node:
    """One value: what it is, its shape, and (if computed) how."""

    kind: str
    """'input' | 'param' | 'op'; autodiff adds 'vjp', 'accumulate' and 'seed'."""
    shape: Shape
    op: Op | None = None
    """The op computing it (computed values only); a VJP node has its forward op."""
    kernel: str = "forward"
    """Which of the op's computations: 'forward', or a VJP rule's (``grad_x``)."""
    args: tuple[tuple[str, str], ...] = ()
    """(argument role, value name) pairs the kernel reads: the graph's edges."""
    inplace: str | None = None
    """The value whose buffer the result may take over, if it dies here."""
    fwd: str | None = None
    """The forward node it belongs to: itself for an op, the differentiated op for a VJP,
    the value whose gradient an accumulate or seed node makes."""
    wrt: str | None = None
    """For a VJP node: the argument role it differentiates (``x``, ``weight``)."""
    owner: str | None = None
    """For a parameter: the node that owns it."""
    line: int | None = None
    """The spec line of the node, for errors."""
    impl: Any = None
    """How the kernel runs: what ``lower.py`` chose for it (None before that pass)."""

    def __attrs_post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown node kind {self.kind!r}")


@attrs.frozen(slots=False)
class Graph:
    """Values by name (in the order they were added: forward before backward), and what
    the graph is for. Read-only: ``nodes`` is a mapping proxy of frozen nodes."""

    nodes: Mapping[str, Node] = attrs.field(converter=lambda n: MappingProxyType(dict(n)))
    outputs: tuple[str, ...] = ()
    """Values the caller reads after a run: never released by the memory plan."""
    name: str = ""
    loss: str | None = None
    grads: Mapping[str, str] = attrs.field(default={}, converter=lambda g: MappingProxyType(dict(g)))
    """Parameter -> the value holding its gradient (autodiff)."""
    input_grads: Mapping[str, str] = attrs.field(default={},
                                                 converter=lambda g: MappingProxyType(dict(g)))
    """Graph input -> the value holding its gradient, where one was asked for."""
    pruned: tuple[tuple[str, str], ...] = ()
    """(node, role) pairs whose gradient autodiff did not build: nothing needs it."""
    fused: tuple[tuple[str, str], ...] = ()
    """(upsample, conv) pairs that rewrite.py fused into one node."""

    def __getitem__(self, value: str) -> Node:
        return self.nodes[value]

    def __contains__(self, value: object) -> bool:
        return value in self.nodes

    def __iter__(self) -> Iterator[str]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    @functools.cached_property
    def dag(self) -> nx.DiGraph:
        """The edges as a frozen networkx DiGraph: argument -> reader, with its role."""
        dag = nx.DiGraph()
        for value, node in self.nodes.items():
            dag.add_node(value)
            dag.add_edges_from((source, value, {"role": role}) for role, source in node.args)
        return nx.freeze(dag)

    def successors(self, value: str) -> Iterable[str]:
        return self.dag.successors(value)

    def of_kind(self, *kinds: str) -> list[str]:
        return [v for v, node in self.nodes.items() if node.kind in kinds]

    def replace(self, **changes) -> "Graph":
        """A new graph with some fields changed (``nodes=...``, ``grads=...``)."""
        return attrs.evolve(self, **changes)


def forward_graph(spec: Spec, input_shapes: Mapping[str, Shape],
                  outputs: Iterable[str]) -> Graph:
    """The forward graph computing ``outputs`` for inputs of the given shapes."""
    outputs = tuple(outputs)
    shapes = infer_shapes(spec, input_shapes, outputs)
    nodes: dict[str, Node] = {}
    for inp in spec.inputs:
        if inp.name in shapes:
            nodes[inp.name] = Node("input", shapes[inp.name])
    for node in spec.nodes:
        if node.name not in shapes:
            continue
        args = list(zip(node.op.inputs, node.inputs))
        for role in node.op.params():
            param = f"{node.name}.{role}"
            nodes[param] = Node("param", shapes[param], owner=node.name)
            args.append((role, param))
        inplace = dict(args).get(node.op.inplace) if node.op.inplace else None
        nodes[node.name] = Node("op", shapes[node.name], op=node.op, args=tuple(args),
                                inplace=inplace, fwd=node.name, line=node.line)
    return Graph(nodes, outputs=outputs, name=spec.name)
