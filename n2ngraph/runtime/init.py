"""Parameter initialisers, seeded and device-independent.

Values are drawn on the CPU from one ``torch.Generator`` in network order and then
moved, so a seed gives the same network on every device and dtype.

- ``uniform``: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases: torch.nn's
  default for convolutions, and the uniform initialisation the seed project found best;
- ``xavier``: weights U(-a, a), a = sqrt(6 / (fan_in + fan_out)); biases 0;
- ``kaiming``: weights N(0, 2 / fan_in) (He, for ReLU nets); biases 0.
"""

from __future__ import annotations

import math

import torch

from ..compiler.spec import INITS, Spec


def initial_params(spec: Spec, method: str, seed: int, *, dtype, device) -> dict[str, torch.Tensor]:
    if method not in INITS:
        raise ValueError(f"unknown init {method!r} (known: {', '.join(INITS)})")
    gen = torch.Generator().manual_seed(seed)
    params: dict[str, torch.Tensor] = {}
    for node in spec.nodes:
        shapes = node.op.params()
        if not shapes:
            continue
        fan_in, fan_out = node.op.fans()
        for role, shape in shapes.items():
            values = _draw(method, role, shape, fan_in, fan_out, gen)
            params[f"{node.name}.{role}"] = values.to(device=device, dtype=dtype)
    return params


def _draw(method, role, shape, fan_in, fan_out, gen) -> torch.Tensor:
    def uniform(bound):
        return (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound

    if method == "uniform":
        return uniform(1 / math.sqrt(fan_in))
    if role != "weight":
        return torch.zeros(shape, dtype=torch.float64)
    if method == "xavier":
        return uniform(math.sqrt(6 / (fan_in + fan_out)))
    return torch.randn(shape, generator=gen, dtype=torch.float64) * math.sqrt(2 / fan_in)
