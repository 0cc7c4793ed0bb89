"""``compile``: runs the passes (plans.py) and wraps the result in a ``Program``.

A Program owns what outlives a single input shape: parameters, their gradients and the
optimizer state, each packed into one flat buffer (``flat.py``: the optimizer then
updates all parameters with a handful of ops). Each input shape gets its own compiled
plan (``Compiled``), built on first use and cached, all sharing those tensors: train on
32x32 crops, then denoise a 512x512 photo with the same weights. How a plan runs beyond
launching its kernels is elsewhere: as parts across CPU threads (parts.py), replayed as
a CUDA graph (cuda_graphs.py).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from ..compiler.fit import check_params_fit_memory
from ..compiler.shapes import needed_nodes
from ..compiler.spec import OptimizerSpec, Spec
from .buckets import GradientBuckets, bucketable
from .cuda_graphs import CudaGraphs
from .distributed import GradientSum, as_ranks
from .flat import packed, packed_like
from .init import initial_params
from .optim import ClipGradNorm, make_optimizer
from .parts import PartGradients, batch_parts, run_in_parts
from .plans import Compiled, Planner, Shape, available_bytes
from .state import adopted, load_state
from .vjp import KeptForward, VjpPlan

__all__ = ["compile", "Program", "Compiled"]


def compile(spec: Spec, input_shape: Sequence[int] | None = None, *, device="cpu",
            dtype: torch.dtype = torch.float32, seed: int | None = None,
            init: str | None = None, optimizer: OptimizerSpec | None = None,
            clip_grad_norm: float | None = None, rewrite: bool = True,
            cuda_graphs: bool = True, codegen: bool = True, group=None) -> "Program":
    """Compiles ``spec`` for inputs of ``input_shape`` (N, C, H, W).

    ``input_shape`` is the shape of the first input; other inputs (the target) share its
    batch and spatial size with their own channel count. Defaults come from the spec's
    training recipe: batch and crop size, init, seed, optimizer and gradient clipping.
    ``rewrite=False`` compiles the graph exactly as the spec writes it (see rewrite.py).
    On a GPU, ``cuda_graphs`` replays each training step and each inference as one CUDA
    graph (executor.Replay); ``False`` launches every kernel from Python instead.
    ``codegen=False`` keeps to tensor-op kernels, never the generated ones
    (``kernels/table.py``); so does a machine without a C compiler.
    ``group`` (a torch.distributed process group, or ``distributed.Ranks``) makes it one
    rank of a data-parallel run: see ``Program``.
    """
    program = Program(spec, device=device, dtype=dtype, seed=seed, init=init, optimizer=optimizer,
                      clip_grad_norm=clip_grad_norm, rewrite=rewrite, cuda_graphs=cuda_graphs,
                      codegen=codegen, group=group)
    if input_shape is None:
        first = spec.inputs[0]
        input_shape = (spec.train.batch, first.channels, spec.train.crop, spec.train.crop)
    program.compiled("train" if spec.loss else "infer", program.input_shapes(input_shape))
    return program


class Program:
    """A compiled spec with its parameters, gradients and optimizer (``compile`` makes
    one): the plans, one per kind of run and input shape, share them.

    With a process ``group`` (every rank of it constructs its Program together), the
    parameters are rank 0's from the start, and ``train_step`` and ``loss`` take this
    rank's equal share of the global batch and return the global batch's loss, its
    gradients summed over the ranks (distributed.py), so every rank takes the same step.
    CUDA graphs are off then: a step waits on the other ranks."""

    def __init__(self, spec: Spec, *, device="cpu", dtype: torch.dtype = torch.float32,
                 seed: int | None = None, init: str | None = None,
                 optimizer: OptimizerSpec | None = None,
                 params: Mapping[str, torch.Tensor] | None = None,
                 clip_grad_norm: float | None = None, rewrite: bool = True,
                 cuda_graphs: bool = True, codegen: bool = True, group=None):
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
        check_params_fit_memory(spec, available_bytes(self.device), copies=2,
                         itemsize=torch.empty((), dtype=dtype).element_size(),
                         what=f"the parameters and their gradients in {dtype} on {self.device}")
        self.params = packed(initial_params(spec, init or recipe.init,
                                            recipe.seed if seed is None else seed,
                                            dtype=dtype, device=self.device))
        if params is not None:
            self.params = adopted(params, self.params, spec.name, dtype=dtype, device=self.device)
        self.grads = packed_like(self.params)
        self.optimizer = make_optimizer(self.params, self.grads, optimizer or recipe.optimizer)
        max_norm = recipe.clip_grad_norm if clip_grad_norm is None else clip_grad_norm
        self.clip = ClipGradNorm(self.grads, max_norm) if max_norm else None
        self.codegen = codegen
        self._planner = Planner(spec, self.params, rewrite=rewrite, device=self.device, dtype=dtype,
                                codegen=codegen)
        self._cache: dict[tuple, Compiled] = {}
        self._part_grads = PartGradients(self.grads)
        self.ranks = as_ranks(group)
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda" and self.ranks is None
        self._graphs = CudaGraphs(self.optimizer, self.clip)
        needed = needed_nodes(spec, [spec.output])
        self._vjp_inputs = tuple(n for n in spec.input_names if n in needed)  # what vjp reads
        self._vjp_plans: dict[torch.Size, VjpPlan] = {}  # by the first input's shape
        self._kept: KeptForward | None = None  # what a vjp plan holds after vjp_forward
        self._reduction = GradientSum(self.ranks, self.grads) if self.ranks else None
        self._buckets: dict[int, GradientBuckets] = {}  # by id of the plan they are cut for
        if self.ranks is not None:
            self.ranks.broadcast(self.params)

    # ---- plans -----------------------------------------------------------------
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
            grads = self.grads if part is None else self._part_grads.of(part)
            self._cache[key] = self._planner.compile(kind, shapes, grads)
        return self._cache[key]

    @property
    def compilations(self) -> tuple[Compiled, ...]:
        """Every plan compiled so far (one per kind, input shape and batch part)."""
        return tuple(self._cache.values())

    def batch_parts(self, shapes: Mapping[str, Shape]) -> list[tuple[int, int]]:
        """[(start, stop)]: the parts a training batch of these shapes runs as, side by
        side on the CPU's threads (parts.py)."""
        return batch_parts(self.spec, self.device, shapes)

    # ---- inputs ----------------------------------------------------------------
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

    # ---- running ---------------------------------------------------------------
    def train_step(self, *inputs: torch.Tensor) -> float:
        """Forward, backward and one optimizer update on one batch; returns the loss.

        Inputs are given in the spec's input order (``x, target`` for noise2noise).
        """
        if self.cuda_graphs:
            bound, shapes = self._training_inputs(inputs)
            executable = self.compiled("train", shapes).executable
            self._graphs.train_step(shapes, executable, bound)
            return executable.values[self.spec.loss].item()
        loss = self._forward_and_backward(inputs)
        if self.clip is not None:
            self.clip()
        self.optimizer.step()
        return loss

    def loss(self, *inputs: torch.Tensor) -> float:
        """The loss on one batch, without updating anything (gradients are refreshed)."""
        return self._forward_and_backward(inputs)

    def _forward_and_backward(self, inputs: Sequence[torch.Tensor]) -> float:
        """Binds the inputs (spec order), checks their shapes, runs forward and backward
        of the plan for that shape (as parts, where the batch splits), and returns the
        loss."""
        bound, shapes = self._training_inputs(inputs)
        parts = self.batch_parts(shapes)
        if len(parts) == 1 and self._reduction is not None and bucketable(self.grads):
            return self._run_in_buckets(bound, shapes, parts[0][1])
        if len(parts) == 1:
            loss = self._run_training_plan(bound)
        else:
            def run_part(part: int) -> float:
                lo, hi = parts[part]
                return self._run_training_plan({name: t[lo:hi] for name, t in bound.items()}, part)
            loss = run_in_parts(parts, run_part, self._part_grads)
        if self._reduction is not None:
            loss = self._reduction(loss, parts[-1][1])
        return loss

    def _run_in_buckets(self, bound: Mapping[str, torch.Tensor], shapes, rows: int) -> float:
        """A data-parallel forward and backward whose gradients leave in buckets while
        backward still runs (buckets.py); returns the global batch's loss."""
        compiled = self.compiled("train", shapes)
        buckets = self._buckets.get(id(compiled))
        if buckets is None:
            order = {value: i for i, value in enumerate(compiled.schedule.order)}
            writers = {p: order[g] for p, g in compiled.graph.grads.items()}
            buckets = self._buckets[id(compiled)] = GradientBuckets(self.ranks, self.grads, writers)
        compiled.executable.run(bound, after=buckets.after)
        return buckets.finish(compiled.executable.values[self.spec.loss].item(), rows)

    def _run_training_plan(self, bound: Mapping[str, torch.Tensor], part: int | None = None) -> float:
        shapes = self.input_shapes(bound[self.spec.inputs[0].name].shape)
        executable = self.compiled("train", shapes, part).executable
        executable.run(bound)
        return executable.values[self.spec.loss].item()

    def first_nonfinite(self, *inputs: torch.Tensor) -> tuple[str, str] | None:
        """Where a training step on ``inputs`` first goes nan or inf, as (value, what it
        is): a parameter, else the first value of its forward and backward, in schedule
        order; None if every value stays finite. Runs the plans ``train_step`` would (its
        batch parts, each on one thread), checking every kernel's result, and updates
        nothing: for finding, after the fact, where a diverging step went wrong
        (``runtime/divergence.py``); slower than a step."""
        for name, param in self.params.items():
            if not bool(torch.isfinite(param).all()):
                return name, f"parameter '{name}'"
        bound, shapes = self._training_inputs(inputs)
        parts = self.batch_parts(shapes)
        threads, found = torch.get_num_threads(), []
        for index, (lo, hi) in enumerate(parts):
            part = {name: t[lo:hi] for name, t in bound.items()}
            compiled = self.compiled("train", self.input_shapes(part[self.spec.input_names[0]].shape),
                                     index if len(parts) > 1 else None)
            torch.set_num_threads(1 if len(parts) > 1 else threads)
            try:
                value = compiled.executable.first_nonfinite(part)
            finally:
                torch.set_num_threads(threads)
            if value is not None:
                found.append((compiled.schedule.order.index(value), value, compiled.describe(value)))
        return min(found)[1:] if found else None

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Inference: the spec's ``output`` for input ``x``, in a new tensor (or ``out``)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        first = self.spec.inputs[0].name
        shapes = {first: self.input_shapes(x.shape)[first]}
        executable = self.compiled("infer", shapes).executable
        if self.cuda_graphs:
            self._graphs.infer(shapes, executable, {first: x})
        else:
            executable.run({first: x})
        result = executable.values[self.spec.output]
        if out is None:
            return result.clone()
        return out.copy_(result)

    __call__ = forward

    # ---- a module's forward and backward (vjp.py) ----------------------------------
    def vjp(self, inputs: Sequence[torch.Tensor], grad_output: torch.Tensor) -> torch.Tensor | None:
        """A module's backward: runs the spec's ``output`` on ``inputs`` (those it reads, in
        spec order), then reverse mode seeded with ``grad_output`` (d objective / d output,
        any shape the output has). Parameter gradients land in ``self.grads`` (overwritten,
        as in a training step); returns d objective / d first input, in a new tensor, or
        None when that input does not reach the output. Right after ``vjp_forward`` on the
        same inputs, nothing changed since (vjp.py), only the reverse half runs: on the
        values the forward kept, so the result is the same to the bit."""
        bound, plan = self._vjp_plan(inputs)
        if grad_output.shape != plan.out_shape:
            raise ValueError(f"the output gradient has shape {tuple(grad_output.shape)}, "
                             f"the output has shape {plan.out_shape}")
        kept, self._kept = self._kept, None  # the reverse half overwrites what was kept
        if kept is not None and kept.holds(plan, inputs, self.params):
            plan.reverse(grad_output)
        else:
            plan.whole(bound, grad_output)
        return plan.input_gradient()

    def vjp_forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """A module's forward that keeps what its backward reads: the spec's ``output``
        on ``inputs`` (as ``vjp`` takes them), in a new tensor, computed by the forward
        half of ``vjp``'s plan, whose buffers then hold what the reverse half reads
        (vjp.py says until when). The same kernels as ``forward``'s, in a plan that
        also holds the backward's buffers."""
        bound, plan = self._vjp_plan(inputs)
        self._kept = None
        output = plan.forward(bound)
        self._kept = KeptForward.of(plan, inputs, self.params)
        return output

    def has_vjp_plan(self, inputs: Sequence[torch.Tensor]) -> bool:
        """Whether ``vjp``'s plan for inputs of these shapes is built (a backward ran at
        this shape): then ``vjp_forward`` costs no memory that is not already spent."""
        return bool(inputs) and inputs[0].shape in self._vjp_plans

    def _vjp_plan(self, inputs: Sequence[torch.Tensor]) -> tuple[dict, VjpPlan]:
        """(the inputs by name, checked; ``vjp``'s plan for their shapes)."""
        bound = self._bind_inputs(inputs, self._vjp_inputs)
        shape = inputs[0].shape
        plan = self._vjp_plans.get(shape)
        if plan is None:
            shapes = {k: v for k, v in self.input_shapes(shape).items() if k in bound}
            plan = VjpPlan.of(self.compiled("vjp", shapes), self.spec.output,
                              self.spec.inputs[0].name)
            self._vjp_plans[shape] = plan
        return bound, plan

    # ---- parameters ------------------------------------------------------------
    def share_state(self) -> None:
        """Every rank's parameters and optimizer state made rank 0's (a collective): after
        rank 0 alone loaded them from a checkpoint."""
        if self.ranks is None:
            return
        self.ranks.broadcast(self.params)
        for kind, buffers in self.optimizer.buffers.items():
            self.ranks.broadcast(buffers, f"sharing the optimizer's {kind}")
        own = {f"{kind}.{name}": t for kind, buffers in self.optimizer.buffers.items()
               for name, t in buffers.items()}  # already rank 0's: only the step count
        self.optimizer.load_state_dict({"steps": self.ranks.from_leader(self.optimizer.steps),
                                        "tensors": own})

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Parameters by torch.nn name (``conv1.weight``), in network order. Like
        torch.nn, the tensors are the live parameters: clone them to keep a snapshot."""
        return dict(self.params)

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        load_state(self.params, state, self.spec.name)
