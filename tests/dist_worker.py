"""One rank of the API test in test_distributed.py, started by it as a process of its
own: trains a Program on its share of fixed global batches with SGD (momentum) and with
Adam, in float64, and saves the parameters. Run with RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT set; argv: the output folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from n2ngraph.app.pairs import share
from n2ngraph.compiler.parse import load_spec
from n2ngraph.compiler.spec import OptimizerSpec
from n2ngraph.runtime.distributed import Ranks
from n2ngraph.runtime import program
from n2ngraph.runtime.program import compile

ROOT = Path(__file__).resolve().parent.parent
BATCH, CROP, STEPS = 8, 16, 4
OPTIMIZERS = {"sgd": OptimizerSpec(name="sgd", lr=0.5, momentum=0.9),
              "adam": OptimizerSpec(name="adam", lr=0.01)}


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The global batches every rank (and the one-process reference) trains on."""
    g = torch.Generator().manual_seed(7)
    shape = (BATCH, 3, CROP, CROP)
    return [(torch.rand(shape, generator=g, dtype=torch.float64),
             torch.rand(shape, generator=g, dtype=torch.float64)) for _ in range(STEPS)]


def train(name: str, ranks: Ranks | None, steps: int = STEPS) -> tuple[dict[str, torch.Tensor], list[float]]:
    """(parameters, losses) after ``steps`` steps with optimizer ``name``."""
    rows = range(BATCH) if ranks is None else share(ranks.rank, ranks.size, BATCH)
    program = compile(load_spec(ROOT / "specs" / "noise2noise.yaml"), (len(rows), 3, CROP, CROP),
                      dtype=torch.float64, optimizer=OPTIMIZERS[name], group=ranks)
    losses = [program.train_step(x[rows.start:rows.stop], t[rows.start:rows.stop])
              for x, t in batches()[:steps]]
    return {k: v.clone() for k, v in program.params.items()}, losses


def main(out: Path) -> None:
    torch.set_num_threads(1)
    ranks = Ranks.join(timeout=60)
    for name in OPTIMIZERS:
        params, losses = train(name, ranks)
        torch.save({"params": params, "losses": losses}, out / f"{name}-{ranks.rank}.pt")
    program.bucketable = lambda grads: False  # the path of a batch run as parts: one sum
    params, losses = train("sgd", ranks)
    torch.save({"params": params, "losses": losses}, out / f"sgd-after-backward-{ranks.rank}.pt")
    ranks.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
