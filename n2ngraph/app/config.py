"""A training run's settings: the recipe it trains with and what belongs to the run alone.

The recipe is the spec's ``train:`` section (compiler.spec.TrainSpec) with the command
line's overrides applied; the run adds where its data comes from, the device and the
arithmetic. A run directory records them in ``config.json``, in the flat layout runs have
always been saved in, beside the spec text (``spec.yaml``) that holds the rest of the
recipe: ``--resume`` rebuilds the same settings from the two.
"""

from __future__ import annotations

import attrs

from ..compiler.spec import OptimizerSpec, ScheduleSpec, Spec, TrainSpec

RECIPE_OVERRIDES = {f.name for f in attrs.fields(TrainSpec)} | {"lr"}
"""What may override the recipe: its fields by name (the optimizer and the schedule
given by their names), and the optimizer's learning rate as ``lr``."""


@attrs.frozen
class TrainConfig:
    """Settings of one run: ``recipe``, and the settings of the run itself."""

    recipe: TrainSpec
    noise: str = "gaussian:25"
    data: str | None = None
    val_count: int = 1000
    device: str = "cpu"
    from_weights: str | None = None  # the checkpoint a fine-tuning run started from
    float64: bool = False  # the arithmetic, which a resumed run must keep to stay bit-identical
    tf32: bool = False

    @classmethod
    def from_spec(cls, spec: Spec, **overrides) -> "TrainConfig":
        """The spec's recipe with ``overrides`` (``RECIPE_OVERRIDES``; None keeps the
        spec's value), and the run's own settings; an unknown name is a TypeError."""
        given = {k: v for k, v in overrides.items() if v is not None}
        recipe = {k: given.pop(k) for k in list(given) if k in RECIPE_OVERRIDES}
        return cls(overridden(spec.train, **recipe), **given)

    def record(self) -> dict:
        """What ``config.json`` holds: the recipe's values a command line can override
        (the optimizer and schedule by name) and the run's own settings."""
        r = self.recipe
        return {"epochs": r.epochs, "batch": r.batch, "lr": r.optimizer.lr, "pairs": r.pairs,
                "seed": r.seed, "crop": r.crop, "noise": self.noise, "data": self.data,
                "val_count": self.val_count, "device": self.device,
                "optimizer": r.optimizer.name, "schedule": r.schedule.name,
                "clip_grad_norm": r.clip_grad_norm, "augment": r.augment,
                "from_weights": self.from_weights, "float64": self.float64, "tf32": self.tf32}

    @classmethod
    def from_record(cls, spec: Spec, record: dict) -> "TrainConfig":
        """The settings ``record()`` wrote, with ``spec`` (the run's spec.yaml) for the
        rest of the recipe. A record without the run's size (epochs, batch, lr, pairs,
        seed, crop) is a TypeError: runs have always recorded them."""
        missing = [k for k in ("epochs", "batch", "lr", "pairs", "seed", "crop") if k not in record]
        if missing:
            raise TypeError(f"no {', '.join(missing)}")
        return cls.from_spec(spec, **record)


def overridden(recipe: TrainSpec, *, optimizer: str | None = None, lr: float | None = None,
               schedule: str | None = None, **fields) -> TrainSpec:
    """``recipe`` with other values for some of its ``fields``, another ``optimizer`` or
    ``schedule`` by name (with its own defaults: Adam's learning rate, not the spec's
    SGD one), or another ``lr`` for its optimizer."""
    chosen = recipe.optimizer
    if optimizer is not None and optimizer != chosen.name:
        chosen = OptimizerSpec(name=optimizer)
    if lr is not None:
        chosen = attrs.evolve(chosen, lr=lr)
    plan = recipe.schedule
    if schedule is not None and schedule != plan.name:
        plan = ScheduleSpec(name=schedule)
    return attrs.evolve(recipe, optimizer=chosen, schedule=plan, **fields)
