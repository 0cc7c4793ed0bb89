"""Pass 7: memory plan -> ``Executable``, the only part of n2ngraph that mutates.

At construction it allocates every planned buffer once (``torch.empty``), carves each
value out of its buffer as a view, and has every node's kernel (``Node.impl``) prepare a
call bound to its output, workspaces and arguments. Running is then a loop over prepared
calls: no shape logic, no dict look-ups, no allocation.

On the CPU it also decides, per kernel, whether to run it on one thread: a kernel that
writes fewer than ``SERIAL_BELOW`` values (result and workspaces) is done before
waking, feeding and joining more threads pays off. Consecutive kernels of the same kind
form one segment; the thread count is set once per segment (about a microsecond) and
restored after the run (docs/performance.md, "Why the tuning constants are what they
are", has the measurements).
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Callable, Mapping

import torch

from ..compiler.graph import Graph
from ..compiler.memory import MemoryPlan
from ..compiler.schedule import Schedule


class Executable:
    def __init__(self, graph: Graph, sched: Schedule, plan: MemoryPlan,
                 external: Mapping[str, torch.Tensor], *, device, dtype: torch.dtype):
        self.graph, self.schedule, self.plan = graph, sched, plan
        self.buffers = [torch.empty(n, dtype=dtype, device=device) for n in plan.buffers]
        values: dict[str, torch.Tensor] = dict(external)
        for key, buffer in plan.slots.items():
            shape = plan.shapes[key]
            values[key] = self.buffers[buffer][: max(math.prod(shape), 1)].view(shape)
        self.values = values
        self.inputs = tuple(graph.of_kind("input"))
        self.names = sched.order
        self.steps: tuple[Callable[[], None], ...] = tuple(self._bind(v) for v in sched.order)
        self._serial = [torch.device(device).type == "cpu" and self._written(v) < SERIAL_BELOW
                        for v in sched.order]
        self.segments = self._segments(0, len(self.steps))
        self._ranges: dict[tuple[int, int], tuple] = {(0, len(self.steps)): self.segments}

    def _segments(self, start: int, stop: int) -> tuple:
        """(serial, steps) of each run of kernels ``start`` to ``stop`` alike in threads."""
        return tuple((flag, self.steps[start + i:start + j])
                     for flag, i, j in _runs(self._serial[start:stop]))

    def _written(self, value: str) -> int:
        """Values a kernel writes: its result and its workspaces."""
        keys = [value, *self.plan.workspaces[value].values()]
        return sum(math.prod(self.values[k].shape) for k in keys)

    def _bind(self, value: str) -> Callable[[], None]:
        node = self.graph[value]
        scratch = {name: self.values[key] for name, key in self.plan.workspaces[value].items()}
        args = {name: self.values[source] for name, source in node.args}
        return node.impl.prepare(self.values[value], scratch, **args)

    def run(self, inputs: Mapping[str, torch.Tensor],
            after: Mapping[int, Callable[[], None]] | None = None) -> None:
        """Runs the plan on ``inputs``; ``after[i]()``, if given, right after kernel i
        (a data-parallel step starts sending a gradient bucket there: distributed.py)."""
        self.load(inputs)
        if after:
            self._run_segments(self.segments, after)
        else:
            self.run_kernels()

    def run_steps(self, inputs: Mapping[str, torch.Tensor], start: int, stop: int) -> None:
        """Copies ``inputs`` (some of the plan's) into their buffers, then runs kernels
        ``start`` to ``stop`` only: one run of the plan made in two calls (a module's
        forward now, its backward later), which gives what one ``run`` gives as long as
        nothing else runs this plan in between (``runtime/vjp.py`` sees to it)."""
        for name, tensor in inputs.items():
            self.values[name].copy_(tensor)
        if (start, stop) not in self._ranges:
            self._ranges[start, stop] = self._segments(start, stop)
        self._run_segments(self._ranges[start, stop])

    def load(self, inputs: Mapping[str, torch.Tensor]) -> None:
        """Copies the inputs into their planned buffers."""
        for name in self.inputs:
            self.values[name].copy_(inputs[name])

    def run_kernels(self) -> None:
        """Every kernel once, on the inputs already loaded (what a CUDA graph captures)."""
        self._run_segments(self.segments)

    def _run_segments(self, segments: tuple, after: Mapping[int, Callable[[], None]] | None = None) -> None:
        """Each segment's kernels, on one thread where it is marked serial; ``after``'s
        calls after the kernels they are keyed by (indices from the plan's first)."""
        threads = torch.get_num_threads()
        if after is None and (threads == 1 or len(segments) == 1 and not segments[0][0]):
            for _, steps in segments:
                for step in steps:
                    step()
            return
        index = 0
        try:
            for serial, steps in segments:
                torch.set_num_threads(1 if serial or threads == 1 else threads)
                for step in steps:
                    step()
                    if after is not None and index in after:
                        after[index]()
                    index += 1
        finally:
            torch.set_num_threads(threads)

    def first_nonfinite(self, inputs: Mapping[str, torch.Tensor]) -> str | None:
        """The first value, in schedule order, that a run on ``inputs`` makes nan or
        inf (None if none does): a run as ``run`` does it, thread counts included so the
        arithmetic is the same, checking each result right after its kernel, before a
        later kernel can reuse its buffer. For finding where a diverging step went
        wrong, once it has: a check per kernel reads every value back."""
        self.load(inputs)
        threads = torch.get_num_threads()
        names = iter(self.names)
        try:
            for serial, steps in self.segments:
                torch.set_num_threads(1 if serial else threads)
                for step in steps:
                    step()
                    name = next(names)
                    if not bool(torch.isfinite(self.values[name]).all()):
                        return name
        finally:
            torch.set_num_threads(threads)
        return None

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


SERIAL_BELOW = 2**22


class Replay:
    """Runs ``body``, a sequence of device kernels over fixed tensors, as one CUDA graph.

    A step of many small kernels on a GPU is bound by their launches (a few microseconds
    of Python and driver work each), not by the kernels. Since every buffer of a plan is
    allocated once and every kernel is bound to its tensors, the whole sequence can be
    recorded once and replayed with one launch. ``body`` must not read values back to
    the host or branch on them; what changes from call to call (inputs, a learning rate)
    is written into the tensors it reads before the call.

    The first ``warmup`` calls run ``body`` as is, on a side stream as PyTorch asks, so
    that one-time work (cuBLAS handles, cached constants) is done before recording.
    """

    def __init__(self, body: Callable[[], None], warmup: int = 2):
        self.body, self.warmup = body, warmup
        self.calls = 0
        self.graph: "torch.cuda.CUDAGraph | None" = None

    def __call__(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        elif self.calls < self.warmup:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.body()
            torch.cuda.current_stream().wait_stream(side)
        else:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.body()
            self.graph = graph
            graph.replay()
        self.calls += 1


def _runs(flags: list[bool]) -> list[tuple[bool, int, int]]:
    """(flag, start, stop) of each run of equal consecutive flags."""
    runs, start = [], 0
    for i in range(1, len(flags) + 1):
        if i == len(flags) or flags[i] != flags[start]:
            runs.append((flags[start], start, i))
            start = i
    return runs
