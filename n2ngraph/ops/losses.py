"""Losses: scalar-valued ops that end a training graph."""

from __future__ import annotations

import math

import attrs
import torch

from ..errors import SpecError
from .base import VJP, Op, Shape, register, scalar


@register
@attrs.frozen
class MSE(Op):
    """mean((prediction - target)^2) over every element, as torch's mse_loss(mean).

    d/dprediction = 2/n (prediction - target) gout; d/dtarget is its negative.
    """

    name = "mse"
    inputs = ("prediction", "target")
    vjps = {
        "prediction": VJP("grad_prediction", needs=("gout", "prediction", "target")),
        "target": VJP("grad_target", needs=("gout", "prediction", "target")),
    }

    def infer(self, prediction: Shape, target: Shape) -> Shape:
        if tuple(prediction) != tuple(target):
            raise SpecError(f"prediction has shape {tuple(prediction)} but target has "
                            f"shape {tuple(target)}", field="in")
        return ()

    def workspace(self, kernel, shapes):
        return {"squares": shapes["prediction"]} if kernel == "forward" else {}

    def forward(self, out, ws, prediction, target):
        squares = ws["squares"]
        torch.sub(prediction, target, out=squares)
        squares.mul_(squares)
        torch.sum(squares.view(-1), dim=0, out=out)
        out.div_(scalar(float(prediction.numel()), out))

    def _grad(self, grad, gout, a, b):
        torch.sub(a, b, out=grad)
        grad.mul_(scalar(2.0 / math.prod(grad.shape), grad))
        grad.mul_(gout)

    def grad_prediction(self, grad, ws, gout, prediction, target):
        self._grad(grad, gout, prediction, target)

    def grad_target(self, grad, ws, gout, prediction, target):
        self._grad(grad, gout, target, prediction)


@register
@attrs.frozen
class L1(Op):
    """mean(|prediction - target|) over every element, as torch's l1_loss(mean).

    d/dprediction = sign(prediction - target) gout / n, so 0 where they are equal, as
    torch's; d/dtarget is its negative.
    """

    name = "l1"
    inputs = ("prediction", "target")
    vjps = {
        "prediction": VJP("grad_prediction", needs=("gout", "prediction", "target")),
        "target": VJP("grad_target", needs=("gout", "prediction", "target")),
    }

    def infer(self, prediction: Shape, target: Shape) -> Shape:
        if tuple(prediction) != tuple(target):
            raise SpecError(f"prediction has shape {tuple(prediction)} but target has "
                            f"shape {tuple(target)}", field="in")
        return ()

    def workspace(self, kernel, shapes):
        return {"distances": shapes["prediction"]} if kernel == "forward" else {}

    def forward(self, out, ws, prediction, target):
        distances = ws["distances"]
        torch.sub(prediction, target, out=distances)
        distances.abs_()
        torch.sum(distances.view(-1), dim=0, out=out)
        out.div_(scalar(float(prediction.numel()), out))

    def _grad(self, grad, gout, a, b):
        torch.sub(a, b, out=grad)
        grad.sign_()
        grad.mul_(gout)
        grad.div_(scalar(float(math.prod(grad.shape)), grad))

    def grad_prediction(self, grad, ws, gout, prediction, target):
        self._grad(grad, gout, prediction, target)

    def grad_target(self, grad, ws, gout, prediction, target):
        self._grad(grad, gout, target, prediction)
