"""A module's backward (``Program.vjp``) in two halves, and when the second may run
alone.

A 'vjp' plan computes the spec's output and then reverse mode from a given output
gradient. The scheduler runs every forward kernel before any backward one, so the plan
can stop after its forward half (``VjpPlan.forward``: a module's forward) and run its
reverse half later (``VjpPlan.reverse``: the module's backward). In between, the
activations the reverse half reads stay in the plan's buffers: nothing else writes
them until the plan runs again.

The reverse half may run alone only if a recompute would give those very values
(``KeptForward``): the same plan, the same input tensors, the parameters and the
thread count (a GEMM's blocking, so its rounding, may depend on it) all as they were.
A change is seen as torch's autograd sees one to a tensor it saved: by identity, data
pointer and version counter (``Tensor._version``, which every in-place op bumps,
through whichever view or ``detach()`` it went; assigning ``.data`` moves the pointer).
An in-place write that torch does not count either, through ``.data`` or through
memory shared with numpy, is not seen.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import attrs
import torch

from ..compiler.autodiff import grad_name
from .plans import Compiled


@attrs.frozen(eq=False)
class VjpPlan:
    """A compiled 'vjp' plan and the names and step ranges it is run by."""

    compiled: Compiled
    output: str
    out_shape: tuple[int, ...]
    seed: str
    """The input that takes the output gradient."""
    grad_input: str | None
    """Where d objective / d first input lands; None when that input does not reach
    the output."""

    @classmethod
    def of(cls, compiled: Compiled, output: str, first_input: str) -> "VjpPlan":
        return cls(compiled, output, compiled.value_shape(output), grad_name(output),
                   compiled.input_grad(first_input))

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The forward half on ``inputs`` (by name); the output, in a new tensor."""
        executable = self.compiled.executable
        executable.run_steps(inputs, 0, self.compiled.forward_steps)
        return executable.values[self.output].clone()

    def reverse(self, grad_output: torch.Tensor) -> None:
        """The reverse half, reading what the last forward half left in the buffers."""
        executable = self.compiled.executable
        executable.run_steps({self.seed: grad_output}, self.compiled.forward_steps,
                             len(executable.steps))

    def whole(self, inputs: Mapping[str, torch.Tensor], grad_output: torch.Tensor) -> None:
        self.compiled.executable.run({**inputs, self.seed: grad_output})

    def input_gradient(self) -> torch.Tensor | None:
        """d objective / d first input after a run, in a new tensor (or None)."""
        if self.grad_input is None:
            return None
        return self.compiled.executable.values[self.grad_input].clone()


@attrs.frozen(eq=False)
class KeptForward:
    """``plan``'s forward half ran on ``inputs``, with everything as ``stamp``."""

    plan: VjpPlan
    inputs: tuple[torch.Tensor, ...]
    stamp: list

    @classmethod
    def of(cls, plan: VjpPlan, inputs: Sequence[torch.Tensor],
           params: Mapping[str, torch.Tensor]) -> "KeptForward":
        return cls(plan, tuple(inputs), _stamp(inputs, params))

    def holds(self, plan: VjpPlan, inputs: Sequence[torch.Tensor],
              params: Mapping[str, torch.Tensor]) -> bool:
        """Whether running ``plan``'s forward half on ``inputs`` now would leave in its
        buffers what they hold: the same plan and tensors, none of them changed."""
        if plan is not self.plan or len(inputs) != len(self.inputs):
            return False
        for given, kept in zip(inputs, self.inputs):
            if given is not kept:
                return False
        return _stamp(inputs, params) == self.stamp


def _stamp(inputs: Sequence[torch.Tensor], params: Mapping[str, torch.Tensor]) -> list:
    """What changes when the inputs or parameters are written or replaced."""
    stamp = [torch.get_num_threads()]
    for tensors in (inputs, params.values()):
        stamp += [(t._version, t.data_ptr()) for t in tensors]
    return stamp
