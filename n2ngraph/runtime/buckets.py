"""Gradient buckets: a data-parallel step sends its gradients while backward still runs.

Backward writes the gradients of the last layers first. The flat gradient buffer holds
the parameters in network order, so its tail is complete long before its head: cut into
a few contiguous buckets from the tail, each bucket can be sent (an async all_reduce,
distributed.py) right after the kernel that writes the last of its gradients, and its
communication overlaps the kernels that write the rest. The step then waits for every
bucket before clipping and the optimizer read the buffer. Each element is summed by
the same all_reduce as without buckets, so the result is the same to the bit.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import torch

from .distributed import Ranks
from .flat import flat_view

BUCKETS = 4
"""Buckets a gradient buffer is cut into, about equal in size: few, since each is one
round trip; more than one, so that the first leaves while backward still runs."""


class GradientBuckets:
    """The buckets of one training plan's gradients, and when each can leave.

    ``writers`` maps each parameter to the index, in the plan's schedule, of the kernel
    that writes its gradient; ``after`` maps kernel indices to the launches that follow
    them (``Executable.run(after=...)``)."""

    def __init__(self, ranks: Ranks, grads: Mapping[str, torch.Tensor], writers: Mapping[str, int],
                 count: int = BUCKETS):
        self.ranks = ranks
        self.buckets = _cut(grads, writers, count)  # [(flat slice, ready after kernel i)]
        self.after: dict[int, Callable[[], None]] = {}
        for bucket, ready in self.buckets:
            previous = self.after.get(ready)
            self.after[ready] = _chained(previous, lambda b=bucket: self._launch(b))
        self._work: list = []

    def _launch(self, bucket: torch.Tensor) -> None:
        bucket.mul_(1.0 / self.ranks.size)  # the mean of the equal shares' gradients
        self._work.append(self.ranks.launch_sum(bucket, "summing the gradients"))

    def finish(self, loss: float, rows: int) -> float:
        """The global batch's loss; returns once every bucket has been summed."""
        ranks, work, self._work = self.ranks, self._work, []
        if len(work) != len(self.buckets):
            raise RuntimeError(f"{len(work)} of {len(self.buckets)} gradient buckets were sent")
        ranks.check_equal_shares(rows)
        total = ranks.total([loss / ranks.size], self.buckets[0][0].device, "summing the loss")[0]
        for w in work:
            ranks.wait(w, "summing the gradients")
        return total


def bucketable(grads: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``grads`` are packed into one flat buffer (buckets are slices of it)."""
    return bool(grads) and flat_view(list(grads.values())) is not None


def _cut(grads: Mapping[str, torch.Tensor], writers: Mapping[str, int],
         count: int) -> list[tuple[torch.Tensor, int]]:
    """Contiguous slices of the flat buffer, from its tail, each of about 1/count of it
    and cut between parameters, with the last kernel index writing into each."""
    names = list(grads)
    flat = flat_view([grads[n] for n in names])
    offsets = [0]
    for name in names:
        offsets.append(offsets[-1] + grads[name].numel())
    target = math.ceil(offsets[-1] / count)
    buckets, stop, ready = [], offsets[-1], -1
    for i in range(len(names) - 1, -1, -1):
        ready = max(ready, writers[names[i]])
        if stop - offsets[i] >= target or i == 0:
            buckets.append((flat[offsets[i]:stop], ready))
            stop, ready = offsets[i], -1
    return buckets


def _chained(first: Callable[[], None] | None, then: Callable[[], None]) -> Callable[[], None]:
    if first is None:
        return then

    def both() -> None:
        first()
        then()
    return both
