"""What every op is made of: attributes, a shape rule, a forward kernel and VJP rules.

An op instance *is* its attributes (a frozen attrs class), so two nodes with the same
settings compare equal and an op can never change after the spec is loaded. The class
carries the rest, side by side, the way a row of PyTorch's ``derivatives.yaml`` does:

- ``inputs``: the roles of its tensor inputs, in the order a spec lists them;
- ``params()``: learnable tensors it owns (``weight``, ``bias``) and their shapes;
- ``infer(**shapes)``: the output shape, or a ``SpecError`` naming the bad field;
- ``forward(out, ws, **tensors)``: writes the result into ``out``;
- ``vjps``: for each differentiable role, which values the gradient kernel reads
  (input roles, ``out`` for the forward result, ``gout`` for the output gradient) and
  the method that computes it;
- ``workspace(kernel, shapes)``: scratch tensors a kernel needs, planned by the memory
  planner like any other value, so that a kernel never asks the allocator for memory.

The forward and VJP methods are the op's own kernels. For most ops they are what a plan
runs, and never allocate. An op that can be computed in several ways (conv2d and its
kin) keeps here a plain reference kernel, and its fast kernels live in ``kernels/``,
chosen per node by ``compiler/lower.py``.
"""

from __future__ import annotations

import functools
import math
import sys
from typing import Callable, ClassVar

import attrs
import torch

from ..errors import SpecError, excerpt

Shape = tuple[int, ...]


@attrs.frozen
class VJP:
    """The vector-Jacobian product for one input role of an op.

    ``kernel`` names the op's method ``kernel(grad, ws, **needs)`` that writes the
    gradient w.r.t. that role into ``grad``. ``inplace`` names one of ``needs`` whose
    buffer the gradient may overwrite when nothing reads it afterwards.
    """

    kernel: str
    needs: tuple[str, ...]
    inplace: str | None = None


class Op:
    """Base class of all ops; subclasses are frozen attrs classes registered in ``OPS``."""

    name: ClassVar[str]
    inputs: ClassVar[tuple[str, ...]] = ("x",)
    inplace: ClassVar[str | None] = None
    vjps: ClassVar[dict[str, VJP]] = {}

    def params(self) -> dict[str, Shape]:
        """Learnable tensors owned by the op: role -> shape. Most ops own none."""
        return {}

    def fans(self) -> tuple[int, int]:
        """(fan_in, fan_out) for initialisers; only ops with params need it."""
        raise NotImplementedError(f"{self.name} has no parameters to initialise")

    def infer(self, **shapes: Shape) -> Shape:
        raise NotImplementedError

    def forward(self, out: torch.Tensor, ws: dict[str, torch.Tensor], **tensors: torch.Tensor) -> None:
        raise NotImplementedError

    def prepare(self, kernel: str, result: torch.Tensor, ws: dict[str, torch.Tensor], /,
                **tensors: torch.Tensor) -> Callable[[], None]:
        """``kernel`` bound to its result, workspaces and arguments, as a call without
        arguments. The executor prepares every kernel once, at compile time; an op whose
        kernels slice views or make choices overrides this to do that work here, once,
        so that each run only launches tensor ops."""
        return functools.partial(getattr(self, kernel), result, ws, **tensors)

    def workspace(self, kernel: str, shapes: dict[str, Shape]) -> dict[str, Shape]:
        """Scratch tensors for ``kernel`` ('forward' or a VJP kernel), given the shapes
        of the forward node: its inputs by role and its result as ``out``."""
        return {}

    def describe(self) -> str:
        """One line for pictures and summaries: the op name and its attributes that
        differ from their defaults."""
        parts = [f"{f.name}={_shown(f, getattr(self, f.name))}" for f in attrs.fields(type(self))
                 if f.default is attrs.NOTHING or getattr(self, f.name) != f.default]
        return self.name + (" " + " ".join(parts) if parts else "")


def _shown(field: attrs.Attribute, value) -> str:
    """An attribute's value as ``describe`` writes it: a size as '3' or '2x3' (no
    space: a picture wraps a description at its spaces)."""
    return hxw(value) if field.metadata.get("kind") is Pair else str(value)


def in_order(*calls: Callable[[], None]) -> Callable[[], None]:
    """One call that makes the given calls in order: what ``prepare`` returns for a
    kernel made of several tensor ops."""
    if len(calls) == 1:
        return calls[0]

    def run():
        for call in calls:
            call()
    return run


OPS: dict[str, type[Op]] = {}


def register(cls: type[Op]) -> type[Op]:
    """Class decorator: makes an op known to the spec loader under ``cls.name``."""
    OPS[cls.name] = cls
    return cls


# ---- attribute declarations -------------------------------------------------------

_KINDS: dict[type, tuple[tuple[type, ...], str]] = {
    int: ((int,), "an integer"),
    float: ((int, float), "a number"),
    bool: ((bool,), "true or false"),
    str: ((str,), "a name"),
}


