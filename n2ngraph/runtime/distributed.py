"""Data-parallel training: the processes (ranks) that train one model together.

Every rank holds the whole model and computes the gradient of its own share of each
global batch (the loss is a mean over the batch, so the batch's gradient is the shares'
weighted by their sizes, as batch parts are in parts.py). The flat gradient buffer
(flat.py) is weighted and summed over the ranks in place by torch.distributed's
all_reduce, which hands every rank the same bits; the optimizer then takes the same step
everywhere, and the parameters, broadcast from rank 0 at the start, stay identical
without ever being sent again. This is communication, not autograd: no
DistributedDataParallel, no torch.distributed.nn.

A rank that dies makes the others' next collective fail at once (the connection
closes); one that hangs makes it fail after ``timeout`` seconds. Either way every
collective here raises ``RankLost``, one line naming the rank, what it was doing and
the timeout, never a hang and never a traceback from gloo.
"""

from __future__ import annotations

import os
import pickle
from contextlib import contextmanager
from datetime import timedelta
from typing import Callable, Mapping, TypeVar

import torch
import torch.distributed as dist

from .flat import zipped

DEFAULT_TIMEOUT = 300.0
"""Seconds a rank waits for the others in one collective before it gives up: long
enough for a checkpoint rank 0 writes while the others wait, short enough that a hung
rank is noticed the same coffee break."""

T = TypeVar("T")


class RankLost(Exception):
    """Another rank died or stopped answering: this one cannot go on alone."""


class Ranks:
    """The ranks of a process group (the default one, all of them, when ``group`` is
    None) that train one model, and the few collectives training needs, each raising
    ``RankLost`` when a peer is gone."""

    def __init__(self, group=None, timeout: float = DEFAULT_TIMEOUT):
        if not dist.is_initialized():
            raise ValueError("torch.distributed is not initialised: call "
                             "torch.distributed.init_process_group (or Ranks.join) first")
        self.group, self.timeout = group, float(timeout)
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        self._equal_shares: set[int] = set()

    @classmethod
    def join(cls, timeout: float = DEFAULT_TIMEOUT, device: str = "cpu") -> "Ranks":
        """Joins the process group torchrun describes in the environment (RANK,
        WORLD_SIZE, MASTER_ADDR, MASTER_PORT): gloo on a CPU, NCCL on CUDA, where each
        rank takes the GPU of its LOCAL_RANK."""
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
        except (RuntimeError, ValueError) as e:
            raise RankLost(f"cannot join the other ranks at {os.environ.get('MASTER_ADDR')}:"
                           f"{os.environ.get('MASTER_PORT')} within {timeout:g} s "
                           f"({_first_line(e)})") from None
        return cls(timeout=timeout)

    @property
    def leader(self) -> bool:
        """Rank 0: the one that reads and writes the run directory."""
        return self.rank == 0

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    @contextmanager
    def _collective(self, what: str):
        """Turns gloo's and NCCL's errors (a closed connection, a timeout) into one line."""
        try:
            yield
        except RuntimeError as e:
            raise RankLost(f"rank {self.rank} of {self.size}: lost contact with another rank "
                           f"while {what} (a rank died, or did not answer within "
                           f"{self.timeout:g} s): {_first_line(e)}") from None

    # ---- tensors ---------------------------------------------------------------
    def broadcast(self, tensors: Mapping[str, torch.Tensor], what: str = "sharing the parameters") -> None:
        """Every rank's ``tensors`` made rank 0's, in place (one message when packed)."""
        with self._collective(what):
            for (t,) in zipped(tensors):
                dist.broadcast(t, self._global(0), group=self.group)

    def sum(self, tensor: torch.Tensor, what: str, op=dist.ReduceOp.SUM) -> torch.Tensor:
        """``tensor`` summed (or ``op``-reduced) over the ranks, in place; the same bits on
        every rank."""
        with self._collective(what):
            dist.all_reduce(tensor, op=op, group=self.group)
        return tensor

    def launch_sum(self, tensor: torch.Tensor, what: str):
        """Starts summing ``tensor`` over the ranks; ``wait(work, what)`` finishes it."""
        with self._collective(what):
            return dist.all_reduce(tensor, group=self.group, async_op=True)

    def wait(self, work, what: str) -> None:
        with self._collective(what):
            work.wait()

    def total(self, values: list[float], device, what: str) -> list[float]:
        """``values`` (float64) summed over the ranks."""
        t = torch.tensor(values, dtype=torch.float64, device=device)
        return self.sum(t, what).tolist()

    def largest(self, value: int, what: str) -> int:
        """The largest of the ranks' ``value``s: a flag any rank raises, for all."""
        t = torch.tensor([value], dtype=torch.int64)
        return int(self.sum(t, what, op=dist.ReduceOp.MAX).item())

    def check_equal_shares(self, rows: int) -> None:
        """Raises unless every rank computes ``rows`` rows of the batch: the gradients
        are weighted as equal shares. Asked once per share size (a collective)."""
        if rows in self._equal_shares:
            return
        sizes = [None] * self.size
        with self._collective("comparing the batch shares"):
            dist.all_gather_object(sizes, rows, group=self.group)
        if len(set(sizes)) != 1:
            raise ValueError(f"the ranks' shares of the batch differ ({sizes} rows): each rank "
                             f"must train on an equal share (app/pairs.share)")
        self._equal_shares.add(rows)

    # ---- objects ---------------------------------------------------------------
    def from_leader(self, value=None):
        """Rank 0's ``value`` (picklable), on every rank."""
        box = [value if self.leader else None]
        with self._collective("receiving rank 0's state"):
            dist.broadcast_object_list(box, self._global(0), group=self.group)
        return box[0]

    def led(self, work: Callable[[], T]) -> T:
        """Runs ``work`` on rank 0 alone and returns its result (picklable) on every rank,
        or raises its error on every rank: rank 0's failure (a run directory in use, a
        damaged checkpoint) then stops all ranks with its message rather than leaving the
        others to wait for a rank that has left."""
        result, error = None, None
        if self.leader:
            try:
                result = work()
            except Exception as e:  # noqa: BLE001 - handed on to every rank, then raised
                error = e
        result, error = self.from_leader((result, _picklable(error)))
        if error is not None:
            raise error
        return result

    def _global(self, rank: int) -> int:
        return rank if self.group is None else dist.get_global_rank(self.group, rank)


