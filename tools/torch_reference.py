"""The oracle: any n2ngraph spec rebuilt from torch.nn modules, run by torch.autograd.

Module names are the spec's node names, so ``state_dict`` keys match n2ngraph's and
weights move between the two with ``load_state_dict``.
"""

from __future__ import annotations

import torch
from torch import nn

from n2ngraph.spec import Spec


class _Add(nn.Module):
    def forward(self, a, b):
        return a + b


def _module(op) -> nn.Module:
    if op.name == "conv2d":
        return nn.Conv2d(op.in_channels, op.out_channels, op.kernel, stride=op.stride,
                         padding=op.padding, dilation=op.dilation, bias=op.bias)
    if op.name == "relu":
        return nn.ReLU()
    if op.name == "sigmoid":
        return nn.Sigmoid()
    if op.name == "upsample_nearest":
        return nn.Upsample(scale_factor=op.scale, mode="nearest")
    if op.name == "mse":
        return nn.MSELoss()
    if op.name == "add":
        return _Add()
    raise NotImplementedError(op.name)


class TorchNet(nn.Module):
    def __init__(self, spec: Spec):
        super().__init__()
        self.spec = spec
        for node in spec.nodes:
            self.add_module(node.name, _module(node.op))

    def values(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        values = dict(zip(self.spec.input_names, inputs))
        for node in self.spec.nodes:
            if all(s in values for s in node.inputs):
                values[node.name] = getattr(self, node.name)(*(values[s] for s in node.inputs))
        return values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.values(x)[self.spec.output]

    def objective(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.values(*inputs)[self.spec.loss]
