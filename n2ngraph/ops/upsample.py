"""upsample_nearest: every pixel repeated ``scale`` times along height and width.

The forward is one broadcasting copy; its VJP sums each scale x scale block of the
output gradient back onto the pixel it came from.
"""

from __future__ import annotations

import attrs
import torch

from .base import VJP, Op, Shape, attribute, check_rank, register


@register
@attrs.frozen
class UpsampleNearest(Op):
    name = "upsample_nearest"
    inputs = ("x",)
    vjps = {"x": VJP("grad_x", needs=("gout",))}

    scale: int = attribute(int, minimum=1, doc="integer factor on height and width")

    def infer(self, x: Shape) -> Shape:
        check_rank(x, 4, "upsample_nearest input (N, C, H, W)")
        n, c, h, w = x
        return (n, c, h * self.scale, w * self.scale)

    def forward(self, out, ws, x):
        n, c, h, w = x.shape
        s = self.scale
        out.view(n, c, h, s, w, s).copy_(x.view(n, c, h, 1, w, 1).expand(n, c, h, s, w, s))

    def grad_x(self, grad, ws, gout):
        n, c, h, w = grad.shape
        s = self.scale
        torch.sum(gout.view(n, c, h, s, w, s), dim=(3, 5), out=grad)
