"""Optimizers, gradient clipping and learning-rate schedules.

Each optimizer reproduces the arithmetic of PyTorch's optimizer of the same name (its
single-tensor path), operation for operation (same ops, same order), so a parity test
can ask for agreement to the last few ulps; each allocates its state once, up front.
Their common interface, which the training loop and checkpoints use:

    step()            one update from the current gradients
    update(*scalars)  the update's kernels, given this step's scalars (``scalars()``) as
                      Python floats, or as 0-dim device tensors (``device_scalars()``,
                      refilled by ``load_device_scalars()``) so that a CUDA graph can
                      record the update once and replay it with each step's values
    recorded_update() ``update`` reading the device tensors: what a CUDA graph records
    step_replayed(r)  one step whose update is replayed by ``r()`` (a CUDA graph)
    set_lr(lr)        the learning rate of the next step (a schedule sets it every step)
    lr                that learning rate (assigning it is ``set_lr``)
    steps             updates done so far (read-only: ``step``, ``step_replayed`` and
                      ``load_state_dict`` set it)
    state_dict()      {"steps": n, "tensors": {"exp_avg.conv1.weight": ..., ...}} (copies)
    load_state_dict() the inverse

Where the parameters, gradients and buffers are packed into flat buffers (``flat.py``,
as a Program's are), every op of an update runs once over all parameters; otherwise
once per parameter. The arithmetic is elementwise, so both give the same bits.

A learning rate is a pure function of the step index (``learning_rate``), so a resumed
run recomputes it and no scheduler state is saved.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import torch

from .flat import packed_like, zipped
from ..ops import scalar
from ..compiler.spec import OptimizerSpec, ScheduleSpec

Tensors = Mapping[str, torch.Tensor]


class _Optimizer:
    """State shared by the optimizers: parameters, gradients, buffers by kind."""

    def __init__(self, params: Tensors, grads: Tensors, config: OptimizerSpec):
        self.config = config
        self.params, self.grads = params, grads
        self._lr = config.lr
        self._steps = 0
        self.buffers: dict[str, dict[str, torch.Tensor]] = {}  # kind -> param name -> tensor
        self._device_scalars: tuple[torch.Tensor, tuple[torch.Tensor, ...]] | None = None

    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, lr: float) -> None:  # the README's ``prog.optimizer.lr = ...``
        self.set_lr(lr)

    def set_lr(self, lr: float) -> None:
        """The learning rate of the next step; a schedule sets it before every step."""
        if not math.isfinite(lr):
            raise ValueError(f"the learning rate must be a finite number, got {lr}")
        self._lr = lr

    @property
    def steps(self) -> int:
        """Updates done so far: Adam's bias corrections and SGD's first step read it."""
        return self._steps

    def step(self) -> None:
        self.update(*self.scalars())
        self._steps += 1

    def step_replayed(self, replay: Callable[[], None]) -> None:
        """One step whose update ``replay()`` runs: a CUDA graph that recorded
        ``recorded_update``. This step's scalars are written to the device tensors it
        reads first, and the step counted after."""
        self.load_device_scalars()
        replay()
        self._steps += 1

    def scalars(self) -> tuple[float, ...]:
        """The numbers this step's update uses that change from step to step."""
        raise NotImplementedError

    def update(self, *scalars) -> None:
        raise NotImplementedError

    def device_scalars(self) -> tuple[torch.Tensor, ...]:
        """0-dim tensors on the parameters' device that ``load_device_scalars`` fills
        with ``scalars()``: what ``update`` reads when it is recorded in a CUDA graph."""
        if self._device_scalars is None:
            first = next(iter(self.params.values()))
            values = torch.zeros(len(self.scalars()), dtype=first.dtype, device=first.device)
            self._device_scalars = (values, tuple(values.unbind()))
        return self._device_scalars[1]

    def load_device_scalars(self) -> None:
        self.device_scalars()
        values = self._device_scalars[0]
        values.copy_(torch.tensor(self.scalars(), dtype=values.dtype))

    def recorded_update(self) -> None:
        """``update`` reading this step's scalars from ``device_scalars``, not from the
        host: what a CUDA graph records once and replays with each step's values."""
        self.update(*self.device_scalars())

    def _buffer(self, kind: str, zero: bool = False) -> dict[str, torch.Tensor]:
        self.buffers[kind] = packed_like(self.params, zero=zero)
        return self.buffers[kind]

    def state_dict(self) -> dict:
        """``steps`` and a copy of every buffer; before the first step, no buffer: none
        holds anything yet (SGD's momentum is uninitialised memory until its first step
        writes it), and ``load_state_dict`` needs none at step 0."""
        tensors = {f"{kind}.{name}": t.clone() for kind, by_name in self.buffers.items()
                   for name, t in by_name.items()} if self.steps else {}
        return {"steps": self.steps, "tensors": tensors}

    def load_state_dict(self, state: dict) -> None:
        """Restores ``steps`` and every buffer; after a first step, a missing buffer is
        an error (continuing Adam without its moments would silently train differently)."""
        steps, tensors = int(state["steps"]), state.get("tensors", {})
        for kind, by_name in self.buffers.items():
            for name, t in by_name.items():
                key = f"{kind}.{name}"
                if key in tensors:
                    t.copy_(tensors[key])
                elif steps > 0:
                    raise KeyError(f"optimizer state has no '{key}' ({type(self).__name__} "
                                   f"after {steps} steps needs it)")
        self._steps = steps


