"""maxpool2d and avgpool2d: square windows, as torch's MaxPool2d / AvgPool2d in floor
mode (a window that would run past the padded input is dropped).

Schedule: loops over the k*k taps of a window, never over pixels. Tap (i, j) of every
window at once is one strided view of the input, shape (N, C, Ho, Wo):

    x[:, :, i : i + s*(Ho-1) + 1 : s, j : j + s*(Wo-1) + 1 : s]

so the forward is k*k elementwise max or add passes, and a VJP adds into the same view
of the input gradient. Under one tap no two windows share a cell, so each add is a
plain strided add even where windows overlap (stride < kernel).

Padding is never materialised: a tap that falls on padding for the first or last few
windows is applied to the block of windows where it lands on real cells only. That is
also exactly torch's scan, which visits the real cells of a window only.

``stride`` defaults to the kernel size, as torch's ``stride=None`` does; ``padding``
may be at most half the kernel, as in torch, so that every window holds a real cell.
"""

from __future__ import annotations

import attrs
import torch

from ..errors import SpecError
from .base import VJP, Op, Shape, attribute, check_rank, register, scalar, window_out_size


def _same_as_kernel(op) -> int:
    return op.kernel


@attrs.frozen
class _Pool2d(Op):
    """What both pools share: attributes, the shape rule and the tap views."""

    inputs = ("x",)

    kernel: int = attribute(int, minimum=1, doc="square window size")
    stride: int = attribute(int, default=attrs.Factory(_same_as_kernel, takes_self=True),
                            minimum=1, doc="step between windows (default: the kernel size)")
    padding: int = attribute(int, default=0, minimum=0, doc="on each side, at most kernel // 2")

    def __attrs_post_init__(self):
        if self.padding > self.kernel // 2:
            raise SpecError(f"must be at most half the kernel ({self.kernel // 2}), got "
                            f"{self.padding}", field="padding")

    def infer(self, x: Shape) -> Shape:
        check_rank(x, 4, f"{self.name} input (N, C, H, W)")
        n, c, h, w = x
        ho, wo = (window_out_size(size, self.kernel, self.stride, self.padding) for size in (h, w))
        if ho < 1 or wo < 1:
            raise SpecError(f"kernel {self.kernel} does not fit an input of {h}x{w} padded by "
                            f"{self.padding}", field="kernel")
        return (n, c, ho, wo)

    def _span(self, offset: int, size: int, out_size: int) -> tuple[int, int, int]:
        """The windows lo..hi-1 (along one axis) whose cell at ``offset`` is a real
        input cell, not padding, and the input index of that cell for window lo."""
        s, p = self.stride, self.padding
        lo = max(0, -((offset - p) // s))  # the first o with s*o + offset - p >= 0
        hi = min(out_size, (size - 1 + p - offset) // s + 1)
        return lo, hi, s * lo + offset - p

    def _taps(self, in_shape, out_shape):
        """For each tap (i, j), in row-major order over the window (torch's scan order,
        which decides max-pool ties): the index of the windows it reaches, into an
        (N, C, Ho, Wo) tensor, and of the input cells it reads there."""
        s, every = self.stride, slice(None)
        for i in range(self.kernel):
            rows_lo, rows_hi, row = self._span(i, in_shape[2], out_shape[2])
            for j in range(self.kernel):
                cols_lo, cols_hi, col = self._span(j, in_shape[3], out_shape[3])
                if rows_lo >= rows_hi or cols_lo >= cols_hi:
                    continue
                windows = (every, every, slice(rows_lo, rows_hi), slice(cols_lo, cols_hi))
                cells = (every, every, slice(row, row + s * (rows_hi - rows_lo - 1) + 1, s),
                         slice(col, col + s * (cols_hi - cols_lo - 1) + 1, s))
                yield windows, cells


@register
@attrs.frozen
class MaxPool2d(_Pool2d):
    """y = the maximum of the real cells of each window (padding never wins).

    The gradient of each output goes to the one input cell that holds the maximum of
    its window; on a tie, to the first in row-major order, as torch's kernel picks
    (it keeps the running maximum on a strict ``>``). The VJP finds that cell by
    comparing each tap with the forward result, in scan order, and lets a window be
    taken only once ("free" starts at 1 and drops to 0 at the first hit).

    One difference from torch, for inputs no trained network should hold: a window
    holding NaN routes its gradient nowhere here (torch: to its last NaN).
    """

    name = "maxpool2d"
    vjps = {"x": VJP("grad_x", needs=("gout", "x", "out"))}

    def workspace(self, kernel, shapes):
        return {"hit": shapes["out"], "free": shapes["out"]} if kernel == "grad_x" else {}

    def forward(self, out, ws, x):
        out.fill_(float("-inf"))
        for windows, cells in self._taps(x.shape, out.shape):
            torch.maximum(out[windows], x[cells], out=out[windows])

    def grad_x(self, grad, ws, gout, x, out):
        hit, free = ws["hit"], ws["free"]
        grad.zero_()
        free.fill_(1)
        for windows, cells in self._taps(x.shape, out.shape):
            tap_hit = hit[windows]
            tap_hit.copy_(x[cells])  # gathered first: eq from a strided input is 3x slower
            torch.eq(tap_hit, out[windows], out=tap_hit)  # this tap holds the max ...
            tap_hit.mul_(free[windows])  # ... and no earlier tap did
            free[windows].sub_(tap_hit)
            grad[cells].addcmul_(gout[windows], tap_hit)


@register
@attrs.frozen
class AvgPool2d(_Pool2d):
    """y = the mean of each window; padding counts as zeros and in the divisor (torch's
    default ``count_include_pad=True``), so every window divides by k*k.

    Each output's gradient, divided by k*k, is added to every cell of its window.
    """

    name = "avgpool2d"
    vjps = {"x": VJP("grad_x", needs=("gout",))}

    def workspace(self, kernel, shapes):
        return {"share": shapes["out"]} if kernel == "grad_x" else {}

    def forward(self, out, ws, x):
        out.zero_()  # torch's sum starts at 0 too (so -0.0 inputs sum to +0.0 alike)
        for windows, cells in self._taps(x.shape, out.shape):
            out[windows].add_(x[cells])
        out.div_(scalar(float(self.kernel * self.kernel), out))

    def grad_x(self, grad, ws, gout):
        share = ws["share"]
        torch.div(gout, scalar(float(self.kernel * self.kernel), gout), out=share)
        grad.zero_()
        for windows, cells in self._taps(grad.shape, gout.shape):
            grad[cells].add_(share[windows])
