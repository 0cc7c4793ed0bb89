"""Runs one op kernel the way the executor does, but suspiciously.

The executor hands a kernel views carved out of larger preallocated buffers, with
whatever the previous step left in them. The harness does the same, only worse:

- every output, gradient and workspace starts out filled with NaN, so a kernel that
  reads scratch it never wrote, or leaves part of its output unwritten, shows NaN;
- every tensor (arguments too) is a view at a non-zero offset inside a buffer with NaN
  guard cells on both sides, so a kernel that ignores a view's storage offset reads
  NaN, and one that writes past its tensor is caught by the guard check;
- arguments are copies, checked afterwards to be unchanged, except the one that the
  op declared it may overwrite (``op.inplace`` / ``VJP.inplace``) when it is aliased.

Each computation runs the kernel a CPU plan runs for it (``kernels.kernel_for``: for most
ops the op's own method, for conv2d and its kin one from the kernel table, as the op's
hints ask), or with ``reference=True`` the op's own method, its plain reference kernel.
Results come back as fresh (ordinary) tensors.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch

from n2ngraph.kernels import Kernel, OpKernel, kernel_for
from n2ngraph.ops import Op

GUARD = 3
Tensors = Mapping[str, torch.Tensor]


class Arena:
    """Allocates guarded NaN-filled views and checks their guards afterwards."""

    def __init__(self, dtype: torch.dtype, device: torch.device | str = "cpu"):
        self.dtype, self.device = dtype, device
        self._buffers: list[tuple[str, torch.Tensor]] = []

    def empty(self, shape, what: str) -> torch.Tensor:
        numel = math.prod(shape)
        buffer = torch.empty(numel + 2 * GUARD, dtype=self.dtype, device=self.device)
        buffer.fill_(float("nan"))
        self._buffers.append((what, buffer))
        return buffer[GUARD:GUARD + numel].view(tuple(shape))

    def copy(self, t: torch.Tensor, what: str) -> torch.Tensor:
        placed = self.empty(t.shape, what)
        placed.copy_(t)
        return placed

    def check_guards(self, kernel: str) -> None:
        for what, buffer in self._buffers:
            guards = torch.cat([buffer[:GUARD], buffer[-GUARD:]])
            assert torch.isnan(guards).all(), f"{kernel} wrote outside {what}"


def node_shapes(op: Op, tensors: Tensors) -> dict[str, tuple[int, ...]]:
    """The forward node's shapes, as ``workspace`` sees them: every role, and ``out``."""
    shapes = {role: tuple(t.shape) for role, t in tensors.items()}
    return {**shapes, "out": tuple(op.infer(**shapes))}


def roles(op: Op) -> tuple[str, ...]:
    """Every argument role of the forward kernel: tensor inputs, then parameters."""
    return (*op.inputs, *op.params())


def _dtype_device(tensors: Tensors, default=torch.float64):
    first = next(iter(tensors.values()), None)
    return (first.dtype, first.device) if first is not None else (default, "cpu")


def _check_untouched(kernel: str, originals: Tensors, placed: Tensors, aliased: str | None):
    for role, original in originals.items():
        if role != aliased:
            assert torch.equal(placed[role], original), f"{kernel} modified its argument {role!r}"


def kernel(op: Op, method: str, reference: bool = False) -> Kernel:
    """The kernel computing ``method`` of ``op``: a CPU plan's, or the op's own."""
    return OpKernel(op, method) if reference else kernel_for(op, method, "cpu")


def run_forward(op: Op, tensors: Tensors, *, alias: bool = False,
                dtype: torch.dtype | None = None, reference: bool = False) -> torch.Tensor:
    """The forward kernel on copies of ``tensors``; with ``alias``, ``out`` IS the input
    named by ``op.inplace``. ``dtype`` is only needed for ops without inputs (seed)."""
    return _forward(op, tensors, alias=alias, dtype=dtype, reference=reference)[0].clone()


def _forward(op: Op, tensors: Tensors, *, alias: bool = False, dtype: torch.dtype | None = None,
             reference: bool = False):
    """(out, workspaces) of the forward kernel, as it left them."""
    found_dtype, device = _dtype_device(tensors)
    arena = Arena(dtype or found_dtype, device)
    shapes = node_shapes(op, tensors)
    args = {role: arena.copy(t, role) for role, t in tensors.items()}
    if alias:
        assert op.inplace is not None, f"{op.name} declares no in-place input"
        out = args[op.inplace]
        assert tuple(out.shape) == shapes["out"]
    else:
        out = arena.empty(shapes["out"], "out")
    forward = kernel(op, "forward", reference)
    ws = {name: arena.empty(shape, f"workspace {name!r}")
          for name, shape in forward.workspace(shapes).items()}
    forward.run(out, ws, **args)
    arena.check_guards(f"{op.name}.forward")
    _check_untouched(f"{op.name}.forward", tensors, args, op.inplace if alias else None)
    return out, ws


def run_vjp(op: Op, role: str, tensors: Tensors, gout: torch.Tensor, *,
            out: torch.Tensor | None = None, alias: bool = False,
            reference: bool = False) -> torch.Tensor:
    """The gradient w.r.t. ``role`` from the op's own VJP rule, given the output
    gradient ``gout``; with ``alias``, ``grad`` IS the need named by the rule's
    ``inplace``. ``out`` (the forward result) is computed with the op's forward kernel
    when the rule needs it and it is not given."""
    rule = op.vjps[role]
    dtype, device = _dtype_device(tensors)
    shapes = node_shapes(op, tensors)
    assert tuple(gout.shape) == shapes["out"], "gout must have the forward output's shape"
    if out is None and "out" in rule.needs:
        out = run_forward(op, tensors)
    known = {**tensors, "gout": gout, "out": out}
    originals = {need: known[need] for need in rule.needs}
    arena = Arena(dtype, device)
    args = {need: arena.copy(t, need) for need, t in originals.items()}
    if alias:
        assert rule.inplace is not None, f"{op.name}.{rule.kernel} declares no in-place need"
        grad = args[rule.inplace]
        assert tuple(grad.shape) == shapes[role]
    else:
        grad = arena.empty(shapes[role], f"grad {role!r}")
    vjp = kernel(op, rule.kernel, reference)
    ws = {name: arena.empty(shape, f"workspace {name!r}")
          for name, shape in vjp.workspace(shapes).items()}
    shared = vjp.shares(shapes)
    if shared:  # what the forward left in its workspaces, as the memory plan keeps it
        forward_ws = _forward(op, tensors)[1]
        ws.update({name: forward_ws[name] for name in shared})
    name = f"{op.name}.{rule.kernel}"
    vjp.run(grad, ws, **args)
    arena.check_guards(name)
    _check_untouched(name, originals, args, rule.inplace if alias else None)
    return grad.clone()


def finite_difference(op: Op, tensors: Tensors, role: str, gout: torch.Tensor,
                      eps: float = 1e-6) -> torch.Tensor:
    """d/d tensors[role] of sum(gout * forward(tensors)), element by element, by
    central differences through the op's own forward kernel (float64 only)."""
    base = {r: t.clone() for r, t in tensors.items()}
    target = base[role]
    flat = target.view(-1)
    result = torch.empty_like(target)
    rflat = result.view(-1)
    for i in range(flat.numel()):
        keep = flat[i].item()
        flat[i] = keep + eps
        plus = (gout * run_forward(op, base)).sum().item()
        flat[i] = keep - eps
        minus = (gout * run_forward(op, base)).sum().item()
        flat[i] = keep
        rflat[i] = (plus - minus) / (2 * eps)
    return result
