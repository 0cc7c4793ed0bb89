"""Pass 5: schedule -> ``MemoryPlan``: which buffer every value and scratch space uses.

Liveness: a value lives from the step that writes it (inputs: before step 0) to the
step of its last reader; a kernel's workspace lives during its own step only, unless a
VJP kernel of the same node reads it (``Op.shares``): then until that kernel. Buffers
are handed out greedily in schedule order, best fit first, and a buffer returns to the
pool after the last reader of its value has run, so a later value can reuse it.
In place: when an op allows it (``inplace``) and the value it may overwrite dies at
that very step, the result takes over that value's buffer instead of a new one.

Parameters and their gradients are not planned: the ``Program`` owns them for its whole
life (``external``). Values the caller reads after the run (``pinned``: the loss, the
inference output) are never released.
"""

from __future__ import annotations

import math
from typing import Iterable

import attrs
import networkx as nx

from .schedule import Schedule


@attrs.frozen
class MemoryPlan:
    buffers: tuple[int, ...]
    """Elements in each buffer; the executor allocates each once."""
    slots: dict[str, int]
    """Planned value (or ``node#workspace``) -> buffer index."""
    shapes: dict[str, tuple[int, ...]]
    intervals: dict[str, tuple[int, int]]
    """First and last step each planned value occupies its buffer (-1: before step 0)."""
    workspaces: dict[str, dict[str, str]]
    """Computing value -> {workspace name: planned key}."""
    inplace: tuple[tuple[str, str], ...]
    """(result, overwritten input) pairs that share a buffer by design."""
    itemsize: int

    @property
    def planned_bytes(self) -> int:
        return sum(self.buffers) * self.itemsize

    @property
    def unshared_bytes(self) -> int:
        """What the same values would take with a buffer each (no reuse, no in place)."""
        return sum(math.prod(s) for s in self.shapes.values()) * self.itemsize

    def report(self) -> str:
        saved = 1 - self.planned_bytes / max(self.unshared_bytes, 1)
        return (f"{len(self.buffers)} buffers, {self.planned_bytes / 2**20:.2f} MiB planned vs "
                f"{self.unshared_bytes / 2**20:.2f} MiB without reuse ({saved:.0%} saved, "
                f"{len(self.inplace)} in place)")


def kernel_shapes(graph: nx.DiGraph, value: str) -> dict[str, tuple[int, ...]]:
    """The shapes an op's ``workspace`` rule sees: its forward node's inputs and out."""
    data = graph.nodes[value]
    fwd = graph.nodes[data["fwd"]]
    if fwd.get("kind") != "op":
        return {}
    shapes = {role: graph.nodes[source]["shape"] for role, source in fwd["args"]}
    shapes["out"] = fwd["shape"]
    return shapes


class _Pool:
    """Free buffers by size; hands out the smallest that fits, else grows the largest."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.free: set[int] = set()

    def take(self, numel: int) -> int:
        fitting = [b for b in self.free if self.sizes[b] >= numel]
        if fitting:
            chosen = min(fitting, key=lambda b: (self.sizes[b], b))
        elif self.free:
            chosen = max(self.free, key=lambda b: (self.sizes[b], -b))
            self.sizes[chosen] = numel
        else:
            self.sizes.append(numel)
            return len(self.sizes) - 1
        self.free.remove(chosen)
        return chosen

    def give_back(self, buffer: int) -> None:
        self.free.add(buffer)


def plan_memory(graph: nx.DiGraph, sched: Schedule, *, external: Iterable[str] = (),
                pinned: Iterable[str] = (), itemsize: int = 4) -> MemoryPlan:
    external, pinned = set(external), set(pinned)
    pool = _Pool()
    slots: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    intervals: dict[str, tuple[int, int]] = {}
    holder: dict[int, str] = {}  # buffer -> value currently owning it
    workspaces: dict[str, dict[str, str]] = {}
    inplace: list[tuple[str, str]] = []

    def place(key: str, shape, step: int, last: int) -> None:
        shapes[key] = tuple(shape)
        slots[key] = pool.take(max(math.prod(shape), 1))
        holder[slots[key]] = key
        intervals[key] = (step, last)

    def release(key: str) -> None:
        if key in slots and holder.get(slots[key]) == key and key not in pinned:
            del holder[slots[key]]
            pool.give_back(slots[key])

    def lifetime(value: str, step: int) -> int:
        return math.inf if value in pinned else max(sched.last_use[value], step)

    kept, shared = _shared_workspaces(graph, sched)
    expiring: dict[int, list[str]] = {}
    for key, last in kept.items():
        expiring.setdefault(last, []).append(key)
    for value, kind in graph.nodes(data="kind"):
        if kind == "input":
            place(value, graph.nodes[value]["shape"], -1, lifetime(value, -1))
    for step, value in enumerate(sched.order):
        data = graph.nodes[value]
        scratch = data["op"].workspace(data["kernel"], kernel_shapes(graph, value))
        workspaces[value] = dict(shared.get(value, {}))
        own = []
        for name, shape in scratch.items():
            key = f"{value}#{name}"
            place(key, shape, step, kept.get(key, step))
            workspaces[value][name] = key
            if key not in kept:
                own.append(key)
        victim = data.get("inplace")
        if value in external:
            pass
        elif (victim in slots and victim not in pinned and sched.last_use[victim] == step
              and holder.get(slots[victim]) == victim
              and math.prod(graph.nodes[victim]["shape"]) == math.prod(data["shape"])):
            shapes[value] = tuple(data["shape"])
            slots[value] = slots[victim]
            holder[slots[value]] = value
            intervals[value] = (step, lifetime(value, step))
            inplace.append((value, victim))
        else:
            place(value, data["shape"], step, lifetime(value, step))
        for key in (*own, *expiring.get(step, ()), *sched.frees[step]):
            release(key)
        if sched.last_use.get(value, -1) < 0:
            release(value)  # written but never read (and not pinned): dead at once
    return MemoryPlan(buffers=tuple(pool.sizes), slots=slots, shapes=shapes,
                      intervals={k: (a, int(b) if b != math.inf else len(sched.order))
                                 for k, (a, b) in intervals.items()},
                      workspaces=workspaces, inplace=tuple(inplace), itemsize=itemsize)


def _shared_workspaces(graph: nx.DiGraph, sched: Schedule):
    """({forward workspace key: step of its last reading VJP kernel},
    {VJP value: {workspace name: forward workspace key}}) from every ``Op.shares``."""
    kept: dict[str, int] = {}
    shared: dict[str, dict[str, str]] = {}
    for step, value in enumerate(sched.order):
        data = graph.nodes[value]
        if data["kind"] == "op":
            continue
        for name, source in data["op"].shares(data["kernel"], kernel_shapes(graph, value)).items():
            if source != "forward" or data["fwd"] not in sched.order:
                raise ValueError(f"{value}: cannot share workspace {name!r} of {source!r}")
            key = f"{data['fwd']}#{name}"
            kept[key] = max(kept.get(key, step), step)
            shared.setdefault(value, {})[name] = key
    return kept, shared