class SGD(_Optimizer):
    """PyTorch's SGD: weight decay, momentum with dampening, Nesterov.

        g = grad + weight_decay * p
        b = g                               on the first step
        b = momentum * b + (1 - dampening) g  afterwards
        g = g + momentum * b  (nesterov)  or  g = b
        p = p - lr * g
    """

    def __init__(self, params: Tensors, grads: Tensors, config: OptimizerSpec):
        if config.nesterov and (config.momentum <= 0 or config.dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, grads, config)
        self.momentum = self._buffer("momentum") if config.momentum else {}
        needs_scratch = config.weight_decay or config.nesterov
        self.scratch = packed_like(params) if needs_scratch else {}
        self.units = zipped(self.params, self.grads, self.momentum, self.scratch)
        alike = {(p.device.type, p.dtype) for p in params.values()}  # one momentum scalar
        listed = len(self.units) > 1 and not needs_scratch and len(alike) == 1 and \
            next(iter(alike))[0] == "cpu"
        self._lists = tuple(list(t) for t in zip(*self.units))[:3] if listed else None

    def scalars(self) -> tuple[float]:
        return (-self.lr,)

    def update(self, neg_lr) -> None:
        c = self.config
        if self._lists is not None and not isinstance(neg_lr, torch.Tensor):
            self._update_lists(neg_lr)
            return
        for param, g, buf, scratch in self.units:
            if c.weight_decay:
                g = torch.add(g, param, alpha=c.weight_decay, out=scratch)
            if c.momentum:
                if self.steps == 0:
                    buf.copy_(g)
                else:
                    buf.mul_(scalar(c.momentum, buf)).add_(g, alpha=1 - c.dampening)
                if c.nesterov:
                    g = torch.add(g, buf, alpha=c.momentum, out=scratch)
                else:
                    g = buf
            if isinstance(neg_lr, torch.Tensor):
                param.addcmul_(g, neg_lr)
            else:
                param.add_(g, alpha=neg_lr)

    def _update_lists(self, neg_lr: float) -> None:
        """``update`` for parameters not packed (the compat modules' own tensors), each
        op once over the lists of tensors instead of once per tensor. On the CPU a
        foreach op runs the very per-tensor kernels, so the bits are the loop's; without
        weight decay or Nesterov momentum (those take the loop)."""
        c = self.config
        params, grads, bufs = self._lists
        g = grads
        if c.momentum:
            if self.steps == 0:
                torch._foreach_copy_(bufs, grads)
            else:
                torch._foreach_mul_(bufs, scalar(c.momentum, bufs[0]))
                torch._foreach_add_(bufs, grads, alpha=1 - c.dampening)
            g = bufs
        torch._foreach_add_(params, g, alpha=neg_lr)


