"""Pass 5: schedule -> ``MemoryPlan``: which buffer every value and scratch space uses.

Liveness: a value lives from the step that writes it (inputs: before step 0) to the
step of its last reader; a kernel's workspace lives during its own step only, unless a
VJP kernel of the same node reads it (``Kernel.shares``): then until that kernel. Buffers
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

from .graph import Graph
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


def kernel_shapes(graph: Graph, value: str) -> dict[str, tuple[int, ...]]:
    """The shapes a kernel's ``workspace`` rule sees: its forward node's inputs and out."""
    fwd = graph[graph[value].fwd]
    if fwd.kind != "op":
        return {}
    shapes = {role: graph[source].shape for role, source in fwd.args}
    shapes["out"] = fwd.shape
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


class _Planner:
    """The state of one planning walk: which buffer holds what, until when."""

    def __init__(self, sched: Schedule, pinned: set[str]):
        self.sched, self.pinned = sched, pinned
        self.pool = _Pool()
        self.slots: dict[str, int] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.intervals: dict[str, tuple[int, int]] = {}
        self.holder: dict[int, str] = {}  # buffer -> value currently owning it
        self.inplace: list[tuple[str, str]] = []

    def place(self, key: str, shape, step: int, last: int) -> None:
        self.shapes[key] = tuple(shape)
        self.slots[key] = self.pool.take(max(math.prod(shape), 1))
        self.holder[self.slots[key]] = key
        self.intervals[key] = (step, last)

    def release(self, key: str) -> None:
        slot = self.slots.get(key)
        if slot is not None and self.holder.get(slot) == key and key not in self.pinned:
            del self.holder[slot]
            self.pool.give_back(slot)

    def lifetime(self, value: str, step: int) -> float:
        return math.inf if value in self.pinned else max(self.sched.last_use[value], step)

    def take_over(self, value: str, victim: str | None, shape, victim_shape, step: int) -> bool:
        """Puts ``value`` in ``victim``'s buffer if the victim dies at this very step
        and is the same size; whether it did."""
        if not (victim in self.slots and victim not in self.pinned
                and self.sched.last_use[victim] == step
                and self.holder.get(self.slots[victim]) == victim
                and math.prod(victim_shape) == math.prod(shape)):
            return False
        self.shapes[value] = tuple(shape)
        self.slots[value] = self.slots[victim]
        self.holder[self.slots[value]] = value
        self.intervals[value] = (step, self.lifetime(value, step))
        self.inplace.append((value, victim))
        return True


def plan_memory(graph: Graph, sched: Schedule, *, external: Iterable[str] = (),
                pinned: Iterable[str] = (), itemsize: int = 4) -> MemoryPlan:
    external = set(external)
    plan = _Planner(sched, set(pinned))
    workspaces: dict[str, dict[str, str]] = {}
    kept, shared = _shared_workspaces(graph, sched)
    expiring: dict[int, list[str]] = {}
    for key, last in kept.items():
        expiring.setdefault(last, []).append(key)
    for value in graph.of_kind("input"):
        plan.place(value, graph[value].shape, -1, plan.lifetime(value, -1))
    for step, value in enumerate(sched.order):
        node = graph[value]
        workspaces[value] = dict(shared.get(value, {}))
        own = []
        for name, shape in node.impl.workspace(kernel_shapes(graph, value)).items():
            key = workspaces[value][name] = f"{value}#{name}"
            plan.place(key, shape, step, kept.get(key, step))
            own += [] if key in kept else [key]
        victim = node.inplace
        if value not in external and not plan.take_over(
                value, victim, node.shape, graph[victim].shape if victim else (), step):
            plan.place(value, node.shape, step, plan.lifetime(value, step))
        for key in (*own, *expiring.get(step, ()), *sched.frees[step]):
            plan.release(key)
        if sched.last_use.get(value, -1) < 0:
            plan.release(value)  # written but never read (and not pinned): dead at once
    intervals = {k: (a, int(b) if b != math.inf else len(sched.order))
                 for k, (a, b) in plan.intervals.items()}
    return MemoryPlan(buffers=tuple(plan.pool.sizes), slots=plan.slots, shapes=plan.shapes,
                      intervals=intervals, workspaces=workspaces, inplace=tuple(plan.inplace),
                      itemsize=itemsize)


def _shared_workspaces(graph: Graph, sched: Schedule):
    """({forward workspace key: step of its last reading VJP kernel},
    {VJP value: {workspace name: forward workspace key}}) from every ``Kernel.shares``."""
    kept: dict[str, int] = {}
    shared: dict[str, dict[str, str]] = {}
    for step, value in enumerate(sched.order):
        node = graph[value]
        if node.kind == "op":
            continue
        for name, source in node.impl.shares(kernel_shapes(graph, value)).items():
            if source != "forward" or node.fwd not in sched.order:
                raise ValueError(f"{value}: cannot share workspace {name!r} of {source!r}")
            key = f"{node.fwd}#{name}"
            kept[key] = max(kept.get(key, step), step)
            shared.setdefault(value, {})[name] = key
    return kept, shared
