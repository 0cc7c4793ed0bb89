"""Optimizers: update rules applied in place to the Program's parameters.

Each reproduces the arithmetic of PyTorch's optimizer of the same name, operation for
operation (same ops, same order), so a parity test can ask for agreement to the last
few ulps; each allocates its state once, up front.
"""

from __future__ import annotations

from typing import Mapping

import torch

from .ops import scalar
from .spec import OptimizerSpec


class SGD:
    """PyTorch's SGD: weight decay, momentum with dampening, Nesterov.

        g = grad + weight_decay * p
        b = g                               on the first step
        b = momentum * b + (1 - dampening) g  afterwards
        g = g + momentum * b  (nesterov)  or  g = b
        p = p - lr * g
    """

    def __init__(self, params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor],
                 config: OptimizerSpec):
        if config.nesterov and (config.momentum <= 0 or config.dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        self.config = config
        self.params, self.grads = params, grads
        self.steps = 0
        self.momentum = {k: torch.empty_like(p) for k, p in params.items()} if config.momentum else {}
        needs_scratch = config.weight_decay or config.nesterov
        self.scratch = {k: torch.empty_like(p) for k, p in params.items()} if needs_scratch else {}

    def step(self) -> None:
        c = self.config
        for name, param in self.params.items():
            g = self.grads[name]
            if c.weight_decay:
                g = torch.add(g, param, alpha=c.weight_decay, out=self.scratch[name])
            if c.momentum:
                buf = self.momentum[name]
                if self.steps == 0:
                    buf.copy_(g)
                else:
                    buf.mul_(scalar(c.momentum, buf)).add_(g, alpha=1 - c.dampening)
                if c.nesterov:
                    g = torch.add(g, buf, alpha=c.momentum, out=self.scratch[name])
                else:
                    g = buf
            param.add_(g, alpha=-c.lr)
        self.steps += 1

    def state_dict(self) -> dict:
        return {"steps": self.steps, "momentum": {k: v.clone() for k, v in self.momentum.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        for name, value in state.get("momentum", {}).items():
            self.momentum[name].copy_(value)
