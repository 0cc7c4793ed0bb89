"""Ops the compiler inserts into the backward program; a spec never names them.

``seed`` starts reverse mode: d loss / d loss = 1. ``accumulate`` sums the gradient
contributions of a value read by several nodes (fan-out, skip connections).
"""

from __future__ import annotations

import attrs
import torch

from .base import Op, Shape


@attrs.frozen
class Seed(Op):
    name = "seed"
    inputs = ()

    shape: tuple = ()

    def infer(self) -> Shape:
        return self.shape

    def forward(self, out, ws):
        out.fill_(1)


@attrs.frozen
class Accumulate(Op):
    name = "accumulate"
    inplace = "t0"

    count: int = 2

    @property
    def inputs(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(f"t{i}" for i in range(self.count))

    def infer(self, **terms: Shape) -> Shape:
        return next(iter(terms.values()))

    def forward(self, out, ws, **terms):
        first, second, *rest = terms.values()
        torch.add(first, second, out=out)
        for term in rest:
            out.add_(term)
