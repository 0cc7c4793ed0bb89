"""conv_transpose2d: PyTorch's ConvTranspose2d, weight layout (in, out, kh, kw).

A transposed convolution *is* the input-gradient of a convolution: that of its
``mirror``, the unpadded conv2d from ``out_channels`` to ``in_channels`` with the same
kernel, stride and dilation, whose (out, in, kh, kw) weight is exactly this op's
(in, out, kh, kw) weight. The mirror works on the ``frame``: y before ``padding`` is
cropped from each side and ``output_padding`` added at the end, i.e. exactly the
(H-1) stride + reach rows and columns that the input pixels reach:

    forward       frame = fold(W^T @ x)    y = frame cropped or zero-extended, + bias
    grad input    gx    = W @ unfold(frame of gy)
    grad weight   gW    = sum over samples of x @ unfold(frame of gy)^T
    grad bias     gb    = gy summed over batch and space

The methods below are that reference, plainly; the kernels a plan runs
(``kernels/conv_transpose.py``) are the mirror conv's own, chosen from the same table.
"""

from __future__ import annotations

import attrs
import torch

from ..errors import SpecError
from .base import VJP, Op, Shape, attribute, check_rank, register

fold, unfold = torch.nn.functional.fold, torch.nn.functional.unfold  # the two it may use


@register
@attrs.frozen
class ConvTranspose2d(Op):
    name = "conv_transpose2d"
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
    padding: int = attribute(int, default=0, minimum=0, doc="rows/columns cropped from each side")
    output_padding: int = attribute(int, default=0, minimum=0, doc="rows/columns added at the end")
    dilation: int = attribute(int, default=1, minimum=1)
    bias: bool = attribute(bool, default=True)

    def __attrs_post_init__(self):
        if self.output_padding >= max(self.stride, self.dilation):
            raise SpecError(f"must be smaller than the stride ({self.stride}) or the dilation "
                            f"({self.dilation}), got {self.output_padding}", field="output_padding")

    # ---- shapes ----------------------------------------------------------------
    def params(self) -> dict[str, Shape]:
        shapes = {"weight": (self.in_channels, self.out_channels, self.kernel, self.kernel)}
        if self.bias:
            shapes["bias"] = (self.out_channels,)
        return shapes

    def fans(self) -> tuple[int, int]:
        """PyTorch's: its fan-in is read off weight dim 1, here ``out_channels``."""
        area = self.kernel * self.kernel
        return self.out_channels * area, self.in_channels * area

    def infer(self, x: Shape, **params: Shape) -> Shape:
        check_rank(x, 4, "conv_transpose2d input (N, C, H, W)")
        n, c, h, w = x
        if c != self.in_channels:
            raise SpecError(f"input has {c} channels, the node declares {self.in_channels}",
                            field="in_channels")
        ho, wo = (self.frame_size(size) - 2 * self.padding + self.output_padding for size in (h, w))
        if ho < 1 or wo < 1:
            raise SpecError(f"padding {self.padding} crops away the whole {ho + 2 * self.padding}"
                            f"x{wo + 2 * self.padding} output of a {h}x{w} input", field="padding")
        return (n, self.out_channels, ho, wo)

    def frame_size(self, size: int) -> int:
        """Rows (or columns) of y that input pixels reach, before padding is cropped."""
        return (size - 1) * self.stride + self.dilation * (self.kernel - 1) + 1

    def framed(self) -> bool:
        return bool(self.padding or self.output_padding)

    def overlap(self, frame: torch.Tensor, y: torch.Tensor):
        """(part of y, part of frame) that are the same pixels: y starts ``padding`` into
        the frame; either may extend past the other's end."""
        p = self.padding
        rows = max(0, min(y.shape[2], frame.shape[2] - p))
        cols = max(0, min(y.shape[3], frame.shape[3] - p))
        return y[:, :, :rows, :cols], frame[:, :, p:p + rows, p:p + cols]

    # ---- the reference kernels: the frame folded and unfolded -------------------
    def _unfolded(self, frame: torch.Tensor) -> torch.Tensor:
        return unfold(frame, self.kernel, dilation=self.dilation, stride=self.stride)

    def _frame_of(self, gout: torch.Tensor, x_shape) -> torch.Tensor:
        n, _, h, w = x_shape
        frame = gout.new_zeros(n, self.out_channels, self.frame_size(h), self.frame_size(w))
        inside, window = self.overlap(frame, gout)
        window.copy_(inside)
        return frame

    def forward(self, out, ws, x, weight, bias=None):
        h, w = x.shape[2:]
        columns = weight.view(self.in_channels, -1).t() @ x.flatten(2)
        frame = fold(columns, (self.frame_size(h), self.frame_size(w)), self.kernel,
                     dilation=self.dilation, stride=self.stride)
        out.zero_()  # rows beyond the frame: only output_padding's, bias alone
        inside, window = self.overlap(frame, out)
        inside.copy_(window)
        if bias is not None:
            out.add_(bias.view(1, -1, 1, 1))

    def grad_x(self, grad, ws, gout, weight):
        columns = self._unfolded(self._frame_of(gout, grad.shape))
        grad.copy_((weight.view(self.in_channels, -1) @ columns).view(grad.shape))

    def grad_weight(self, grad, ws, gout, x):
        per_sample = x.flatten(2) @ self._unfolded(self._frame_of(gout, x.shape)).transpose(1, 2)
        torch.sum(per_sample, dim=0, out=grad.view(self.in_channels, -1))

    def grad_bias(self, grad, ws, gout):
        torch.sum(gout, dim=(0, 2, 3), out=grad)
