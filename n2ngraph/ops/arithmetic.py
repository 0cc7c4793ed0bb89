"""Elementwise arithmetic between tensors of the same shape: what skip connections
and residual outputs are made of."""

from __future__ import annotations

import attrs
import torch

from ..errors import SpecError
from .base import VJP, Op, Shape, register


@register
@attrs.frozen
class Add(Op):
    """y = a + b; the output gradient flows unchanged to both inputs."""

    name = "add"
    inputs = ("a", "b")
    inplace = "a"
    vjps = {
        "a": VJP("grad_term", needs=("gout",), inplace="gout"),
        "b": VJP("grad_term", needs=("gout",), inplace="gout"),
    }

    def infer(self, a: Shape, b: Shape) -> Shape:
        if tuple(a) != tuple(b):
            raise SpecError(f"cannot add shapes {tuple(a)} and {tuple(b)}", field="in")
        return a

    def forward(self, out, ws, a, b):
        torch.add(a, b, out=out)

    def grad_term(self, grad, ws, gout):
        if grad.data_ptr() != gout.data_ptr():
            grad.copy_(gout)


@register
@attrs.frozen
class Sub(Op):
    """y = a - b: a residual output that removes predicted noise from the input (DnCNN).
    The output gradient flows unchanged to a and negated to b."""

    name = "sub"
    inputs = ("a", "b")
    inplace = "a"
    vjps = {
        "a": VJP("grad_term", needs=("gout",), inplace="gout"),
        "b": VJP("grad_negated", needs=("gout",), inplace="gout"),
    }

    def infer(self, a: Shape, b: Shape) -> Shape:
        if tuple(a) != tuple(b):
            raise SpecError(f"cannot subtract shapes {tuple(a)} and {tuple(b)}", field="in")
        return a

    def forward(self, out, ws, a, b):
        torch.sub(a, b, out=out)

    def grad_term(self, grad, ws, gout):
        if grad.data_ptr() != gout.data_ptr():
            grad.copy_(gout)

    def grad_negated(self, grad, ws, gout):
        torch.neg(gout, out=grad)