def attribute(kind: type, *, default=attrs.NOTHING, minimum=None, choices=None, doc: str = ""):
    """An op attribute that checks its own type and range.

    Every op is built through this, from a spec or from Python, so a bad value always
    fails the same way: a ``SpecError`` that names the attribute.
    """
    accepted, described = _KINDS[kind]

    def check(_instance, field: attrs.Attribute, value) -> None:
        wrong_type = not isinstance(value, accepted) or (kind is not bool and isinstance(value, bool))
        if wrong_type:
            raise SpecError(f"expected {described}, got {excerpt(value)}", field=field.name)
        if kind is float and not finite_number(value):
            raise SpecError(f"expected a finite number, got {shown_number(value)}", field=field.name)
        if minimum is not None and value < minimum:
            bound = "positive" if minimum == 1 and kind is int else f">= {minimum}"
            raise SpecError(f"must be {bound}, got {excerpt(value)}", field=field.name)
        if choices is not None and value not in choices:
            raise SpecError(f"must be one of {', '.join(choices)}, got {excerpt(value)}", field=field.name)

    return attrs.field(default=default, validator=check, metadata={"doc": doc, "kind": kind})


Pair = tuple[int, int]


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_pair(value):
    """A size as torch takes it: an int k is (k, k), a list or tuple of two ints is
    (h, w); a word (``same``) and anything malformed stay as given, for the validator."""
    if _integer(value):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(map(_integer, value)):
        return tuple(value)
    return value


def pair_attribute(*, default=attrs.NOTHING, minimum: int, words=(), doc: str = ""):
    """An op attribute that is a size along height and width: written as an int (both
    sides) or a pair ``[h, w]``, stored as a tuple (h, w), so that code reading it
    never has to ask which form a spec or a caller used; or one of ``words``
    (``padding: same``), stored as the word. Bad forms fail like ``attribute``'s: a
    ``SpecError`` naming the attribute."""
    described = "an integer or a pair [h, w] of integers" + "".join(f" or '{w}'" for w in words)

    def check(_instance, field: attrs.Attribute, value) -> None:
        if isinstance(value, str) and value in words:
            return
        if not (isinstance(value, tuple) and len(value) == 2 and all(map(_integer, value))):
            raise SpecError(f"expected {described}, got {excerpt(value)}", field=field.name)
        for side in value:
            if side < minimum:
                bound = "positive" if minimum == 1 else f">= {minimum}"
                raise SpecError(f"must be {bound}, got {excerpt(side)}", field=field.name)

    return attrs.field(default=default, converter=_as_pair, validator=check,
                       metadata={"doc": doc, "kind": Pair})


def hxw(value) -> str:
    """A size for a label or a message as a spec writes it: (3, 3) as '3', (2, 3) as
    '2x3', a word as itself."""
    if not isinstance(value, tuple):
        return str(value)
    return str(value[0]) if value[0] == value[1] else f"{value[0]}x{value[1]}"


def finite_number(value) -> bool:
    """An int or a float (not a bool) whose value is a finite float: YAML reads ``.nan``
    and ``.inf`` as floats, and no setting or attribute means either, nor an integer
    beyond float range. The one test every number a spec, a run or a caller gives
    passes (ops' attributes, parse.py, the recipe classes, a run's config.json)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) if isinstance(value, float) else abs(value) <= sys.float_info.max


def shown_number(value) -> str:
    """A number for a message saying it is not finite."""
    return "an integer beyond float range" if isinstance(value, int) else repr(value)


def window_out_size(size: int, kernel: int, stride: int = 1, padding: int = 0,
                    dilation: int = 1) -> int:
    """Positions a sliding window (conv, pool) takes along one side of ``size`` pixels,
    zero-padded by ``padding``; the window spans ``dilation * (kernel - 1) + 1``."""
    reach = dilation * (kernel - 1) + 1
    return (size + 2 * padding - reach) // stride + 1


def check_rank(shape: Shape, rank: int, what: str, field: str = "in") -> None:
    if len(shape) != rank:
        raise SpecError(f"{what} must have {rank} dimensions, got shape {tuple(shape)}", field=field)


# ---- constants without allocation -------------------------------------------------

_SCALARS: dict[tuple, torch.Tensor] = {}


def scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    """A cached 0-dim tensor holding ``value`` in ``like``'s dtype and device.

    A Python number passed to an in-place tensor op is wrapped in a fresh tensor on
    every call; a cached one keeps a steady-state step free of allocations.
    """
    key = (value, like.dtype, like.device)
    found = _SCALARS.get(key)
    if found is None:
        found = _SCALARS[key] = torch.tensor(value, dtype=like.dtype, device=like.device)
    return found


_CONSTANTS: dict[tuple, torch.Tensor] = {}


def constant(name: str, make: Callable[[], torch.Tensor], *, device, dtype=None) -> torch.Tensor:
    """A constant tensor kernels read (an index, a 0/1 matrix), made on the CPU by
    ``make()`` the first time it is asked for under ``name`` on that device and dtype,
    and cached, so that running a kernel never allocates it again."""
    key = (name, str(device), dtype)
    found = _CONSTANTS.get(key)
    if found is None:
        found = _CONSTANTS[key] = make().to(device=device, dtype=dtype)
    return found

