"""A training run's settings: the recipe it trains with and what belongs to the run alone.

The recipe is the spec's ``train:`` section (compiler.spec.TrainSpec) with the command
line's overrides applied; the run adds where its data comes from, the device and the
arithmetic. A run directory records them in ``config.json``, in the flat layout runs have
always been saved in, beside the spec text (``spec.yaml``) that holds the rest of the
recipe: ``--resume`` rebuilds the same settings from the two.

``check_settings`` holds every setting to the type and range a run can work with, for
the command line and for ``config.json`` alike, and ``check_memory`` the pairs and
validation crops a run holds to the memory there is, before anything is made or written.
"""

from __future__ import annotations

import attrs

from ..compiler.fit import host_available_bytes
from ..compiler.spec import (MAX_SEED, OPTIMIZERS, SCHEDULES, OptimizerSpec, ScheduleSpec, Spec,
                             TrainSpec)
from ..ops.base import finite_number
from .data import parse_noise, source_kind
from .pairs import EpochPlan
from .stream import DEPTH

PAIRS_FROM = ("pairs", "single")
"""Where a run's training pairs come from: two noisy views of each clean crop
(Noise2Noise), or a single noisy photo's crop sub-sampled into two (Neighbor2Neighbor)."""

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
    pairs_from: str = "pairs"  # PAIRS_FROM: Noise2Noise pairs, or single noisy photos

    def __attrs_post_init__(self):
        if self.pairs_from != "single":
            return
        if self.recipe.crop % 2:
            raise SettingError("pairs_from", "single", f"sub-samples 2x2 cells of each crop: "
                                                       f"the crop must be even, not {self.recipe.crop}")
        if source_kind(self.data) == "pairs":
            raise SettingError("pairs_from", "single", f"trains on noisy photos (a folder, or "
                                                       f"the embedded ones), not on {self.data}")

    @property
    def train_crop(self) -> int:
        """The side of the images a step trains on: the crop, or half of it when a
        single photo's crop is sub-sampled into two (neighbours.py)."""
        return self.recipe.crop // 2 if self.pairs_from == "single" else self.recipe.crop

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
                "from_weights": self.from_weights, "float64": self.float64, "tf32": self.tf32,
                "pairs_from": self.pairs_from}

    @classmethod
    def from_record(cls, spec: Spec, record: dict) -> "TrainConfig":
        """The settings ``record()`` wrote, with ``spec`` (the run's spec.yaml) for the
        rest of the recipe. A record without the run's size (epochs, batch, lr, pairs,
        seed, crop) is a TypeError: runs have always recorded them; a value of the wrong
        type or out of range (an edited or damaged file) is a SettingError."""
        if not isinstance(record, dict):
            raise TypeError("not a JSON object")
        missing = [k for k in ("epochs", "batch", "lr", "pairs", "seed", "crop") if k not in record]
        if missing:
            raise TypeError(f"no {', '.join(missing)}")
        check_settings(record)
        config = cls.from_spec(spec, **record)
        if config.recipe.batch > config.recipe.pairs:
            raise SettingError("batch", config.recipe.batch,
                               f"is larger than the {config.recipe.pairs} pairs of an epoch")
        return config


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


# ---- what a run can work with ----------------------------------------------------------

MAX_COUNT = 2**31 - 1
"""The most epochs, pairs, crops... a count may ask for: far beyond any run, and below
what a tensor's size or a step index can hold."""


class SettingError(ValueError):
    """A setting of the wrong type or out of range: ``key`` as config.json names it (the
    command line's option is ``--key``), its ``value`` and the ``problem``."""

    def __init__(self, key: str, value, problem: str):
        self.key, self.value, self.problem = key, value, problem
        super().__init__(f"{key} {_excerpt(value)}: {problem}")

    def option(self) -> str:
        """The message, naming the command line's option: ``--seed 2e40: ...``."""
        return f"--{self.key.replace('_', '-')} {_excerpt(self.value, quote=False)}: {self.problem}"


def _excerpt(value, quote: bool = True) -> str:
    """``value`` as a message quotes it: short, whatever a config.json holds."""
    if _is_int(value) and abs(value) >= 10**30:
        return f"(a {value.bit_length()}-bit number)"  # str() of a huge int is slow, or refused
    text = repr(value) if quote or not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _count(value) -> str | None:
    return None if _is_int(value) and 1 <= value <= MAX_COUNT else \
        f"must be a whole number from 1 to {MAX_COUNT:,}"


