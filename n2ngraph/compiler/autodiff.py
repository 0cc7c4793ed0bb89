"""Pass 3: forward DAG -> joint forward+backward DAG, from the ops' VJP rules.

Reverse mode over the graph, written out as more graph instead of run on a tape:

- ``grad:<loss>`` is seeded with 1;
- walking the forward ops from the loss backwards, each op that lies between a
  parameter and the loss gets one VJP node per input whose gradient is needed; the
  node reads what its rule ``needs`` (inputs, the forward result, the output gradient);
- a value read by several ops receives several contributions, which an explicit
  ``accumulate`` node sums into ``grad:<value>``;
- VJPs towards values no parameter influences (the input image, the target) are never
  built; they are listed in ``Graph.pruned`` so pictures can show them.

A module-style backward (``compat``: ``backward(grad_output)`` returning the gradient
w.r.t. the module's input) needs two more things, both options: ``seed_input`` makes
``grad:<loss>`` a graph *input* (the caller's output gradient, any shape) instead of a
constant 1, and ``wrt_inputs`` names graph inputs whose gradients are built rather than
pruned (listed in ``Graph.input_grads``).

The result keeps every forward value and adds ``grad:*`` values with the same
fields as forward ones (``graph.Node``), so the scheduler, memory planner and
executor treat forward and backward alike.
"""

from __future__ import annotations

import networkx as nx

from ..errors import SpecError
from ..ops import Accumulate, Seed
from .graph import Graph, Node


def grad_name(value: str) -> str:
    return f"grad:{value}"


def joint_graph(forward: Graph, loss: str, *, seed_input: bool = False,
                wrt_inputs: tuple[str, ...] = ()) -> Graph:
    """Forward graph plus the backward program computing d loss / d every parameter
    (and d loss / d each of ``wrt_inputs``), seeded with 1 or, with ``seed_input``,
    with a gradient given as the graph input ``grad:<loss>``."""
    params = forward.of_kind("param")
    for name in wrt_inputs:
        if name not in forward or forward[name].kind != "input":
            raise ValueError(f"'{name}' is not an input of the graph")
    needs_grad = _between(forward.dag, [*params, *wrt_inputs], loss)
    readers = _readers(forward, needs_grad)

    nodes = dict(forward.nodes)
    loss_shape = forward[loss].shape
    nodes[grad_name(loss)] = (Node("input", loss_shape) if seed_input else
                              Node("seed", loss_shape, op=Seed(shape=loss_shape), fwd=loss))
    pruned = []
    for value in reversed(list(nx.topological_sort(forward.dag))):
        node = forward[value]
        if node.kind != "op" or value not in needs_grad:
            continue
        _accumulate(nodes, value, readers[value])
        for role, source in node.args:
            if source not in needs_grad:
                pruned.append((value, role))
                continue
            name = _contribution_name(source, value, role, readers[source])
            nodes[name] = _vjp_node(value, node, role, forward[source].shape)
    grads, input_grads = {}, {}
    for source in [*params, *wrt_inputs]:
        if readers[source]:
            _accumulate(nodes, source, readers[source])
            (grads if source in params else input_grads)[source] = grad_name(source)
    return forward.replace(nodes=nodes, loss=loss, pruned=tuple(pruned), grads=grads,
                           input_grads=input_grads,
                           outputs=(loss, *grads.values(), *input_grads.values()))


def _between(dag: nx.DiGraph, sources: list[str], loss: str) -> set[str]:
    """Values that some source influences and that influence the loss: those whose
    gradient is needed."""
    influenced = set(sources).union(*(nx.descendants(dag, s) for s in sources))
    return influenced & (nx.ancestors(dag, loss) | {loss})


def _readers(forward: Graph, needs_grad: set[str]) -> dict[str, list[tuple[str, str]]]:
    """For each value, the (op, role) pairs that read it on a path to the loss."""
    readers: dict[str, list[tuple[str, str]]] = {v: [] for v in forward}
    for value, node in forward.nodes.items():
        if value in needs_grad and node.kind == "op":
            for role, source in node.args:
                if source in needs_grad:
                    readers[source].append((value, role))
    return readers


def _vjp_node(value: str, node: Node, role: str, shape) -> Node:
    """The node computing d loss / d (argument ``role`` of ``value``) by the op's rule."""
    rule = node.op.vjps.get(role)
    if rule is None:
        raise SpecError(f"op {node.op.name} has no gradient rule for its input '{role}'",
                        node=value, line=node.line)
    known = {**dict(node.args), "out": value, "gout": grad_name(value)}
    return Node("vjp", shape, op=node.op, kernel=rule.kernel,
                args=tuple((need, known[need]) for need in rule.needs),
                inplace=known[rule.inplace] if rule.inplace else None, fwd=value, wrt=role)


def _contribution_name(source: str, reader: str, role: str, readers: list) -> str:
    """A value's only gradient contribution is its gradient; several get summed."""
    return grad_name(source) if len(readers) == 1 else f"{grad_name(source)}@{reader}.{role}"


def _accumulate(nodes: dict[str, Node], value: str, readers: list[tuple[str, str]]) -> None:
    if len(readers) < 2:
        return
    terms = [_contribution_name(value, reader, role, readers) for reader, role in readers]
    op = Accumulate(count=len(terms))
    nodes[grad_name(value)] = Node("accumulate", nodes[value].shape, op=op,
                                   args=tuple(zip(op.inputs, terms)), inplace=terms[0], fwd=value)