class GradientSum:
    """The global batch's gradients and loss, in place, from this rank's share's.

    Each rank's gradients are of the mean loss over its share, so the batch's are their
    mean over the (equal) shares: each rank scales its flat buffer by 1/ranks, then one
    all_reduce sums them. With 2 ranks the scaling is exact (a power of two) and the sum
    of two numbers is the same in either order, so the only difference from one process
    is where the batch's mean is split: rows summed in two halves, then added."""

    def __init__(self, ranks: Ranks, grads: Mapping[str, torch.Tensor]):
        self.ranks = ranks
        self.flats = [g for (g,) in zipped(grads)]  # one tensor where packed

    def __call__(self, loss: float, rows: int) -> float:
        """The global batch's loss, from this rank's ``loss`` over its ``rows`` rows,
        its gradients in the buffer; the buffer then holds the batch's."""
        ranks = self.ranks
        ranks.check_equal_shares(rows)
        weight = 1.0 / ranks.size
        work = []
        for g in self.flats:
            g.mul_(weight)
            work.append(ranks.launch_sum(g, "summing the gradients"))
        total = ranks.total([loss * weight], self.flats[0].device, "summing the loss")[0]
        for w in work:
            ranks.wait(w, "summing the gradients")
        return total


def as_ranks(group) -> Ranks | None:
    """None (one process), a Ranks, or a torch.distributed process group, as Ranks."""
    if group is None or isinstance(group, Ranks):
        return group
    return Ranks(group)


def _picklable(error: Exception | None) -> Exception | None:
    """``error`` if it survives pickling (to be sent), else a RuntimeError with its text."""
    if error is None:
        return None
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - any error class that does not rebuild itself
        return RuntimeError(str(error))


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]