def _noise(value) -> str | None:
    if not isinstance(value, str):
        return "must be a noise model like gaussian:25"
    try:
        parse_noise(value)
    except ValueError as e:
        return str(e)
    return None


_CHECKS = {
    **dict.fromkeys(("epochs", "batch", "pairs", "crop", "val_count"), _count),
    "seed": lambda v: None if _is_int(v) and 0 <= v <= MAX_SEED else
    f"must be a whole number from 0 to {MAX_SEED} (the run's random generators are seeded from it)",
    "lr": lambda v: None if finite_number(v) and v > 0 else "must be a finite number > 0",
    "clip_grad_norm": lambda v: None if finite_number(v) and v >= 0 else
    "must be a finite number >= 0 (0: no clipping)",
    "noise": _noise,
    "optimizer": lambda v: None if v in OPTIMIZERS else f"must be one of {', '.join(OPTIMIZERS)}",
    "schedule": lambda v: None if v in SCHEDULES else f"must be one of {', '.join(SCHEDULES)}",
    **dict.fromkeys(("data", "from_weights"), lambda v: None if isinstance(v, str) else
                    "must be a path"),
    "pairs_from": lambda v: None if v in PAIRS_FROM else f"must be one of {', '.join(PAIRS_FROM)}",
    "device": lambda v: None if isinstance(v, str) and (v == "cpu" or v.startswith("cuda")) else
    "must be cpu or cuda",
    **dict.fromkeys(("augment", "float64", "tf32"), lambda v: None if isinstance(v, bool) else
                    "must be true or false"),
}


def check_settings(values: dict) -> None:
    """Each of ``values`` (by config.json's names; None: not given) of the type and in the
    range a run can work with, else a SettingError naming the first that is not: a
    seed torch.Generator cannot take, a noise level that overflows float32, a batch of 0
    fail here, before any file is written, rather than as a traceback minutes later."""
    for key, value in values.items():
        check = _CHECKS.get(key)
        problem = check(value) if check is not None and value is not None else None
        if problem:
            raise SettingError(key, value, problem)


def memory_needed(config: TrainConfig, whole_epoch: bool = False) -> tuple[int, int]:
    """(bytes of pairs held at once, bytes of the validation crops), uint8. Training holds
    the chunks in flight (stream.DEPTH queued, one drawn, one trained on: pairs.py), at
    most the clean crops and two noisy views of each (and with ``augment`` the two turned
    copies), however many pairs an epoch has; ``whole_epoch`` (``--export``) the epoch's
    two views as well. The validation set's noisy and clean crops are held whole."""
    r = config.recipe
    crop = 3 * r.crop * r.crop
    if source_kind(config.data) == "pairs":
        pairs = 0  # the file's own pairs, loaded as they are
    else:
        plan = EpochPlan(r.pairs, r.batch, r.crop * r.crop)
        in_flight = min(r.pairs, plan.steps_per_chunk * r.batch * (DEPTH + 2))
        pairs = in_flight * crop * (5 if r.augment else 3) + (r.pairs * crop * 2 if whole_epoch else 0)
    return pairs, config.val_count * crop * 2


def check_memory(config: TrainConfig, available: int | None = None,
                 whole_epoch: bool = False) -> None:
    """A SettingError when the pairs held at once (``memory_needed``) or the validation
    crops need more memory than there is (``available``, else ``host_available_bytes()``):
    caught here, before the run directory is made, not by the allocator partway in."""
    available = host_available_bytes() if available is None else available
    if available is None:
        return
    pairs, validation = memory_needed(config, whole_epoch)
    r = config.recipe
    if validation > available:
        raise SettingError("val_count", config.val_count,
                           f"{config.val_count:,} validation crops of {r.crop}x{r.crop} need "
                           f"{_size(validation)}, more than the {_size(available)} of memory free")
    if pairs + validation > available:
        held = f"an epoch's {r.pairs:,} pairs" if whole_epoch else "the pairs drawn ahead"
        raise SettingError("pairs", r.pairs,
                           f"{held} of {r.crop}x{r.crop} crops need {_size(pairs)}, more than "
                           f"the {_size(available - validation)} of memory free: fewer pairs, "
                           f"or a smaller crop")


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
