"""The command line's side of data-parallel training (runtime/distributed.py does the
communication): joining the ranks torchrun started, and the work rank 0 alone does.

Under torchrun (WORLD_SIZE > 1 in the environment) ``--train`` and ``--resume`` join
the other ranks; every rank then trains its share of each global batch, and rank 0
alone reads and writes the run directory and prints. With one rank (or without
torchrun) nothing here changes what a run does.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Callable, TypeVar

from ..runtime.distributed import Ranks

T = TypeVar("T")


class LaunchError(Exception):
    """torchrun started a mode that runs in one process only, or a bad --rank-timeout."""


def launched_ranks() -> int:
    """How many ranks torchrun started (1 when it did not)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def join_if_launched(training: bool, timeout: float) -> Ranks | None:
    """The ranks of this run when torchrun started several, else None."""
    if launched_ranks() == 1:
        return None
    if not training:
        raise LaunchError("only --train and --resume run on several ranks; run other modes "
                          "as one process (python -m n2ngraph.run, without torchrun)")
    if not (math.isfinite(timeout) and timeout > 0):
        raise LaunchError(f"--rank-timeout must be a positive number of seconds, got {timeout:g}")
    return Ranks.join(timeout)


def on_leader(ranks: Ranks | None, work: Callable[[], T]) -> T:
    """``work()``, run by rank 0 alone in a data-parallel run, its result (or its error)
    handed to every rank."""
    return work() if ranks is None else ranks.led(work)


def leader(ranks: Ranks | None, text: str) -> None:
    """Prints ``text`` once: on rank 0 of a data-parallel run."""
    if ranks is None or ranks.leader:
        print(text)


def error_prefix(ranks: Ranks | None) -> str:
    """What a rank's error lines start with: nothing on rank 0, which speaks for the run."""
    return "" if ranks is None or ranks.leader else f"rank {ranks.rank}: "


def report(ranks: Ranks | None, text: str) -> None:
    print(f"{error_prefix(ranks)}error: {text}", file=sys.stderr)
