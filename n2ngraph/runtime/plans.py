"""The pass driver: one spec, one kind of run and one set of input shapes to a plan.

    spec --graph.forward_graph--> forward graph --rewrite.rewrite--> forward graph
         --autodiff.joint_graph--> joint graph --lower.lower--> kernels chosen for the device
         --schedule.schedule--> Schedule --memory.plan_memory--> MemoryPlan
         --executor.Executable--> bound kernels over preallocated buffers

Every read of the compiler's graphs the runtime makes is here, so that a change to the
graph IR changes this module and no other in the runtime.
"""

from __future__ import annotations

from typing import Mapping

import attrs
import torch

from ..compiler.autodiff import joint_graph
from ..compiler.fit import check_plan_fits, check_values_fit, host_available_bytes
from ..compiler.graph import Graph, forward_graph
from ..compiler.lower import lower
from ..compiler.memory import MemoryPlan, plan_memory
from ..compiler.rewrite import rewrite as rewrite_graph
from ..compiler.schedule import Schedule, schedule
from ..compiler.spec import Spec
from ..errors import SpecError
from .executor import Executable

Shape = tuple[int, ...]


@attrs.frozen
class Compiled:
    """Every stage of one compilation, kept for inspection (tools/visualize, tests)."""

    kind: str  # 'train', 'infer' or 'vjp' (a module's backward, see Program.vjp)
    graph: Graph
    schedule: Schedule
    plan: MemoryPlan
    executable: Executable
    forward_steps: int
    """How many kernels at the head of the schedule compute the forward: a 'vjp' plan
    runs them for a module's forward and the rest for its backward (``vjp.py``)."""

    def value_shape(self, value: str) -> Shape:
        return tuple(self.graph[value].shape)

    def describe(self, value: str) -> str:
        """A value for a message, by what computes it: ``node 'conv2' (conv2d, forward,
        line 9)``, ``'grad:conv1.weight' (backward of node 'conv1', its weight)``."""
        node = self.graph[value]
        line = f", line {node.line}" if node.line else ""
        if node.kind == "op":
            return f"node '{value}' ({node.op.name}, forward{line})"
        if node.kind == "param":
            return f"parameter '{value}'"
        if node.kind == "vjp":
            of = self.graph[node.fwd]
            line = f", line {of.line}" if of.line else ""
            return f"'{value}' (backward of node '{node.fwd}' ({of.op.name}{line}), for its {node.wrt})"
        if node.kind in ("accumulate", "seed"):
            return f"'{value}' (backward: the gradient of '{node.fwd}')"
        return f"input '{value}'"

    def input_grad(self, name: str) -> str | None:
        """The value a 'vjp' plan leaves d objective / d input ``name`` in; None when that
        input does not reach the output."""
        return self.graph.input_grads.get(name)


def forward_steps(graph: Graph, sched: Schedule) -> int:
    """How many kernels at the head of ``sched`` compute forward ops. The scheduler runs
    every forward op before any backward one (``schedule.py``'s tie-break), so these are
    all of them, and a plan can stop after them and go on later; checked here, since
    ``vjp.py`` relies on it."""
    forward = [graph[value].kind == "op" for value in sched.order]
    count = forward.index(False) if False in forward else len(forward)
    if any(forward[count:]):
        raise RuntimeError(f"the schedule runs forward op '{sched.order[forward.index(True, count)]}' "
                           f"after a backward one: the plan cannot run in two halves")
    return count


def available_bytes(device: torch.device) -> int | None:
    """Memory that ``device`` can still allocate: CUDA's free memory on a GPU, the host's
    MemAvailable on the CPU (None where unknown: nothing is checked)."""
    if device.type == "cuda":  # free on the device, and what torch's cache holds unused
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + cached
    return host_available_bytes() if device.type == "cpu" else None


class Planner:
    """Compiles a spec's plans over one set of parameters, each plan writing its
    parameter gradients where it is told (a Program's, or a batch part's own)."""

    def __init__(self, spec: Spec, params: Mapping[str, torch.Tensor], *, rewrite: bool,
                 device: torch.device, dtype: torch.dtype, codegen: bool = True):
        self.spec, self.params, self.rewrite, self.codegen = spec, params, rewrite, codegen
        self.device, self.dtype = device, dtype

    def compile(self, kind: str, shapes: Mapping[str, Shape],
                grads_into: Mapping[str, torch.Tensor]) -> Compiled:
        spec = self.spec
        if kind == "vjp":
            first = spec.inputs[0].name
            graph = joint_graph(self._forward_graph(shapes, spec.output), spec.output,
                                seed_input=True, wrt_inputs=(first,))
            grads = graph.grads
            external = {**self.params, **{grads[p]: grads_into[p] for p in grads}}
            pinned = [spec.output, *graph.input_grads.values()]
        elif kind == "train":
            if spec.loss is None:
                raise SpecError("the spec has no 'loss', so it cannot be trained",
                                file=spec.file, field="loss")
            graph = joint_graph(self._forward_graph(shapes, spec.loss), spec.loss)
            grads = graph.grads
            external = {**self.params, **{grads[p]: grads_into[p] for p in grads}}
            pinned = [spec.loss]
        else:
            graph = self._forward_graph(shapes, spec.output)
            external = dict(self.params)
            pinned = [spec.output]
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        available = available_bytes(self.device)
        shape_text = ", ".join(f"{name} {tuple(shape)}" for name, shape in shapes.items())
        where = f"the {kind} plan for {shape_text} on {self.device}"
        check_values_fit(graph, available, itemsize=itemsize, external=external,
                         file=spec.file, where=where)
        graph = lower(graph, self.device, self.codegen)
        sched = schedule(graph)
        plan = plan_memory(graph, sched, external=external, pinned=pinned, itemsize=itemsize)
        check_plan_fits(graph, plan, available, file=spec.file, where=where)
        executable = Executable(graph, sched, plan, external, device=self.device, dtype=self.dtype)
        return Compiled(kind, graph, sched, plan, executable, forward_steps(graph, sched))

    def _forward_graph(self, shapes: Mapping[str, Shape], output: str) -> Graph:
        graph = forward_graph(self.spec, shapes, [output])
        return rewrite_graph(graph) if self.rewrite else graph
