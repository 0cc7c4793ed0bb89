"""Finding where a diverging training run first went nan or inf.

Checking every value of every step would slow every step down. A run only has to
notice that it diverged, from what a step reads back anyway (its loss, and the gradient
norm where clipping computes one), and then find where. For that, ``Recent`` keeps what
the last two steps started from: their batches (the tensors themselves) and their
parameters (one copy of the flat parameter buffer a step, into a ring of two). A step
whose loss is nan started either from finite parameters, and then its own forward or
backward went non-finite, or from parameters the step before it made non-finite: with
a gradient that overflowed while that step's loss stayed finite, or with its update.
``locate`` re-runs the kept steps, newest first, checking every kernel's result
(``Program.first_nonfinite``), until it finds the first value that went non-finite.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import attrs
import torch

from .flat import packed_like, zipped

Tensors = Mapping[str, torch.Tensor]


def first_nonfinite_tensor(tensors: Tensors) -> str | None:
    """The name of the first of ``tensors`` holding a nan or an inf, None if none does."""
    return next((name for name, t in tensors.items() if not bool(torch.isfinite(t).all())), None)


OPTIMIZER = "optimizer."


def state_tensors(program) -> dict[str, torch.Tensor]:
    """A program's parameters and its optimizer's buffers, by the names a checkpoint
    gives them (``conv1.weight``, ``optimizer.momentum.conv1.weight``)."""
    buffers = program.optimizer.state_dict()["tensors"]
    return {**program.state_dict(), **{OPTIMIZER + name: t for name, t in buffers.items()}}


def describe_state(name: str) -> str:
    if name.startswith(OPTIMIZER):
        return f"optimizer state '{name[len(OPTIMIZER):]}'"
    return f"parameter '{name}'"


@attrs.define
class Kept:
    """A step as it started: ``label`` (the caller's name for it: 'epoch 2, step 5'),
    its parameters and its inputs."""

    label: str
    params: dict[str, torch.Tensor]
    inputs: tuple[torch.Tensor, ...]


class Recent:
    """The last ``depth`` steps of a program, as they started, newest first."""

    def __init__(self, params: Tensors, depth: int = 2):
        self.params, self.depth = params, depth
        self.kept: list[Kept] = []

    def keep(self, label: str, inputs: Sequence[torch.Tensor]) -> None:
        """Before a step: its inputs, and a copy of the parameters it starts from (into
        the buffer of the step that falls out of the ring)."""
        copy = self.kept.pop().params if len(self.kept) == self.depth else packed_like(self.params)
        for target, source in zipped(copy, self.params):
            target.copy_(source)
        self.kept.insert(0, Kept(label, copy, tuple(inputs)))


@attrs.frozen
class Finding:
    """Where a run went non-finite: at step ``label`` (None when before the steps
    kept), value ``value`` (None when every value of the steps kept stayed finite),
    and ``message``, one clause saying so."""

    label: str | None
    value: str | None
    message: str


def locate(program, recent: Recent) -> Finding:
    """Where ``program`` (a ``Program``: ``first_nonfinite``, ``state_dict``, an
    ``optimizer``), whose last step was ``recent.kept[0]``, first went non-finite.
    Leaves the program's parameters at those of the step it names (or the oldest kept):
    the caller is stopping the run, and must not save them as if trained."""
    after = first_nonfinite_tensor(state_tensors(program))  # what the last update left
    params = program.state_dict()  # the live parameters
    for kept in recent.kept:
        for target, source in zipped(params, kept.params):
            target.copy_(source)
        found = program.first_nonfinite(*kept.inputs)
        if found is None:
            return _finite_step(program, kept.label, after)
        value, what = found
        if value not in params:
            return Finding(kept.label, value, f"at {kept.label}, {what} went non-finite first")
        after = value  # the step started from it: the one before made it non-finite
    oldest = f"{recent.kept[-1].label} started" if recent.kept else "the run started"
    return Finding(None, after, f"{describe_state(after)} was already non-finite when {oldest}")


def _finite_step(program, label: str, after: str | None) -> Finding:
    """The finding for a step whose forward and backward stayed finite: its update made
    ``after`` non-finite, or (``after`` None) nothing did."""
    if after is None:
        return Finding(label, None, f"at {label}, every value stayed finite when re-run")
    update = f"{program.optimizer.config.name} update"
    return Finding(label, after, f"at {label}, the forward and backward stayed finite and "
                                 f"its {update} made {describe_state(after)} non-finite")
