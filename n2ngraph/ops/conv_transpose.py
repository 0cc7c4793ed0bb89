"""conv_transpose2d: PyTorch's ConvTranspose2d, weight layout (in, out, kh, kw).

A transposed convolution *is* the input-gradient of a convolution, so this op owns no
GEMM or im2col of its own: every kernel is a kernel of its ``mirror``, the unpadded
conv2d from ``out_channels`` to ``in_channels`` with the same kernel, stride and
dilation, whose (out, in, kh, kw) weight is exactly this op's (in, out, kh, kw) weight.
The mirror works on the ``frame``: y before ``padding`` is cropped from each side and
``output_padding`` added at the end, i.e. exactly the M = (H-1) stride + reach rows and
columns that the input pixels reach:

    forward       frame = mirror.grad_x(gout=x);  y = frame cropped/zero-extended (+ bias)
    grad input    gx    = mirror.forward(x=frame of gy)
    grad weight   gW    = mirror.grad_weight(gout=x, x=frame of gy)
    grad bias     gb    = sum of gy over batch and space

Without padding and output_padding the frame is y itself and no copy is made.
"""

from __future__ import annotations

import attrs
import torch

from ..errors import SpecError
from .base import VJP, Op, Shape, attribute, check_rank, register
from .conv2d import Conv2d

_FRAME = "transpose_frame"  # our workspace, kept apart from the mirror's names


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

    @property
    def mirror(self) -> Conv2d:
        return Conv2d(self.out_channels, self.in_channels, self.kernel, stride=self.stride,
                      dilation=self.dilation, bias=False, keep_columns=False)

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

    def _out_size(self, size: int) -> int:
        reach = self.dilation * (self.kernel - 1) + 1
        return (size - 1) * self.stride - 2 * self.padding + reach + self.output_padding

    def infer(self, x: Shape, **params: Shape) -> Shape:
        check_rank(x, 4, "conv_transpose2d input (N, C, H, W)")
        n, c, h, w = x
        if c != self.in_channels:
            raise SpecError(f"input has {c} channels, the node declares {self.in_channels}",
                            field="in_channels")
        ho, wo = self._out_size(h), self._out_size(w)
        if ho < 1 or wo < 1:
            raise SpecError(f"padding {self.padding} crops away the whole {ho + 2 * self.padding}"
                            f"x{wo + 2 * self.padding} output of a {h}x{w} input", field="padding")
        return (n, self.out_channels, ho, wo)

    def _frame_size(self, size: int) -> int:
        """Rows (or columns) of y that input pixels reach, before padding is cropped."""
        return (size - 1) * self.stride + self.dilation * (self.kernel - 1) + 1

    def _framed(self) -> bool:
        return bool(self.padding or self.output_padding)

    def workspace(self, kernel: str, shapes: dict[str, Shape]) -> dict[str, Shape]:
        if kernel == "grad_bias":
            return {}
        n, c, h, w = shapes["x"]
        frame = (n, self.out_channels, self._frame_size(h), self._frame_size(w))
        mirrored = {"x": frame, "weight": shapes["weight"], "out": shapes["x"]}
        mirror_kernel = {"forward": "grad_x", "grad_x": "forward", "grad_weight": "grad_weight"}
        scratch = dict(self.mirror.workspace(mirror_kernel[kernel], mirrored))
        if self._framed():
            scratch[_FRAME] = frame
        return scratch

    # ---- kernels ---------------------------------------------------------------
    def forward(self, out, ws, x, weight, bias=None):
        frame = ws[_FRAME] if self._framed() else out
        self.mirror.grad_x(frame, ws, gout=x, weight=weight)
        if self._framed():
            out.zero_()  # rows beyond the frame: only output_padding's, bias alone
            inside, window = self._overlap(frame, out)
            inside.copy_(window)
        if bias is not None:
            out.add_(bias.view(1, -1, 1, 1))

    def grad_x(self, grad, ws, gout, weight):
        self.mirror.forward(grad, ws, x=self._frame_of(gout, ws), weight=weight)

    def grad_weight(self, grad, ws, gout, x):
        self.mirror.grad_weight(grad, ws, gout=x, x=self._frame_of(gout, ws))

    def grad_bias(self, grad, ws, gout):
        torch.sum(gout, dim=(0, 2, 3), out=grad)

    # ---- the frame -------------------------------------------------------------
    def _overlap(self, frame: torch.Tensor, y: torch.Tensor):
        """(part of y, part of frame) that are the same pixels: y starts ``padding`` into
        the frame; either may extend past the other's end."""
        p = self.padding
        rows = max(0, min(y.shape[2], frame.shape[2] - p))
        cols = max(0, min(y.shape[3], frame.shape[3] - p))
        return y[:, :, :rows, :cols], frame[:, :, p:p + rows, p:p + cols]

    def _frame_of(self, gout: torch.Tensor, ws) -> torch.Tensor:
        if not self._framed():
            return gout
        frame = ws[_FRAME]
        frame.zero_()
        inside, window = self._overlap(frame, gout)
        window.copy_(inside)
        return frame
