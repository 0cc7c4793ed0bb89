"""What a kernel is: how one node of the graph is computed, with its scratch space.

An op says *what* it computes (``ops/``); a kernel says *how*, for one of the op's
computations (its forward or one VJP rule) on one device. ``compiler/lower.py`` gives
every computed node a kernel: one from ``table.py`` where the op has several ways to be
computed, else the op's own method (``OpKernel``). The memory planner asks the kernel
for its workspaces, the executor has it ``prepare`` a call bound to its buffers, once.
"""

from __future__ import annotations

from typing import Callable

import attrs
import torch

from ..ops import Op, Shape

Tensors = dict[str, torch.Tensor]


class Kernel:
    """One computation of one op, and the scratch space it needs.

    ``shapes`` are those of the forward node the kernel belongs to: its inputs by role
    and its result as ``out`` (a VJP kernel sees its forward node's shapes too).
    """

    def workspace(self, shapes: dict[str, Shape]) -> dict[str, Shape]:
        """Scratch tensors, planned by the memory planner like any other value, so
        that running the kernel never asks the allocator for memory."""
        return {}

    def shares(self, shapes: dict[str, Shape]) -> dict[str, str]:
        """Workspaces this (VJP) kernel reads from its node's forward kernel instead of
        having its own: {name: 'forward'}. The memory plan keeps the forward's
        workspace of that name intact until this kernel has run."""
        return {}

    def prepare(self, result: torch.Tensor, ws: Tensors, /,
                **tensors: torch.Tensor) -> Callable[[], None]:
        """The kernel bound to its result, workspaces and arguments, as a call without
        arguments that only launches tensor ops: views are sliced and choices made
        here, once, when the executor binds the plan."""
        raise NotImplementedError

    def run(self, result: torch.Tensor, ws: Tensors, /, **tensors: torch.Tensor) -> None:
        """Prepares and runs once: for tests and one-off calls."""
        self.prepare(result, ws, **tensors)()

    def describe(self) -> str:
        """How the node is computed, for ``--summary``: the kernel's class."""
        return type(self).__name__


@attrs.frozen
class OpKernel(Kernel):
    """The op's own method for one computation (``forward``, ``grad_x``): what runs for
    every op that has one way to be computed."""

    op: Op
    method: str

    def workspace(self, shapes):
        return self.op.workspace(self.method, shapes)

    def prepare(self, result, ws, /, **tensors):
        return self.op.prepare(self.method, result, ws, **tensors)

    def describe(self) -> str:
        return ""  # the op's own method: nothing to add to the op's description
