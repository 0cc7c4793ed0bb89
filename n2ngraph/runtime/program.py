"""``compile``: runs the passes and wraps the result in a ``Program``.

    spec --graph.forward_graph--> forward DAG --rewrite.rewrite, rewrite.for_device--> forward DAG
         --autodiff.joint_graph--> joint DAG
         --schedule.schedule--> Schedule --memory.plan_memory--> MemoryPlan
         --executor.Executable--> bound kernels over preallocated buffers

A Program owns what outlives a single input shape: parameters, their gradients and the
optimizer state, each packed into one flat buffer (``flat.py``: the optimizer then
updates all parameters with a handful of ops). Each input shape gets its own compiled
plan (``Compiled``), built on first use and cached, all sharing those tensors: train on
32x32 crops, then denoise a 512x512 photo with the same weights.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Mapping, Sequence

import attrs
import networkx as nx
import torch

from ..compiler.autodiff import grad_name, joint_graph
from ..errors import SpecError
from .executor import Executable, Replay
from .flat import packed, packed_like, zipped
from ..compiler.graph import forward_graph
from ..compiler.shapes import needed_nodes
from .init import initial_params
from ..compiler.memory import MemoryPlan, plan_memory
from ..ops import scalar
from .optim import ClipGradNorm, make_optimizer
from ..compiler.rewrite import for_device, rewrite as rewrite_graph
from ..compiler.schedule import Schedule, schedule
from ..compiler.spec import OptimizerSpec, Spec

Shape = tuple[int, ...]


@attrs.frozen
class Compiled:
    """Every stage of one compilation, kept for inspection (tools/visualize, tests)."""

    kind: str  # 'train', 'infer' or 'vjp' (a module's backward, see Program.vjp)
    graph: nx.DiGraph
    schedule: Schedule
    plan: MemoryPlan
    executable: Executable


def compile(spec: Spec, input_shape: Sequence[int] | None = None, *, device="cpu",
            dtype: torch.dtype = torch.float32, seed: int | None = None,
            init: str | None = None, optimizer: OptimizerSpec | None = None,
            clip_grad_norm: float | None = None, rewrite: bool = True,
            cuda_graphs: bool = True) -> "Program":
    """Compiles ``spec`` for inputs of ``input_shape`` (N, C, H, W).

    ``input_shape`` is the shape of the first input; other inputs (the target) share its
    batch and spatial size with their own channel count. Defaults come from the spec's
    training recipe: batch and crop size, init, seed, optimizer and gradient clipping.
    ``rewrite=False`` compiles the graph exactly as the spec writes it (see rewrite.py).
    On a GPU, ``cuda_graphs`` replays each training step and each inference as one CUDA
    graph (executor.Replay); ``False`` launches every kernel from Python instead.
    """
    program = Program(spec, device=device, dtype=dtype, seed=seed, init=init, optimizer=optimizer,
                      clip_grad_norm=clip_grad_norm, rewrite=rewrite, cuda_graphs=cuda_graphs)
    if input_shape is None:
        first = spec.inputs[0]
        input_shape = (spec.train.batch, first.channels, spec.train.crop, spec.train.crop)
    program.compiled("train" if spec.loss else "infer", program.input_shapes(input_shape))
    return program


class Program:
    def __init__(self, spec: Spec, *, device="cpu", dtype: torch.dtype = torch.float32,
                 seed: int | None = None, init: str | None = None,
                 optimizer: OptimizerSpec | None = None,
                 params: Mapping[str, torch.Tensor] | None = None,
                 clip_grad_norm: float | None = None, rewrite: bool = True,
                 cuda_graphs: bool = True):
        """``params``, when given, are adopted as the parameters, not copied: the
        program reads (and its optimizer updates) those very tensors, so an in-place
        edit by their owner is seen by the next run (the ``compat`` modules rely on it)."""
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.spec = spec
        self.rewrite = rewrite
        self.device = torch.device(device)
        self.dtype = dtype
        recipe = spec.train
        self.params = packed(initial_params(spec, init or recipe.init,
                                            recipe.seed if seed is None else seed,
                                            dtype=dtype, device=self.device))
        if params is not None:
            self._adopt(params)
        self.grads = packed_like(self.params)
        self.optimizer = make_optimizer(self.params, self.grads, optimizer or recipe.optimizer)
        max_norm = recipe.clip_grad_norm if clip_grad_norm is None else clip_grad_norm
        self.clip = ClipGradNorm(self.grads, max_norm) if max_norm else None
        self._cache: dict[tuple, Compiled] = {}
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self._replays: dict[tuple, Replay] = {}
        self._parts_grads: list[dict[str, torch.Tensor]] = []
        self._parts_sums: list[tuple[torch.Tensor, list[torch.Tensor]]] = []

    # ---- compilation -----------------------------------------------------------
    def input_shapes(self, first: Sequence[int]) -> dict[str, Shape]:
        first = tuple(int(d) for d in first)
        if len(first) != 4:
            raise ValueError(f"expected an input shape (N, C, H, W), got {first}")
        n, _, h, w = first
        shapes = {i.name: (n, i.channels, h, w) for i in self.spec.inputs}
        shapes[self.spec.inputs[0].name] = first
        return shapes

    def compiled(self, kind: str, shapes: Mapping[str, Shape], part: int | None = None) -> Compiled:
        """The plan for ``kind`` and these input shapes, compiled on first use. A
        training plan for one part of a split batch (``part``) writes its gradients into
        that part's own buffers."""
        key = (kind, tuple(sorted(shapes.items())), part)
        if key not in self._cache:
            grads = self.grads if part is None else self._part_grads(part)
            self._cache[key] = self._compile(kind, shapes, grads)
        return self._cache[key]

    @property
    def compilations(self) -> tuple[Compiled, ...]:
        """Every plan compiled so far (one per kind, input shape and batch part)."""
        return tuple(self._cache.values())

    def _part_grads(self, part: int) -> dict[str, torch.Tensor]:
        if len(self._parts_grads) <= part:
            while len(self._parts_grads) <= part:
                self._parts_grads.append(packed_like(self.grads))
            self._parts_sums = [(g, parts) for g, *parts in zipped(self.grads, *self._parts_grads)]
        return self._parts_grads[part]

    def _compile(self, kind: str, shapes: Mapping[str, Shape],
                 grads_into: Mapping[str, torch.Tensor]) -> Compiled:
        spec = self.spec
        if kind == "vjp":
            first = spec.inputs[0].name
            graph = joint_graph(self._forward_graph(shapes, spec.output), spec.output,
                                seed_input=True, wrt_inputs=(first,))
            grads = graph.graph["grads"]
            external = {**self.params, **{grads[p]: grads_into[p] for p in grads}}
            pinned = [spec.output, *graph.graph["input_grads"].values()]
        elif kind == "train":
            if spec.loss is None:
                raise SpecError("the spec has no 'loss', so it cannot be trained",
                                file=spec.file, field="loss")
            graph = joint_graph(self._forward_graph(shapes, spec.loss), spec.loss)
            grads = graph.graph["grads"]
            external = {**self.params, **{grads[p]: grads_into[p] for p in grads}}
            pinned = [spec.loss]
        else:
            graph = self._forward_graph(shapes, spec.output)
            external = dict(self.params)
            pinned = [spec.output]
        sched = schedule(graph)
        plan = plan_memory(graph, sched, external=external, pinned=pinned,
                           itemsize=torch.empty((), dtype=self.dtype).element_size())
        executable = Executable(graph, sched, plan, external, device=self.device, dtype=self.dtype)
        return Compiled(kind, graph, sched, plan, executable)

    def _forward_graph(self, shapes: Mapping[str, Shape], output: str) -> nx.DiGraph:
        graph = forward_graph(self.spec, shapes, [output])
        return for_device(rewrite_graph(graph) if self.rewrite else graph, self.device)

    # ---- running ---------------------------------------------------------------
    def _bind_inputs(self, tensors: Sequence[torch.Tensor], names: Sequence[str]) -> dict:
        if len(tensors) != len(names):
            raise ValueError(f"expected {len(names)} input(s) ({', '.join(names)}), got {len(tensors)}")
        bound = dict(zip(names, tensors))
        for name, t in bound.items():
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"input '{name}' must be a torch.Tensor, got {type(t).__name__}")
        return bound

    def _training_inputs(self, inputs: Sequence[torch.Tensor]):
        """(inputs by name, shapes by name), the inputs given in spec order and checked."""
        names = self.spec.input_names
        bound = self._bind_inputs(inputs, names)
        shapes = self.input_shapes(bound[names[0]].shape)
        for name, t in bound.items():
            if tuple(t.shape) != shapes[name]:
                raise ValueError(f"input '{name}' has shape {tuple(t.shape)}, expected {shapes[name]}")
        return bound, shapes

    def _replay(self, kind: str, shapes: Mapping[str, Shape], executable: Executable) -> Replay:
        """The CUDA graph of ``executable``'s plan, its body made on first use: for
        training, the kernels, clipping and the optimizer's update; for inference, the
        kernels."""
        key = (kind, tuple(sorted(shapes.items())))
        replay = self._replays.get(key)
        if replay is None:
            replay = self._replays[key] = Replay(
                self._training_body(executable) if kind == "train" else executable.run_kernels)
        return replay

    def _training_body(self, executable: Executable):
        optimizer, clip = self.optimizer, self.clip

        def body() -> None:
            executable.run_kernels()
            if clip is not None:
                clip()
            optimizer.recorded_update()
        return body

    def _run_training_graph(self, inputs: Sequence[torch.Tensor]) -> float:
        """Binds the inputs (spec order), checks their shapes, runs forward and backward
        of the plan for that shape, and returns the loss."""
        bound, shapes = self._training_inputs(inputs)
        parts = self.batch_parts(shapes)
        if len(parts) > 1:
            return self._run_in_parts(bound, parts)
        executable = self.compiled("train", shapes).executable
        executable.run(bound)
        return executable.values[self.spec.loss].item()

    # ---- a training batch split across CPU cores ---------------------------------
    def batch_parts(self, shapes: Mapping[str, Shape]) -> list[tuple[int, int]]:
        """[(start, stop)]: the parts a training batch of these shapes runs as.

        On a CPU with several threads, and when the loss is a mean over every element
        (so the batch's loss and gradients are the parts' weighted by their sizes), a
        batch of at least two parts of ``PART_PIXELS`` pixels runs as up to four parts
        per thread, each a plan of its own run on one thread, the threads side by
        side. Kernels of part size stay in cache and need no OpenMP fork and join.
        """
        n, _, h, w = shapes[self.spec.inputs[0].name]
        threads = torch.get_num_threads()
        if threads < 2 or self.device.type != "cpu" or not self._loss_is_a_mean:
            return [(0, n)]
        count = min(n, 4 * threads, n * h * w // PART_PIXELS)
        if count < 2:
            return [(0, n)]
        bounds = [n * i // count for i in range(count + 1)]
        return list(zip(bounds, bounds[1:]))

    @property
    def _loss_is_a_mean(self) -> bool:
        loss = self.spec.loss
        return loss is not None and loss not in self.spec.input_names and \
            getattr(self.spec.node(loss).op, "mean_over_elements", False)

    def _run_in_parts(self, bound: Mapping[str, torch.Tensor], parts) -> float:
        threads = torch.get_num_threads()
        first = self.spec.inputs[0].name
        self._part_grads(len(parts) - 1)  # allocated here, not by the threads at once

        def run(part: int) -> float:
            torch.set_num_threads(1)
            lo, hi = parts[part]
            inputs = {name: t[lo:hi] for name, t in bound.items()}
            executable = self.compiled("train", self.input_shapes(inputs[first].shape),
                                       part).executable
            executable.run(inputs)
            return executable.values[self.spec.loss].item()

        try:
            losses = list(_pool(threads).map(run, range(len(parts))))
        finally:
            torch.set_num_threads(threads)
        n = parts[-1][1]
        weights = [(hi - lo) / n for lo, hi in parts]
        for grad, of_parts in self._parts_sums:
            torch.mul(of_parts[0], scalar(weights[0], grad), out=grad)
            for part in range(1, len(parts)):
                grad.add_(of_parts[part], alpha=weights[part])
        return sum(w * loss for w, loss in zip(weights, losses))

    def train_step(self, *inputs: torch.Tensor) -> float:
        """Forward, backward and one optimizer update on one batch; returns the loss.

        Inputs are given in the spec's input order (``x, target`` for noise2noise).
        """
        if self.cuda_graphs:
            return self._replayed_train_step(inputs)
        loss = self._run_training_graph(inputs)
        if self.clip is not None:
            self.clip()
        self.optimizer.step()
        return loss

    def _replayed_train_step(self, inputs: Sequence[torch.Tensor]) -> float:
        """The training step as one CUDA graph: forward, backward, clipping and the
        optimizer's update, reading this step's learning rate from the device."""
        bound, shapes = self._training_inputs(inputs)
        executable = self.compiled("train", shapes).executable
        replay, optimizer = self._replay("train", shapes, executable), self.optimizer
        executable.load(bound)
        # SGD's first step takes a branch of its own: run, not recorded
        optimizer.step_replayed(replay.body if optimizer.steps == 0 else replay)
        return executable.values[self.spec.loss].item()

    def loss(self, *inputs: torch.Tensor) -> float:
        """The loss on one batch, without updating anything (gradients are refreshed)."""
        return self._run_training_graph(inputs)

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Inference: the spec's ``output`` for input ``x``, in a new tensor (or ``out``)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        first = self.spec.inputs[0].name
        shapes = {first: self.input_shapes(x.shape)[first]}
        executable = self.compiled("infer", shapes).executable
        if self.cuda_graphs:
            executable.load({first: x})
            self._replay("infer", shapes, executable)()
        else:
            executable.run({first: x})
        result = executable.values[self.spec.output]
        if out is None:
            return result.clone()
        return out.copy_(result)

    __call__ = forward

    def vjp(self, inputs: Sequence[torch.Tensor], grad_output: torch.Tensor) -> torch.Tensor | None:
        """A module's backward: runs the spec's ``output`` on ``inputs`` (those it reads, in
        spec order), then reverse mode seeded with ``grad_output`` (d objective / d output,
        any shape the output has). Parameter gradients land in ``self.grads`` (overwritten,
        as in a training step); returns d objective / d first input, in a new tensor, or
        None when that input does not reach the output."""
        needed = needed_nodes(self.spec, [self.spec.output])
        names = [n for n in self.spec.input_names if n in needed]
        bound = self._bind_inputs(inputs, names)
        first = self.spec.inputs[0].name
        shapes = {k: v for k, v in self.input_shapes(inputs[0].shape).items() if k in needed}
        compiled = self.compiled("vjp", shapes)
        out_shape = compiled.graph.nodes[self.spec.output]["shape"]
        if tuple(grad_output.shape) != tuple(out_shape):
            raise ValueError(f"the output gradient has shape {tuple(grad_output.shape)}, "
                             f"the output has shape {tuple(out_shape)}")
        executable = compiled.executable
        executable.run({**bound, grad_name(self.spec.output): grad_output})
        found = compiled.graph.graph["input_grads"].get(first)
        return None if found is None else executable.values[found].clone()

    # ---- parameters ------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Parameters by torch.nn name (``conv1.weight``), in network order. Like
        torch.nn, the tensors are the live parameters: clone them to keep a snapshot."""
        return dict(self.params)

    def _adopt(self, params: Mapping[str, torch.Tensor]) -> None:
        expected = self.params
        missing = [k for k in expected if k not in params]
        unexpected = [k for k in params if k not in expected]
        if missing or unexpected:
            raise KeyError(f"parameters do not match spec '{self.spec.name}': "
                           f"missing {missing}, unexpected {unexpected}")
        for name, t in params.items():
            if tuple(t.shape) != tuple(expected[name].shape):
                raise ValueError(f"'{name}': shape {tuple(t.shape)}, spec '{self.spec.name}' "
                                 f"needs {tuple(expected[name].shape)}")
            here = torch.empty(0, device=self.device).device  # 'cuda' -> 'cuda:0'
            if t.dtype != self.dtype or t.device != here or not t.is_contiguous():
                raise ValueError(f"'{name}': a contiguous {self.dtype} tensor on {self.device} "
                                 f"is needed, got {t.dtype} on {t.device}")
        self.params = {k: params[k] for k in expected}

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


PART_PIXELS = 2**14
"""Pixels (batch x height x width) a batch part holds at least. The seed net at batch
64 ran at 3,660 samples/s whole on one thread, 4,600 as 2 parts of 32 on two threads
and 5,720 as 4 parts of 16; at batch 256, 2,749 whole, 6,121 as 4 parts of 64 and 5,931
as 8 of 32; at batch 16 the one whole batch was fastest (3,526 against 2,739 as 2
parts): the loss and its backward only, 2 cores, measured side by side."""


_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool(threads: int) -> ThreadPoolExecutor:
    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="n2ngraph-part")
    return _POOLS[threads]
