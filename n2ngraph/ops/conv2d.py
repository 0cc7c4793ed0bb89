"""conv2d: 2-D cross-correlation, PyTorch's weight layout (out, in / groups, kh, kw).

    y[n, o, i, j] = bias[o] + sum over c, a, b of W[o, c, a, b] x[n, c', i', j']
    i' = sh i + dh a - top,   j' = sw j + dw b - left

with c' the c-th input channel of o's group (all of them when ``groups`` is 1).
With ``col`` the unfolded input (every window as a column: C*kh*kw rows, one column per
output pixel), that is one matrix product per sample and group, and so are its
derivatives:

    forward      y  = W(O, C*kh*kw) @ col + bias
    grad x       gx = fold(W^T @ gy)           (each column added back where it came from)
    grad weight  gW = sum over samples of gy @ col^T
    grad bias    gb = gy summed over batch and space

Sizes are pairs (h, w), as torch's: a spec or a caller may write an int k for (k, k).
``padding`` is a pair of zeros added on both sides of each dimension, or ``same``
(torch's: stride 1 and the output as large as the input; an odd total puts the extra
zero at the bottom and right); ``pads()`` says which, as (top, bottom, left, right).

The methods below compute exactly that, plainly (``nn.functional.unfold`` and ``fold``,
allocating as they go): the reference every conv kernel is tested against. What a
compiled plan runs is chosen by ``compiler/lower.py`` from ``kernels/table.py``: GEMMs
that unfold the input side, the output side or neither, in tiles sized for the device,
into preallocated workspaces. ``unfold``, ``tile`` and ``keep_columns`` are hints to that
choice; they never change a result.
"""

from __future__ import annotations

import attrs
import torch

from ..errors import SpecError
from .base import (VJP, Op, Pair, Shape, attribute, check_rank, hxw, pair_attribute, register,
                   window_out_size)

fold, unfold = torch.nn.functional.fold, torch.nn.functional.unfold  # the two it may use

SIDES = ("auto", "input", "output", "none")
Pads = tuple[int, int, int, int]


