"""A training batch split across CPU threads.

On a CPU with several threads, a batch big enough runs as several parts, each a plan of
its own run on one thread, the threads side by side: kernels of part size stay in cache
and need no OpenMP fork and join. This is exact only when the loss is a mean over every
element, since the batch's loss and gradients are then the parts' weighted by their
sizes; each part writes its gradients into buffers of its own, added up afterwards.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Mapping

import torch

from ..compiler.spec import Spec
from ..ops import scalar
from .flat import packed_like, zipped
from .plans import Shape

Part = tuple[int, int]  # (start, stop) in the batch

PART_PIXELS = 2**14
"""Pixels (batch x height x width) a batch part holds at least. Below that a part's
kernels are too small to pay for a thread of their own: a small batch runs fastest
whole, and a large one fastest as a few parts per thread rather than many small ones.
The measurements behind the number are in docs/performance.md, 'Why the tuning
constants are what they are'."""

PARTS_PER_THREAD = 4


def batch_parts(spec: Spec, device: torch.device, shapes: Mapping[str, Shape]) -> list[Part]:
    """[(start, stop)]: the parts a training batch of these shapes runs as: at least two
    parts of ``PART_PIXELS`` pixels, at most ``PARTS_PER_THREAD`` per thread; the whole
    batch on one thread, on a GPU, or when the loss is not a mean over every element."""
    n, _, h, w = shapes[spec.inputs[0].name]
    threads = torch.get_num_threads()
    if threads < 2 or device.type != "cpu" or not loss_is_a_mean(spec):
        return [(0, n)]
    count = min(n, PARTS_PER_THREAD * threads, n * h * w // PART_PIXELS)
    if count < 2:
        return [(0, n)]
    bounds = [n * i // count for i in range(count + 1)]
    return list(zip(bounds, bounds[1:]))


def loss_is_a_mean(spec: Spec) -> bool:
    loss = spec.loss
    return loss is not None and loss not in spec.input_names and \
        getattr(spec.node(loss).op, "mean_over_elements", False)


class PartGradients:
    """Each part's own gradient buffers, so that parts run side by side never write one
    tensor, and the batch's gradients made from them."""

    def __init__(self, grads: Mapping[str, torch.Tensor]):
        self.grads = grads
        self.parts: list[dict[str, torch.Tensor]] = []
        self.sums: list[tuple[torch.Tensor, list[torch.Tensor]]] = []  # (batch's, parts')

    def of(self, part: int) -> dict[str, torch.Tensor]:
        """Part ``part``'s gradients, made on first use with those of the parts before
        it. Not for the parts' threads: growing the list from two at once could leave a
        sum without a part, so ``run_in_parts`` makes them all before it starts."""
        if len(self.parts) <= part:
            while len(self.parts) <= part:
                self.parts.append(packed_like(self.grads))
            self.sums = [(g, parts) for g, *parts in zipped(self.grads, *self.parts)]
        return self.parts[part]

    def add_up(self, weights: list[float]) -> None:
        """The batch's gradients: the first ``len(weights)`` parts', so weighted."""
        for grad, of_parts in self.sums:
            torch.mul(of_parts[0], scalar(weights[0], grad), out=grad)
            for part in range(1, len(weights)):
                grad.add_(of_parts[part], alpha=weights[part])


def run_in_parts(parts: list[Part], run_part: Callable[[int], float],
                 gradients: PartGradients) -> float:
    """Runs ``run_part(i)`` (part i's plan, writing ``gradients.of(i)``; returns its
    loss) for every part, each on a thread of the pool with one torch thread, then adds
    the parts' gradients up; returns the batch's loss."""
    threads = torch.get_num_threads()
    gradients.of(len(parts) - 1)  # made here, not by the threads at once

    def run(part: int) -> float:
        torch.set_num_threads(1)
        return run_part(part)

    try:
        losses = list(_pool(threads).map(run, range(len(parts))))
    finally:
        torch.set_num_threads(threads)
    n = parts[-1][1]
    weights = [(hi - lo) / n for lo, hi in parts]
    gradients.add_up(weights)
    return sum(w * loss for w, loss in zip(weights, losses))


_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool(threads: int) -> ThreadPoolExecutor:
    """One pool per thread count, kept for the process: a step starts no thread."""
    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="n2ngraph-part")
    return _POOLS[threads]
