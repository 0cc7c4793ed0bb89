"""The first IR: ``Spec``, a frozen, validated description of a network and its
training recipe. ``parse.py`` makes one from YAML; every later pass reads it, never
writes it.

    name: noise2noise
    inputs:
      noisy:  {channels: 3}
      target: {channels: 3}
    nodes:                                   # in any order; edges are the `in` names
      conv1: {op: conv2d, in: noisy, in_channels: 3, out_channels: 24, kernel: 3}
      relu1: {op: relu, in: conv1}
      loss:  {op: mse, in: [relu1, target]}
    output: relu1                            # what inference returns
    loss: loss                               # what training minimises (optional)
    train: {...}                             # the recipe (see TrainSpec)
"""

from __future__ import annotations


import attrs

from ..ops import Op
from ..ops.base import finite_number, shown_number

@attrs.frozen
class InputSpec:
    """A named graph input: an image-shaped tensor with a fixed channel count."""

    name: str
    channels: int
    line: int | None = None


@attrs.frozen
class NodeSpec:
    """One op application: a named node, its op (with attributes) and its input names."""

    name: str
    op: Op
    inputs: tuple[str, ...]
    line: int | None = None


# Which settings each optimizer and each learning-rate schedule reads (besides `name`);
# a setting of another one is an error, not silently ignored.
OPTIMIZERS = {
    "sgd": ("lr", "momentum", "dampening", "nesterov", "weight_decay"),
    "adam": ("lr", "betas", "eps", "weight_decay", "amsgrad"),
}
DEFAULT_LR = {"sgd": 0.01, "adam": 0.001}  # PyTorch's own SGD and Adam defaults
SCHEDULES = {
    "constant": (),
    "step": ("step_size", "gamma"),
    "cosine": ("eta_min",),
    "rampdown": ("rampdown_fraction", "rampup_fraction"),
}


def _finite(_instance, attribute: attrs.Attribute, value) -> None:
    """A number setting's validator: nan and inf mean no setting. parse.py says so with
    the spec's line first; this holds for every other way in (a run's config.json, a
    Python caller)."""
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if v is None and attribute.name == "clip_grad_norm":
            continue
        if not finite_number(v):
            raise ValueError(f"{attribute.name}: expected a finite number, got {shown_number(v)}")


def _setting(default):
    return attrs.field(default=default, validator=_finite)


@attrs.frozen
class OptimizerSpec:
    """An optimizer and its settings; those of the other optimizer keep their defaults."""

    name: str = "sgd"
    lr: float = _setting(attrs.Factory(lambda self: DEFAULT_LR.get(self.name, 0.01),
                                       takes_self=True))
    momentum: float = _setting(0.0)
    dampening: float = _setting(0.0)
    nesterov: bool = False
    weight_decay: float = _setting(0.0)
    betas: tuple[float, float] = attrs.field(default=(0.9, 0.999), converter=tuple,
                                             validator=_finite)
    eps: float = _setting(1e-8)
    amsgrad: bool = False


@attrs.frozen
class ScheduleSpec:
    """How the learning rate moves over a run (optim.learning_rate computes it).

    step:     lr * gamma ** (epoch // step_size)          -- step_size counts epochs
    cosine:   eta_min + (lr - eta_min) (1 + cos(pi s / S)) / 2 over all S steps
    rampdown: the Noise2Noise paper's: constant, then a squared-cosine ramp to 0 over the
              last rampdown_fraction of the steps; optional linear ramp-up over the first
              rampup_fraction
    """

    name: str = "constant"
    step_size: int = 1
    gamma: float = _setting(0.1)
    eta_min: float = _setting(0.0)
    rampdown_fraction: float = _setting(0.3)
    rampup_fraction: float = _setting(0.0)


MAX_SEED = 2**32 - 1
"""The largest seed: a run seeds its generators with numbers derived from it (seed x
1,000,003 + epoch), which torch.Generator takes only below 2**64; numpy keeps seeds to
32 bits too."""


@attrs.frozen
class TrainSpec:
    """The training recipe a spec carries; command-line options override it."""

    optimizer: OptimizerSpec = OptimizerSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    clip_grad_norm: float | None = _setting(None)  # rescale gradients whose global L2 norm exceeds it
    augment: bool = False  # random flips and 90-degree rotations of each training pair
    init: str = "uniform"
    batch: int = 4
    epochs: int = 5
    pairs: int = 50_000
    crop: int = 32
    seed: int = 0


@attrs.frozen
class Spec:
    name: str
    inputs: tuple[InputSpec, ...]
    nodes: tuple[NodeSpec, ...]
    output: str
    loss: str | None
    train: TrainSpec
    file: str | None = None

    def node(self, name: str) -> NodeSpec:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs)


INITS = ("uniform", "xavier", "kaiming")
