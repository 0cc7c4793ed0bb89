"""Ops that move values around without arithmetic: what a U-Net's skip connections
are made of."""

from __future__ import annotations

import attrs

from ..errors import SpecError
from .base import VJP, Op, Shape, check_rank, register


@register
@attrs.frozen
class Concat(Op):
    """y = [a, b] along the channel axis (dim 1), as torch.cat((a, b), dim=1).

    Each input's gradient is its own channel slice of the output gradient: a's the
    first channels, b's the last.
    """

    name = "concat"
    inputs = ("a", "b")
    vjps = {
        "a": VJP("grad_a", needs=("gout",)),
        "b": VJP("grad_b", needs=("gout",)),
    }

    def infer(self, a: Shape, b: Shape) -> Shape:
        check_rank(a, 4, "concat input a (N, C, H, W)")
        check_rank(b, 4, "concat input b (N, C, H, W)")
        (na, ca, ha, wa), (nb, cb, hb, wb) = a, b
        if (na, ha, wa) != (nb, hb, wb):
            raise SpecError(f"cannot concatenate {tuple(a)} and {tuple(b)} on channels: "
                            f"batch, height and width must agree", field="in")
        return (na, ca + cb, ha, wa)

    def forward(self, out, ws, a, b):
        channels = a.shape[1]
        out[:, :channels].copy_(a)
        out[:, channels:].copy_(b)

    def grad_a(self, grad, ws, gout):
        grad.copy_(gout[:, :grad.shape[1]])

    def grad_b(self, grad, ws, gout):
        grad.copy_(gout[:, gout.shape[1] - grad.shape[1]:])
