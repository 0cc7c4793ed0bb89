"""Losses: scalar-valued ops that end a training graph."""

from __future__ import annotations

import math

import attrs
import torch

from ..errors import SpecError
from .base import VJP, Op, Shape, register, scalar


class _MeanLoss(Op):
    """What both losses share: a prediction and a target of one shape, a scalar mean
    over every element, one scratch tensor for the forward's elementwise terms, and
    gradients w.r.t. either input from one rule (``_grad(grad, gout, a, b)`` is the
    gradient w.r.t. ``a`` of the loss of a - b)."""

    inputs = ("prediction", "target")
    mean_over_elements = True  # a batch's loss and gradients are its parts' weighted by size
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
        return {"terms": shapes["prediction"]} if kernel == "forward" else {}

    def _mean(self, out, terms):
        torch.sum(terms.view(-1), dim=0, out=out)
        out.div_(scalar(float(terms.numel()), out))

    def grad_prediction(self, grad, ws, gout, prediction, target):
        self._grad(grad, gout, prediction, target)

    def grad_target(self, grad, ws, gout, prediction, target):
        self._grad(grad, gout, target, prediction)


@register
@attrs.frozen
class MSE(_MeanLoss):
    """mean((prediction - target)^2) over every element, as torch's mse_loss(mean).

    d/dprediction = 2/n (prediction - target) gout; d/dtarget is its negative.
    """

    name = "mse"

    def forward(self, out, ws, prediction, target):
        squares = ws["terms"]
        torch.sub(prediction, target, out=squares)
        squares.mul_(squares)
        self._mean(out, squares)

    def _grad(self, grad, gout, a, b):
        torch.sub(a, b, out=grad)
        grad.mul_(scalar(2.0 / math.prod(grad.shape), grad))
        grad.mul_(gout)


@register
@attrs.frozen
class L1(_MeanLoss):
    """mean(|prediction - target|) over every element, as torch's l1_loss(mean).

    d/dprediction = sign(prediction - target) gout / n, so 0 where they are equal, as
    torch's; d/dtarget is its negative.
    """

    name = "l1"

    def forward(self, out, ws, prediction, target):
        distances = ws["terms"]
        torch.sub(prediction, target, out=distances)
        distances.abs_()
        self._mean(out, distances)

    def _grad(self, grad, gout, a, b):
        torch.sub(a, b, out=grad)
        grad.sign_()
        grad.mul_(gout)
        grad.div_(scalar(float(math.prod(grad.shape)), grad))
