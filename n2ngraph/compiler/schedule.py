"""Pass 4: joint DAG -> ``Schedule``, the order kernels run in and what dies when.

Forward ops run in the spec's order. Backward ops run as soon as their inputs exist,
deepest layer first, so each activation is released right after the last VJP that reads
it rather than at the end of the step: a topological sort whose tie-break is
(forward before backward, then forward position, ascending for forward ops and
descending for backward ones).
"""

from __future__ import annotations

import attrs
import networkx as nx

from .graph import Graph

SOURCES = ("input", "param")


@attrs.frozen
class Schedule:
    order: tuple[str, ...]
    """Computed values, in the order their kernels run."""
    frees: tuple[tuple[str, ...], ...]
    """``frees[i]``: values nothing reads after step ``i`` (before step 0 for index -1
    is not needed: inputs are always read)."""
    last_use: dict[str, int]
    """Step of the last reader of each value; -1 for a value nobody reads."""


def schedule(graph: Graph) -> Schedule:
    computed = [v for v, node in graph.nodes.items() if node.kind not in SOURCES]
    forward_position = {v: i for i, v in enumerate(nx.topological_sort(graph.dag))}

    def priority(value: str):
        node = graph[value]
        if node.kind == "op":
            return (0, forward_position[value], value)
        return (1, -forward_position[node.fwd], value)

    order = tuple(nx.lexicographical_topological_sort(graph.dag.subgraph(computed), key=priority))
    step = {v: i for i, v in enumerate(order)}
    last_use = {v: max((step[r] for r in graph.successors(v)), default=-1) for v in graph}
    frees: list[list[str]] = [[] for _ in order]
    for value, last in last_use.items():
        if last >= 0:
            frees[last].append(value)
    return Schedule(order=order, frees=tuple(tuple(sorted(f)) for f in frees), last_use=last_use)
