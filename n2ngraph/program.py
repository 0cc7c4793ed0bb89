"""``compile``: runs the passes and wraps the result in a ``Program``.

    spec --graph.forward_graph--> forward DAG --autodiff.joint_graph--> joint DAG
         --schedule.schedule--> Schedule --memory.plan_memory--> MemoryPlan
         --executor.Executable--> bound kernels over preallocated buffers

A Program owns what outlives a single input shape: parameters, their gradients and the
optimizer state. Each input shape gets its own compiled plan (``Compiled``), built on
first use and cached, all sharing those tensors: train on 32x32 crops, then denoise a
512x512 photo with the same weights.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import attrs
import networkx as nx
import torch

from .autodiff import joint_graph
from .errors import SpecError
from .executor import Executable
from .graph import forward_graph
from .init import initial_params
from .memory import MemoryPlan, plan_memory
from .optim import SGD
from .schedule import Schedule, schedule
from .spec import OptimizerSpec, Spec

Shape = tuple[int, ...]


@attrs.frozen
class Compiled:
    """Every stage of one compilation, kept for inspection (tools/visualize, tests)."""

    kind: str  # 'train' or 'infer'
    graph: nx.DiGraph
    schedule: Schedule
    plan: MemoryPlan
    executable: Executable


def compile(spec: Spec, input_shape: Sequence[int] | None = None, *, device="cpu",
            dtype: torch.dtype = torch.float32, seed: int | None = None,
            init: str | None = None, optimizer: OptimizerSpec | None = None) -> "Program":
    """Compiles ``spec`` for inputs of ``input_shape`` (N, C, H, W).

    ``input_shape`` is the shape of the first input; other inputs (the target) share its
    batch and spatial size with their own channel count. Defaults come from the spec's
    training recipe: batch and crop size, init, seed and optimizer.
    """
    program = Program(spec, device=device, dtype=dtype, seed=seed, init=init, optimizer=optimizer)
    if input_shape is None:
        first = spec.inputs[0]
        input_shape = (spec.train.batch, first.channels, spec.train.crop, spec.train.crop)
    program.compiled("train" if spec.loss else "infer", program.input_shapes(input_shape))
    return program


class Program:
    def __init__(self, spec: Spec, *, device="cpu", dtype: torch.dtype = torch.float32,
                 seed: int | None = None, init: str | None = None,
                 optimizer: OptimizerSpec | None = None):
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.spec = spec
        self.device = torch.device(device)
        self.dtype = dtype
        recipe = spec.train
        self.params = initial_params(spec, init or recipe.init,
                                     recipe.seed if seed is None else seed,
                                     dtype=dtype, device=self.device)
        self.grads = {k: torch.empty_like(p) for k, p in self.params.items()}
        self.optimizer = SGD(self.params, self.grads, optimizer or recipe.optimizer)
        self._cache: dict[tuple, Compiled] = {}

    # ---- compilation -----------------------------------------------------------
    def input_shapes(self, first: Sequence[int]) -> dict[str, Shape]:
        first = tuple(int(d) for d in first)
        if len(first) != 4:
            raise ValueError(f"expected an input shape (N, C, H, W), got {first}")
        n, _, h, w = first
        shapes = {i.name: (n, i.channels, h, w) for i in self.spec.inputs}
        shapes[self.spec.inputs[0].name] = first
        return shapes

    def compiled(self, kind: str, shapes: Mapping[str, Shape]) -> Compiled:
        key = (kind, tuple(sorted(shapes.items())))
        if key not in self._cache:
            self._cache[key] = self._compile(kind, shapes)
        return self._cache[key]

    def _compile(self, kind: str, shapes: Mapping[str, Shape]) -> Compiled:
        spec = self.spec
        if kind == "train":
            if spec.loss is None:
                raise SpecError("the spec has no 'loss', so it cannot be trained",
                                file=spec.file, field="loss")
            graph = joint_graph(forward_graph(spec, shapes, [spec.loss]), spec.loss)
            grads = graph.graph["grads"]
            external = {**self.params, **{grads[p]: self.grads[p] for p in grads}}
            pinned = [spec.loss]
        else:
            graph = forward_graph(spec, shapes, [spec.output])
            external = dict(self.params)
            pinned = [spec.output]
        sched = schedule(graph)
        plan = plan_memory(graph, sched, external=external, pinned=pinned,
                           itemsize=torch.empty((), dtype=self.dtype).element_size())
        executable = Executable(graph, sched, plan, external, device=self.device, dtype=self.dtype)
        return Compiled(kind, graph, sched, plan, executable)

    # ---- running ---------------------------------------------------------------
    def _bind_inputs(self, tensors: Sequence[torch.Tensor], names: Sequence[str]) -> dict:
        if len(tensors) != len(names):
            raise ValueError(f"expected {len(names)} input(s) ({', '.join(names)}), got {len(tensors)}")
        bound = dict(zip(names, tensors))
        for name, t in bound.items():
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"input '{name}' must be a torch.Tensor, got {type(t).__name__}")
        return bound

    def _run_training_graph(self, inputs: Sequence[torch.Tensor]) -> float:
        """Binds the inputs (spec order), checks their shapes, runs forward and backward
        of the plan for that shape, and returns the loss."""
        names = self.spec.input_names
        bound = self._bind_inputs(inputs, names)
        shapes = self.input_shapes(bound[names[0]].shape)
        for name, t in bound.items():
            if tuple(t.shape) != shapes[name]:
                raise ValueError(f"input '{name}' has shape {tuple(t.shape)}, expected {shapes[name]}")
        executable = self.compiled("train", shapes).executable
        executable.run(bound)
        return executable.values[self.spec.loss].item()

    def train_step(self, *inputs: torch.Tensor) -> float:
        """Forward, backward and one optimizer update on one batch; returns the loss.

        Inputs are given in the spec's input order (``x, target`` for noise2noise).
        """
        loss = self._run_training_graph(inputs)
        self.optimizer.step()
        return loss

    def loss(self, *inputs: torch.Tensor) -> float:
        """The loss on one batch, without updating anything (gradients are refreshed)."""
        return self._run_training_graph(inputs)

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Inference: the spec's ``output`` for input ``x``, in a new tensor (or ``out``)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        first = self.spec.inputs[0].name
        shapes = {first: self.input_shapes(x.shape)[first]}
        compiled = self.compiled("infer", shapes)
        compiled.executable.run({first: x})
        result = compiled.executable.values[self.spec.output]
        if out is None:
            return result.clone()
        return out.copy_(result)

    __call__ = forward

    # ---- parameters ------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Parameters by torch.nn name (``conv1.weight``), in network order. Like
        torch.nn, the tensors are the live parameters: clone them to keep a snapshot."""
        return dict(self.params)

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        missing = [k for k in self.params if k not in state]
        unexpected = [k for k in state if k not in self.params]
        if missing or unexpected:
            raise KeyError(f"state dict does not match spec '{self.spec.name}': "
                           f"missing {missing}, unexpected {unexpected}")
        for name, param in self.params.items():
            value = state[name]
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(f"'{name}': shape {tuple(value.shape)} in the state dict, "
                                 f"{tuple(param.shape)} in spec '{self.spec.name}'")
            param.copy_(value)
