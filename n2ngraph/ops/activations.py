"""Elementwise activations. Both may run in place over their input, and both
differentiate through their *output*, so the input can be overwritten freely."""

from __future__ import annotations

import attrs
import torch

from .base import VJP, Op, Shape, register, scalar


@register
@attrs.frozen
class Relu(Op):
    """y = max(x, 0); dy/dx = 1 where y > 0, else 0 (PyTorch's choice at 0)."""

    name = "relu"
    inputs = ("x",)
    inplace = "x"
    vjps = {"x": VJP("grad_x", needs=("gout", "out"), inplace="gout")}

    def infer(self, x: Shape) -> Shape:
        return x

    def forward(self, out, ws, x):
        torch.clamp_min(x, 0, out=out)

    def workspace(self, kernel, shapes):
        return {"mask": shapes["out"]} if kernel == "grad_x" else {}

    def grad_x(self, grad, ws, gout, out):
        mask = ws["mask"]
        torch.sign(out, out=mask)  # y >= 0, so sign(y) is the 0/1 mask y > 0
        torch.mul(gout, mask, out=grad)


@register
@attrs.frozen
class Sigmoid(Op):
    """y = 1 / (1 + exp(-x)); dy/dx = y (1 - y), evaluated as PyTorch does: g (1 - y) y."""

    name = "sigmoid"
    inputs = ("x",)
    inplace = "x"
    vjps = {"x": VJP("grad_x", needs=("gout", "out"), inplace="gout")}

    def infer(self, x: Shape) -> Shape:
        return x

    def forward(self, out, ws, x):
        torch.sigmoid(x, out=out)

    def workspace(self, kernel, shapes):
        return {"one_minus_y": shapes["out"]} if kernel == "grad_x" else {}

    def grad_x(self, grad, ws, gout, out):
        one_minus_y = ws["one_minus_y"]
        torch.sub(scalar(1.0, out), out, out=one_minus_y)
        torch.mul(gout, one_minus_y, out=grad)
        grad.mul_(out)
