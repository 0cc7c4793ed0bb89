"""upsample_conv2d: nearest upsampling x2 followed by a 3x3 convolution (stride 1,
padding 1), as one op that reads the small map.

The compiler puts this op where a spec has ``upsample_nearest(scale=2)`` feeding a
``conv2d`` of that shape (``compiler/rewrite.py``); specs never name it. Its parameters
are the conv node's own (same names, shapes and gradients as the unfused pair), so a
checkpoint does not notice the fusion. What it computes is what the pair computes:

    forward       y  = conv(up(x))
    grad input    gx = each 2x2 block of conv.grad_x(gy) summed  (up's own VJP)
    grad weight   gW = conv.grad_weight(gy, up(x))

The methods below are that reference, plainly. A plan runs it as four 2x2 convolutions
of the small map, one per output phase, with no upsampled tensor: 2.25x fewer multiplies
(``kernels/upsample_conv.py``).
"""

from __future__ import annotations

import attrs
import torch

from ..errors import SpecError, excerpt
from .base import VJP, Op, Shape, check_rank
from .conv2d import Conv2d


def fusable(conv: Op) -> bool:
    """A 3x3 conv, stride 1, one zero on every side (``padding: 1`` or ``same``), no
    dilation, no groups: what the phase kernels compute."""
    return (isinstance(conv, Conv2d) and conv.kernel == (3, 3) and conv.stride == (1, 1)
            and conv.pads() == (1, 1, 1, 1) and conv.dilation == (1, 1) and conv.groups == 1)


def _check_conv(_instance, _field, conv) -> None:
    if not fusable(conv):
        raise SpecError(f"upsample_conv2d fuses a 3x3 conv2d with stride 1, padding 1 and "
                        f"groups 1, got {excerpt(conv)}", field="conv")


def _up(x: torch.Tensor) -> torch.Tensor:
    return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)


@attrs.frozen
class UpsampleConv2d(Op):
    name = "upsample_conv2d"
    inputs = ("x",)
    vjps = {
        "x": VJP("grad_x", needs=("gout", "weight")),
        "weight": VJP("grad_weight", needs=("gout", "x")),
        "bias": VJP("grad_bias", needs=("gout",)),
    }

    conv: Conv2d = attrs.field(validator=_check_conv)

    def describe(self) -> str:
        """'upsample_conv2d' and the attributes of the conv it fused."""
        return self.name + self.conv.describe()[len(self.conv.name):]

    def params(self) -> dict[str, Shape]:
        return self.conv.params()

    def fans(self) -> tuple[int, int]:
        return self.conv.fans()

    def infer(self, x: Shape, **params: Shape) -> Shape:
        check_rank(x, 4, "upsample_conv2d input (N, C, H, W)")
        n, c, h, w = x
        return self.conv.infer(x=(n, c, 2 * h, 2 * w))

    # ---- the reference kernels --------------------------------------------------
    def forward(self, out, ws, x, weight, bias=None):
        self.conv.forward(out, ws, _up(x), weight, bias)

    def grad_x(self, grad, ws, gout, weight):
        n, c, h, w = grad.shape
        big = gout.new_empty(n, c, 2 * h, 2 * w)
        self.conv.grad_x(big, ws, gout, weight)
        torch.sum(big.view(n, c, h, 2, w, 2), dim=(3, 5), out=grad)

    def grad_weight(self, grad, ws, gout, x):
        self.conv.grad_weight(grad, ws, gout, _up(x))

    def grad_bias(self, grad, ws, gout):
        torch.sum(gout, dim=(0, 2, 3), out=grad)