class Adam(_Optimizer):
    """PyTorch's Adam (``weight_decay`` is L2 added to the gradient, not AdamW):

        g = grad + weight_decay * p
        m = lerp(m, g, 1 - beta1);   v = beta2 v + (1 - beta2) g*g
        v_max = max(v_max, v)        (amsgrad; v_max replaces v below)
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    The second moment's bias correction changes every step; it lives in a 0-dim tensor
    refilled once a step (or read from ``device_scalars``) so a step allocates nothing.
    """

    def __init__(self, params: Tensors, grads: Tensors, config: OptimizerSpec):
        super().__init__(params, grads, config)
        self.exp_avg = self._buffer("exp_avg", zero=True)
        self.exp_avg_sq = self._buffer("exp_avg_sq", zero=True)
        self.max_exp_avg_sq = self._buffer("max_exp_avg_sq", zero=True) if config.amsgrad else {}
        self.denom = packed_like(params)
        self.scratch = packed_like(params) if config.weight_decay else {}
        self.units = zipped(self.params, self.grads, self.exp_avg, self.exp_avg_sq,
                            self.max_exp_avg_sq, self.denom, self.scratch)
        first = next(iter(params.values()))
        self.correction = torch.empty((), dtype=first.dtype, device=first.device)

    def scalars(self) -> tuple[float, float]:
        """(-lr / (1 - beta1^t), sqrt(1 - beta2^t)): the step size and the second
        moment's bias correction."""
        beta1, beta2 = self.config.betas
        t = float(self.steps + 1)  # torch keeps the step as a float tensor, read with .item()
        return -self.lr / (1 - beta1 ** t), (1 - beta2 ** t) ** 0.5

    def update(self, neg_step_size, correction2_sqrt) -> None:
        c = self.config
        beta1, beta2 = c.betas
        recorded = isinstance(neg_step_size, torch.Tensor)  # in a CUDA graph: no host values
        correction = correction2_sqrt if recorded else self.correction.fill_(correction2_sqrt)
        for param, g, m, v, v_max, denom, scratch in self.units:
            if c.weight_decay:
                g = torch.add(g, param, alpha=c.weight_decay, out=scratch)
            m.lerp_(g, 1 - beta1)
            v.mul_(scalar(beta2, v)).addcmul_(g, g, value=1 - beta2)
            if c.amsgrad:
                v = torch.maximum(v_max, v, out=v_max)
            torch.sqrt(v, out=denom)
            denom.div_(correction).add_(scalar(c.eps, denom))
            if recorded:
                param.addcdiv_(m, denom.div_(neg_step_size))
            else:
                param.addcdiv_(m, denom, value=neg_step_size)


def make_optimizer(params: Tensors, grads: Tensors, config: OptimizerSpec) -> _Optimizer:
    """The optimizer the recipe names."""
    kinds = {"sgd": SGD, "adam": Adam}
    if config.name not in kinds:
        raise ValueError(f"unknown optimizer {config.name!r} (known: {', '.join(kinds)})")
    return kinds[config.name](params, grads, config)


class ClipGradNorm:
    """PyTorch's ``clip_grad_norm_``: scales all gradients together so that their
    global L2 norm is at most ``max_norm``, with torch's formula and op order:

        total = || (||g_1||, ||g_2||, ...) ||
        g_i *= min(max_norm / (total + 1e-6), 1)      (always multiplied, like torch)
    """

    def __init__(self, grads: Tensors, max_norm: float):
        self.grads, self.max_norm = grads, float(max_norm)
        self.scaled = [g for (g,) in zipped(grads)]  # one flat tensor where packed
        first = next(iter(grads.values()))
        self.norms = torch.empty(len(grads), dtype=first.dtype, device=first.device)
        self.total = torch.empty((), dtype=first.dtype, device=first.device)
        self.coef = torch.empty((), dtype=first.dtype, device=first.device)

    def __call__(self) -> torch.Tensor:
        """Clips in place; returns the norm before clipping (a 0-dim tensor, reused)."""
        for i, g in enumerate(self.grads.values()):
            torch.linalg.vector_norm(g, out=self.norms[i])
        torch.linalg.vector_norm(self.norms, out=self.total)
        coef = torch.add(self.total, scalar(1e-6, self.total), out=self.coef)
        coef.reciprocal_().mul_(scalar(self.max_norm, coef)).clamp_(max=1.0)  # torch's __rdiv__
        for g in self.scaled:
            g.mul_(coef)
        return self.total


def learning_rate(schedule: ScheduleSpec, base: float, step: int, steps_per_epoch: int,
                  total_steps: int) -> float:
    """The learning rate of update number ``step`` (0-based) of a run of ``total_steps``
    updates, ``steps_per_epoch`` to an epoch, starting from ``base``.

    step and cosine give the values of torch's StepLR (stepped once per epoch) and
    CosineAnnealingLR (stepped once per update, T_max = total_steps); rampdown is
    ``compute_ramped_down_lrate`` of the Noise2Noise code (NVlabs/noise2noise train.py),
    whose cosine factor is squared, with a linear ramp-up in front when asked for.
    """
    name = schedule.name
    if name == "constant":
        return base
    if name == "step":
        return base * schedule.gamma ** ((step // steps_per_epoch) // schedule.step_size)
    if name == "cosine":
        return schedule.eta_min + (base - schedule.eta_min) * (
            1 + math.cos(math.pi * step / total_steps)) / 2
    if name == "rampdown":
        lr = base
        rampup_steps = schedule.rampup_fraction * total_steps
        if step < rampup_steps:
            lr *= (step + 1) / rampup_steps
        start = total_steps * (1 - schedule.rampdown_fraction)
        if step >= start:
            t = ((step - start) / schedule.rampdown_fraction) / total_steps
            lr *= (0.5 + math.cos(t * math.pi) / 2) ** 2
        return lr
    raise ValueError(f"unknown learning-rate schedule {name!r}")
