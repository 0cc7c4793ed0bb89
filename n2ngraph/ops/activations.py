"""Elementwise activations. All may run in place over their input, and all
differentiate through their *output*, so the input can be overwritten freely."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch

from .base import VJP, Op, Shape, attribute, register, scalar


class _Activation(Op):
    """What every activation shares: one input it may overwrite, the output's shape,
    a VJP that reads the output (not the input) and may overwrite the incoming
    gradient, and a scratch tensor of the output's shape per kernel that needs one."""

    inputs = ("x",)
    inplace = "x"
    vjps = {"x": VJP("grad_x", needs=("gout", "out"), inplace="gout")}
    scratch: ClassVar[dict[str, str]] = {}  # kernel -> its scratch tensor's name

    def infer(self, x: Shape) -> Shape:
        return x

    def workspace(self, kernel, shapes):
        name = self.scratch.get(kernel)
        return {name: shapes["out"]} if name else {}


@register
@attrs.frozen
class Relu(_Activation):
    """y = max(x, 0); dy/dx = 1 where y > 0, else 0 (PyTorch's choice at 0)."""

    name = "relu"
    scratch = {"grad_x": "mask"}

    def forward(self, out, ws, x):
        torch.clamp_min(x, 0, out=out)

    def grad_x(self, grad, ws, gout, out):
        mask = ws["mask"]
        torch.sign(out, out=mask)  # y >= 0, so sign(y) is the 0/1 mask y > 0
        torch.mul(gout, mask, out=grad)


@register
@attrs.frozen
class Sigmoid(_Activation):
    """y = 1 / (1 + exp(-x)); dy/dx = y (1 - y), evaluated as PyTorch does: g (1 - y) y."""

    name = "sigmoid"
    scratch = {"grad_x": "one_minus_y"}

    def forward(self, out, ws, x):
        torch.sigmoid(x, out=out)

    def grad_x(self, grad, ws, gout, out):
        one_minus_y = ws["one_minus_y"]
        torch.sub(scalar(1.0, out), out, out=one_minus_y)
        torch.mul(gout, one_minus_y, out=grad)
        grad.mul_(out)


@register
@attrs.frozen
class LeakyRelu(_Activation):
    """y = x where x > 0, else slope * x; dy/dx = 1 where x > 0, else slope (so slope at
    x == 0, as torch's leaky_relu backward has it).

    The slope must be >= 0: then y > 0 exactly where x > 0, so the gradient can be read
    off the output and the input may be overwritten (torch refuses an in-place backward
    with a negative slope for the same reason).

    Neither kernel builds a boolean mask (it would allocate): the forward takes
    max(x, slope x) for slope <= 1, else min(x, slope x), and the VJP turns a 0/1
    comparison into the factor 1 or slope with a clamp. Both are bit-identical to
    torch's ``x > 0 ? x : x * slope`` and ``x > 0 ? g : g * slope``.
    """

    name = "leaky_relu"
    scratch = {"forward": "scaled", "grad_x": "factor"}

    negative_slope: float = attribute(float, default=0.01, minimum=0,
                                      doc="gradient for x <= 0, as torch's (default 0.01)")

    def forward(self, out, ws, x):
        scaled = ws["scaled"]
        torch.mul(x, scalar(float(self.negative_slope), x), out=scaled)
        pick = torch.maximum if self.negative_slope <= 1 else torch.minimum
        pick(x, scaled, out=out)

    def grad_x(self, grad, ws, gout, out):
        factor, slope, zero = ws["factor"], float(self.negative_slope), scalar(0.0, out)
        if slope <= 1:
            torch.gt(out, zero, out=factor)  # 1 where x > 0, else 0 ...
            factor.clamp_min_(slope)  # ... and that 0 becomes the slope
        else:
            torch.le(out, zero, out=factor)  # 1 where x <= 0, else 0 ...
            factor.mul_(scalar(slope, factor)).clamp_min_(1.0)  # ... the slope there, 1 elsewhere
        torch.mul(gout, factor, out=grad)


@register
@attrs.frozen
class Tanh(_Activation):
    """y = tanh(x); dy/dx = 1 - y^2, evaluated as torch does: g (1 - y y)."""

    name = "tanh"
    scratch = {"grad_x": "one_minus_y2"}

    def forward(self, out, ws, x):
        torch.tanh(x, out=out)

    def grad_x(self, grad, ws, gout, out):
        one_minus_y2 = ws["one_minus_y2"]
        torch.mul(out, out, out=one_minus_y2)
        torch.sub(scalar(1.0, out), one_minus_y2, out=one_minus_y2)
        torch.mul(gout, one_minus_y2, out=grad)
