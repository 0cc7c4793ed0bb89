"""Pass 6: memory plan -> ``Executable``, the only part of n2ngraph that mutates.

At construction it allocates every planned buffer once (``torch.empty``), carves each
value out of its buffer as a view, and binds every kernel to its output, workspaces
and arguments. Running is then a loop over prepared calls: no shape logic, no dict
look-ups, no allocation.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Callable, Mapping

import networkx as nx
import torch

from .memory import MemoryPlan
from .schedule import Schedule


class Executable:
    def __init__(self, graph: nx.DiGraph, sched: Schedule, plan: MemoryPlan,
                 external: Mapping[str, torch.Tensor], *, device, dtype: torch.dtype):
        self.graph, self.schedule, self.plan = graph, sched, plan
        self.buffers = [torch.empty(n, dtype=dtype, device=device) for n in plan.buffers]
        values: dict[str, torch.Tensor] = dict(external)
        for key, buffer in plan.slots.items():
            shape = plan.shapes[key]
            values[key] = self.buffers[buffer][: max(math.prod(shape), 1)].view(shape)
        self.values = values
        self.inputs = tuple(v for v, kind in graph.nodes(data="kind") if kind == "input")
        self.names = sched.order
        self.steps: tuple[Callable[[], None], ...] = tuple(self._bind(v) for v in sched.order)

    def _bind(self, value: str) -> Callable[[], None]:
        data = self.graph.nodes[value]
        scratch = {name: self.values[key] for name, key in self.plan.workspaces[value].items()}
        args = {name: self.values[source] for name, source in data["args"]}
        return data["op"].prepare(data["kernel"], self.values[value], scratch, **args)

    def run(self, inputs: Mapping[str, torch.Tensor]) -> None:
        for name in self.inputs:
            self.values[name].copy_(inputs[name])
        for step in self.steps:
            step()

    def profile(self, inputs: Mapping[str, torch.Tensor], repeats: int) -> dict[str, float]:
        """Seconds each kernel takes, the median of ``repeats`` runs (a run as ``run``
        does it, with a clock read around every step: for finding where time goes)."""
        device = next(iter(self.buffers), torch.empty(0)).device
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        times: dict[str, list[float]] = {name: [] for name in self.names}
        for _ in range(repeats):
            for name in self.inputs:
                self.values[name].copy_(inputs[name])
            for name, step in zip(self.names, self.steps):
                sync()
                start = time.perf_counter()
                step()
                sync()
                times[name].append(time.perf_counter() - start)
        return {name: statistics.median(t) for name, t in times.items()}
