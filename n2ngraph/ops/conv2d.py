"""conv2d: 2-D cross-correlation, PyTorch's weight layout (out, in, kh, kw).

    y[n, o, i, j] = bias[o] + sum over c, a, b of W[o, c, a, b] x[n, c, s i + d a - p, s j + d b - p]

With ``col`` the unfolded input (every window as a column: C*k*k rows, one column per
output pixel), that is one matrix product per sample, and so are its derivatives:

    forward      y  = W(O, C*k*k) @ col + bias
    grad x       gx = fold(W^T @ gy)           (each column added back where it came from)
    grad weight  gW = sum over samples of gy @ col^T
    grad bias    gb = gy summed over batch and space

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
from .base import VJP, Op, Shape, attribute, check_rank, register, window_out_size

fold, unfold = torch.nn.functional.fold, torch.nn.functional.unfold  # the two it may use

SIDES = ("auto", "input", "output", "none")


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
    kernel: int = attribute(int, minimum=1, doc="square kernel size")
    stride: int = attribute(int, default=1, minimum=1)
    padding: int = attribute(int, default=0, minimum=0, doc="zeros on each side")
    dilation: int = attribute(int, default=1, minimum=1)
    bias: bool = attribute(bool, default=True)
    # hints to the kernel choice (kernels/table.py), never to the result
    unfold: str = attribute(str, default="auto", choices=SIDES,
                            doc="which side the GEMMs unfold: input, output, none or auto")
    tile: int = attribute(int, default=0, minimum=0,
                          doc="output pixels per GEMM tile; 0: sized for the device")
    keep_columns: bool = attribute(bool, default=True,
                                   doc="keep the forward's column matrix for the weight "
                                       "gradient where one tile holds the batch")

    def params(self) -> dict[str, Shape]:
        shapes = {"weight": (self.out_channels, self.in_channels, self.kernel, self.kernel)}
        if self.bias:
            shapes["bias"] = (self.out_channels,)
        return shapes

    def fans(self) -> tuple[int, int]:
        area = self.kernel * self.kernel
        return self.in_channels * area, self.out_channels * area

    def infer(self, x: Shape, **params: Shape) -> Shape:
        check_rank(x, 4, "conv2d input (N, C, H, W)")
        n, c, h, w = x
        if c != self.in_channels:
            raise SpecError(f"input has {c} channels, the node declares {self.in_channels}",
                            field="in_channels")
        if self.unfold in ("output", "none") and self.stride != 1:
            raise SpecError(f"unfold: {self.unfold} needs stride 1", field="unfold")
        ho, wo = (window_out_size(size, self.kernel, self.stride, self.padding, self.dilation)
                  for size in (h, w))
        if ho < 1 or wo < 1:
            raise SpecError(f"kernel {self.kernel} (dilation {self.dilation}) does not fit an "
                            f"input of {h}x{w} padded by {self.padding}", field="kernel")
        return (n, self.out_channels, ho, wo)

    # ---- the reference kernels --------------------------------------------------
    def _columns(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C*k*k, Ho*Wo): every window of x as a column."""
        return unfold(x, self.kernel, dilation=self.dilation, padding=self.padding,
                      stride=self.stride)

    def forward(self, out, ws, x, weight, bias=None):
        y = weight.view(self.out_channels, -1) @ self._columns(x)
        if bias is not None:
            y += bias.view(1, -1, 1)
        out.copy_(y.view(out.shape))

    def grad_x(self, grad, ws, gout, weight):
        columns = weight.view(self.out_channels, -1).t() @ gout.flatten(2)
        grad.copy_(fold(columns, grad.shape[2:], self.kernel, dilation=self.dilation,
                        padding=self.padding, stride=self.stride))

    def grad_weight(self, grad, ws, gout, x):
        per_sample = gout.flatten(2) @ self._columns(x).transpose(1, 2)
        torch.sum(per_sample, dim=0, out=grad.view(self.out_channels, -1))

    def grad_bias(self, grad, ws, gout):
        torch.sum(gout, dim=(0, 2, 3), out=grad)
