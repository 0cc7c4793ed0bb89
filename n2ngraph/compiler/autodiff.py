"""Pass 3: forward DAG -> joint forward+backward DAG, from the ops' VJP rules.

Reverse mode over the graph, written out as more graph instead of run on a tape:

- ``grad:<loss>`` is seeded with 1;
- walking the forward ops from the loss backwards, each op that lies between a
  parameter and the loss gets one VJP node per input whose gradient is needed; the
  node reads what its rule ``needs`` (inputs, the forward result, the output gradient);
- a value read by several ops receives several contributions, which an explicit
  ``accumulate`` node sums into ``grad:<value>``;
- VJPs towards values no parameter influences (the input image, the target) are never
  built; they are listed in ``graph.graph['pruned']`` so pictures can show them.

A module-style backward (``compat``: ``backward(grad_output)`` returning the gradient
w.r.t. the module's input) needs two more things, both options: ``seed_input`` makes
``grad:<loss>`` a graph *input* (the caller's output gradient, any shape) instead of a
constant 1, and ``wrt_inputs`` names graph inputs whose gradients are built rather than
pruned (listed in ``graph.graph['input_grads']``).

The result keeps every forward value and adds ``grad:*`` values with the same
attributes as forward ones (see ``graph.py``), so the scheduler, memory planner and
executor treat forward and backward alike.
"""

from __future__ import annotations

import networkx as nx

from ..errors import SpecError
from ..ops import Accumulate, Seed


def grad_name(value: str) -> str:
    return f"grad:{value}"


def joint_graph(forward: nx.DiGraph, loss: str, *, seed_input: bool = False,
                wrt_inputs: tuple[str, ...] = ()) -> nx.DiGraph:
    """Forward graph plus the backward program computing d loss / d every parameter
    (and d loss / d each of ``wrt_inputs``), seeded with 1 or, with ``seed_input``,
    with a gradient given as the graph input ``grad:<loss>``."""
    params = [v for v, kind in forward.nodes(data="kind") if kind == "param"]
    for name in wrt_inputs:
        if forward.nodes.get(name, {}).get("kind") != "input":
            raise ValueError(f"'{name}' is not an input of the graph")
    sources = [*params, *wrt_inputs]
    influenced = set(sources).union(*(nx.descendants(forward, s) for s in sources))
    needs_grad = influenced & (nx.ancestors(forward, loss) | {loss})

    readers: dict[str, list[tuple[str, str]]] = {v: [] for v in forward}
    for node in forward:
        if node in needs_grad and forward.nodes[node]["kind"] == "op":
            for role, source in forward.nodes[node]["args"]:
                if source in needs_grad:
                    readers[source].append((node, role))

    graph = nx.DiGraph(forward)
    graph.graph.update(loss=loss, pruned=(), grads={}, input_grads={})
    if seed_input:
        graph.add_node(grad_name(loss), kind="input", shape=forward.nodes[loss]["shape"])
    else:
        graph.add_node(grad_name(loss), kind="seed", shape=forward.nodes[loss]["shape"],
                       op=Seed(shape=forward.nodes[loss]["shape"]), kernel="forward", args=(),
                       inplace=None, fwd=loss)
    pruned = []
    for node in reversed(list(nx.topological_sort(forward))):
        data = forward.nodes[node]
        if data["kind"] != "op" or node not in needs_grad:
            continue
        _accumulate(graph, node, readers[node])
        args = dict(data["args"])
        for role, source in data["args"]:
            if source not in needs_grad:
                pruned.append((node, role))
                continue
            rule = data["op"].vjps.get(role)
            if rule is None:
                raise SpecError(f"op {data['op'].name} has no gradient rule for its input "
                                f"'{role}'", node=node, line=data.get("line"))
            known = {**args, "out": node, "gout": grad_name(node)}
            needs = tuple((need, known[need]) for need in rule.needs)
            name = _contribution_name(source, node, role, readers[source])
            graph.add_node(name, kind="vjp", shape=forward.nodes[source]["shape"], op=data["op"],
                           kernel=rule.kernel, args=needs,
                           inplace=known[rule.inplace] if rule.inplace else None,
                           fwd=node, role=role)
            graph.add_edges_from((value, name, {"role": need}) for need, value in needs)
    for source in sources:
        if readers[source]:
            _accumulate(graph, source, readers[source])
            found = graph.graph["grads" if source in params else "input_grads"]
            found[source] = grad_name(source)
    graph.graph["pruned"] = tuple(pruned)
    graph.graph["outputs"] = (loss, *graph.graph["grads"].values(),
                              *graph.graph["input_grads"].values())
    return nx.freeze(graph)


def _contribution_name(source: str, reader: str, role: str, readers: list) -> str:
    """A value's only gradient contribution is its gradient; several get summed."""
    return grad_name(source) if len(readers) == 1 else f"{grad_name(source)}@{reader}.{role}"


def _accumulate(graph: nx.DiGraph, value: str, readers: list[tuple[str, str]]) -> None:
    if len(readers) < 2:
        return
    terms = [_contribution_name(value, reader, role, readers) for reader, role in readers]
    op = Accumulate(count=len(terms))
    args = tuple(zip(op.inputs, terms))
    graph.add_node(grad_name(value), kind="accumulate", shape=graph.nodes[value]["shape"], op=op,
                   kernel="forward", args=args, inplace=terms[0], fwd=value)
    graph.add_edges_from((term, grad_name(value), {"role": role}) for role, term in args)
