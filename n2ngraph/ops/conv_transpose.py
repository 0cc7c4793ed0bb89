"""conv_transpose2d: PyTorch's ConvTranspose2d, weight layout (in, out / groups, kh, kw).

A transposed convolution *is* the input-gradient of a convolution: that of its
``mirror``, the unpadded conv2d from ``out_channels`` to ``in_channels`` with the same
kernel, stride, dilation and groups, whose (out, in / groups, kh, kw) weight is exactly
this op's (in, out / groups, kh, kw) weight. The mirror works on the ``frame``: y before
``padding`` is cropped from each side and ``output_padding`` added at the end, i.e.
exactly the (H-1) stride + reach rows and columns that the input pixels reach:

    forward       frame = fold(W^T @ x)    y = frame cropped or zero-extended, + bias
    grad input    gx    = W @ unfold(frame of gy)
    grad weight   gW    = sum over samples of x @ unfold(frame of gy)^T
    grad bias     gb    = gy summed over batch and space

(each product taken per group of channels). Sizes are pairs (h, w), an int k meaning
(k, k), as in ``conv2d``. The methods below are that reference, plainly; the kernels a
plan runs (``kernels/conv_transpose.py``) are the mirror conv's own, chosen from the
same table.
"""

from __future__ import annotations

import attrs
import torch

from ..errors import SpecError
from .base import VJP, Op, Pair, Shape, attribute, check_rank, hxw, pair_attribute, register
from .conv2d import by_group, check_groups

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
    kernel: Pair = pair_attribute(minimum=1, doc="kernel size (h, w)")
    stride: Pair = pair_attribute(default=(1, 1), minimum=1)
    padding: Pair = pair_attribute(default=(0, 0), minimum=0,
                                   doc="rows/columns cropped from each side")
    output_padding: Pair = pair_attribute(default=(0, 0), minimum=0,
                                          doc="rows/columns added at the end")
    dilation: Pair = pair_attribute(default=(1, 1), minimum=1)
    groups: int = attribute(int, default=1, minimum=1,
                            doc="channel groups convolved apart (in and out channels divisible by it)")
    bias: bool = attribute(bool, default=True)

    def __attrs_post_init__(self):
        for extra, stride, dilation in zip(self.output_padding, self.stride, self.dilation):
            if extra >= max(stride, dilation):
                raise SpecError(f"must be smaller than the stride ({hxw(self.stride)}) or the "
                                f"dilation ({hxw(self.dilation)}) along each side, got "
                                f"{hxw(self.output_padding)}", field="output_padding")
        check_groups(self.groups, self.in_channels, self.out_channels)

    # ---- shapes ----------------------------------------------------------------
    def params(self) -> dict[str, Shape]:
        shapes = {"weight": (self.in_channels, self.out_channels // self.groups, *self.kernel)}
        if self.bias:
            shapes["bias"] = (self.out_channels,)
        return shapes

    def fans(self) -> tuple[int, int]:
        """PyTorch's: its fan-in is read off weight dim 1, here ``out_channels / groups``."""
        area = self.kernel[0] * self.kernel[1]
        return self.out_channels // self.groups * area, self.in_channels * area

    def infer(self, x: Shape, **params: Shape) -> Shape:
        check_rank(x, 4, "conv_transpose2d input (N, C, H, W)")
        n, c, h, w = x
        if c != self.in_channels:
            raise SpecError(f"input has {c} channels, the node declares {self.in_channels}",
                            field="in_channels")
        (ph, pw), (oh, ow) = self.padding, self.output_padding
        fh, fw = self.frame_size(h, 0), self.frame_size(w, 1)
        ho, wo = fh - 2 * ph + oh, fw - 2 * pw + ow
        if ho < 1 or wo < 1:
            raise SpecError(f"padding {hxw(self.padding)} crops away the whole {fh + oh}x{fw + ow} "
                            f"output of a {h}x{w} input", field="padding")
        return (n, self.out_channels, ho, wo)

    def frame_size(self, size: int, dim: int) -> int:
        """Rows (``dim`` 0) or columns (1) of y that input pixels reach, before padding
        is cropped."""
        return (size - 1) * self.stride[dim] + self.dilation[dim] * (self.kernel[dim] - 1) + 1

    def frame_shape(self, x_shape) -> tuple[int, int, int, int]:
        n, _, h, w = x_shape
        return (n, self.out_channels, self.frame_size(h, 0), self.frame_size(w, 1))

    def framed(self) -> bool:
        return any(self.padding) or any(self.output_padding)

    def overlap(self, frame: torch.Tensor, y: torch.Tensor):
        """(part of y, part of frame) that are the same pixels: y starts ``padding`` into
        the frame; either may extend past the other's end."""
        ph, pw = self.padding
        rows = max(0, min(y.shape[2], frame.shape[2] - ph))
        cols = max(0, min(y.shape[3], frame.shape[3] - pw))
        return y[:, :, :rows, :cols], frame[:, :, ph:ph + rows, pw:pw + cols]

    # ---- the reference kernels: the frame folded and unfolded -------------------
    def _unfolded(self, frame: torch.Tensor) -> torch.Tensor:
        """(N, groups, out/groups*kh*kw, H*W)."""
        columns = unfold(frame, self.kernel, dilation=self.dilation, stride=self.stride)
        return by_group(columns, self.groups, 1)

    def _weight(self, weight: torch.Tensor) -> torch.Tensor:
        """(groups, in/groups, out/groups*kh*kw)."""
        return weight.view(self.groups, self.in_channels // self.groups, -1)

    def _frame_of(self, gout: torch.Tensor, x_shape) -> torch.Tensor:
        frame = gout.new_zeros(self.frame_shape(x_shape))
        inside, window = self.overlap(frame, gout)
        window.copy_(inside)
        return frame

    def forward(self, out, ws, x, weight, bias=None):
        xs = by_group(x.flatten(2), self.groups, 1)
        columns = (self._weight(weight).transpose(1, 2) @ xs).flatten(1, 2)
        frame = fold(columns, self.frame_shape(x.shape)[2:], self.kernel,
                     dilation=self.dilation, stride=self.stride)
        out.zero_()  # rows beyond the frame: only output_padding's, bias alone
        inside, window = self.overlap(frame, out)
        inside.copy_(window)
        if bias is not None:
            out.add_(bias.view(1, -1, 1, 1))

    def grad_x(self, grad, ws, gout, weight):
        columns = self._unfolded(self._frame_of(gout, grad.shape))
        grad.copy_((self._weight(weight) @ columns).view(grad.shape))

    def grad_weight(self, grad, ws, gout, x):
        xs = by_group(x.flatten(2), self.groups, 1)
        per_sample = xs @ self._unfolded(self._frame_of(gout, x.shape)).transpose(2, 3)
        torch.sum(per_sample, dim=0, out=self._weight(grad))

    def grad_bias(self, grad, ws, gout):
        torch.sum(gout, dim=(0, 2, 3), out=grad)