def same_pads(kernel: Pair, dilation: Pair) -> Pads:
    """torch's ``padding="same"`` at stride 1: each dimension padded by its window's
    reach less one, half before, the odd one out after."""
    (kh, kw), (dh, dw) = kernel, dilation
    th, tw = dh * (kh - 1), dw * (kw - 1)
    return (th // 2, th - th // 2, tw // 2, tw - tw // 2)


def zero_padded(x: torch.Tensor, pads: Pads) -> torch.Tensor:
    """x inside a frame of zeros (top, bottom, left, right), by plain tensor ops."""
    top, bottom, left, right = pads
    if not any(pads):
        return x
    n, c, h, w = x.shape
    padded = x.new_zeros(n, c, top + h + bottom, left + w + right)
    padded[:, :, top:top + h, left:left + w] = x
    return padded


def by_group(t: torch.Tensor, groups: int, dim: int) -> torch.Tensor:
    """``t`` with dimension ``dim`` split into (groups, the rest)."""
    return t.unflatten(dim, (groups, t.shape[dim] // groups))


@register
@attrs.frozen
class Conv2d(Op):
    name = "conv2d"
    inputs = ("x",)
    vjps = {
        "x": VJP("grad_x", needs=("gout", "weight")),
        "weight": VJP("grad_weight", needs=("gout", "x")),
        "bias": VJP("grad_bias", needs=("gout",)),
    }

    in_channels: int = attribute(int, minimum=1, doc="channels of the input")
    out_channels: int = attribute(int, minimum=1, doc="channels of the output")
    kernel: Pair = pair_attribute(minimum=1, doc="kernel size (h, w)")
    stride: Pair = pair_attribute(default=(1, 1), minimum=1)
    padding: Pair | str = pair_attribute(default=(0, 0), minimum=0, words=("same", "valid"),
                                         doc="zeros on both sides of each dimension, or 'same'")
    dilation: Pair = pair_attribute(default=(1, 1), minimum=1)
    groups: int = attribute(int, default=1, minimum=1,
                            doc="channel groups convolved apart (in and out channels divisible by it)")
    bias: bool = attribute(bool, default=True)
    # hints to the kernel choice (kernels/table.py), never to the result
    unfold: str = attribute(str, default="auto", choices=SIDES,
                            doc="which side the GEMMs unfold: input, output, none or auto")
    tile: int = attribute(int, default=0, minimum=0,
                          doc="output pixels per GEMM tile; 0: sized for the device")
    keep_columns: bool = attribute(bool, default=True,
                                   doc="keep the forward's column matrix for the weight "
                                       "gradient where one tile holds the batch")

    def __attrs_post_init__(self):
        if self.padding == "valid":  # torch's word for no padding
            object.__setattr__(self, "padding", (0, 0))
        if self.padding == "same" and self.stride != (1, 1):
            raise SpecError(f"'same' needs stride 1 (as in torch), got stride {hxw(self.stride)}",
                            field="padding")
        check_groups(self.groups, self.in_channels, self.out_channels)

    def pads(self) -> Pads:
        """Zeros added (top, bottom, left, right)."""
        if self.padding == "same":
            return same_pads(self.kernel, self.dilation)
        ph, pw = self.padding
        return (ph, ph, pw, pw)

    def params(self) -> dict[str, Shape]:
        shapes = {"weight": (self.out_channels, self.in_channels // self.groups, *self.kernel)}
        if self.bias:
            shapes["bias"] = (self.out_channels,)
        return shapes

    def fans(self) -> tuple[int, int]:
        """torch's: weight dim 1 (in / groups) and dim 0 times the kernel's area."""
        area = self.kernel[0] * self.kernel[1]
        return self.in_channels // self.groups * area, self.out_channels * area

    def infer(self, x: Shape, **params: Shape) -> Shape:
        check_rank(x, 4, "conv2d input (N, C, H, W)")
        n, c, h, w = x
        if c != self.in_channels:
            raise SpecError(f"input has {c} channels, the node declares {self.in_channels}",
                            field="in_channels")
        if self.unfold in ("output", "none") and (self.stride != (1, 1) or self.groups != 1):
            raise SpecError(f"unfold: {self.unfold} needs stride 1 and groups 1", field="unfold")
        top, bottom, left, right = self.pads()
        ho = window_out_size(h + top + bottom, self.kernel[0], self.stride[0], 0, self.dilation[0])
        wo = window_out_size(w + left + right, self.kernel[1], self.stride[1], 0, self.dilation[1])
        if ho < 1 or wo < 1:
            raise SpecError(f"kernel {hxw(self.kernel)} (dilation {hxw(self.dilation)}) does not "
                            f"fit an input of {h}x{w} padded by {hxw(self.padding)}", field="kernel")
        return (n, self.out_channels, ho, wo)

    # ---- the reference kernels --------------------------------------------------
    def _columns(self, x: torch.Tensor) -> torch.Tensor:
        """(N, groups, C/groups*kh*kw, Ho*Wo): every window of x as a column."""
        columns = unfold(zero_padded(x, self.pads()), self.kernel, dilation=self.dilation,
                         stride=self.stride)
        return by_group(columns, self.groups, 1)

    def _weight(self, weight: torch.Tensor) -> torch.Tensor:
        """(groups, O/groups, C/groups*kh*kw)."""
        return weight.view(self.groups, self.out_channels // self.groups, -1)

    def forward(self, out, ws, x, weight, bias=None):
        y = self._weight(weight) @ self._columns(x)
        if bias is not None:
            y += bias.view(1, self.groups, -1, 1)
        out.copy_(y.view(out.shape))

    def grad_x(self, grad, ws, gout, weight):
        gy = by_group(gout.flatten(2), self.groups, 1)
        columns = (self._weight(weight).transpose(1, 2) @ gy).flatten(1, 2)
        n, c, h, w = grad.shape
        top, bottom, left, right = self.pads()
        padded = fold(columns, (top + h + bottom, left + w + right), self.kernel,
                      dilation=self.dilation, stride=self.stride)
        grad.copy_(padded[:, :, top:top + h, left:left + w])

    def grad_weight(self, grad, ws, gout, x):
        gy = by_group(gout.flatten(2), self.groups, 1)
        per_sample = gy @ self._columns(x).transpose(2, 3)
        torch.sum(per_sample, dim=0, out=self._weight(grad))

    def grad_bias(self, grad, ws, gout):
        torch.sum(gout, dim=(0, 2, 3), out=grad)


def check_groups(groups: int, in_channels: int, out_channels: int) -> None:
    if in_channels % groups or out_channels % groups:
        raise SpecError(f"must divide in_channels ({in_channels}) and out_channels "
                        f"({out_channels}), got {groups}", field="groups")
