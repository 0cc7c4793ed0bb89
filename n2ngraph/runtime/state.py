"""Parameters coming into a program from outside: tensors it adopts, state dicts it
copies. Each is checked against the parameters the spec needs, name by name and shape
by shape, so that weights for another network fail with the names that differ; values
copied in must also be float32 or float64 (the two a program computes in, either read
into the other), and finite: an int32 or float16 file would otherwise be cast silently,
and a nan spreads to every output."""

from __future__ import annotations

from typing import Mapping

import torch

Tensors = Mapping[str, torch.Tensor]


def mismatched_keys(given: Mapping, expected: Mapping) -> tuple[list[str], list[str]]:
    """(missing, unexpected): the names ``expected`` has that ``given`` lacks, and the
    names ``given`` has that ``expected`` does not, each in its mapping's order."""
    return [k for k in expected if k not in given], [k for k in given if k not in expected]


def _check_names(given: Mapping, expected: Mapping, what: str) -> None:
    missing, unexpected = mismatched_keys(given, expected)
    if missing or unexpected:
        raise KeyError(f"{what}: missing {missing}, unexpected {unexpected}")


def adopted(params: Tensors, expected: Tensors, spec_name: str, *, dtype: torch.dtype,
            device: torch.device) -> dict[str, torch.Tensor]:
    """``params`` in ``expected``'s order, once checked to be what a program on
    ``device`` computing in ``dtype`` can read and update in place: the spec's names and
    shapes, contiguous, that dtype, that device."""
    _check_names(params, expected, f"parameters do not match spec '{spec_name}'")
    here = torch.empty(0, device=device).device  # 'cuda' -> 'cuda:0'
    for name, t in params.items():
        if tuple(t.shape) != tuple(expected[name].shape):
            raise ValueError(f"'{name}': shape {tuple(t.shape)}, spec '{spec_name}' "
                             f"needs {tuple(expected[name].shape)}")
        if t.dtype != dtype or t.device != here or not t.is_contiguous():
            raise ValueError(f"'{name}': a contiguous {dtype} tensor on {device} "
                             f"is needed, got {t.dtype} on {t.device}")
    return {k: params[k] for k in expected}


LOADABLE = (torch.float32, torch.float64)


def unloadable(name: str, value: torch.Tensor) -> str | None:
    """Why ``value`` cannot be copied into parameter ``name``, or None if it can: a
    dtype other than float32 or float64, or a nan or an inf."""
    if value.dtype not in LOADABLE:
        return f"'{name}' is {str(value.dtype).removeprefix('torch.')}, not float32 or float64"
    if not bool(torch.isfinite(value).all()):
        return f"'{name}' holds nan or inf values"
    return None


def load_state(params: Tensors, state: Tensors, spec_name: str) -> None:
    """Copies ``state`` into ``params``, once all of it is checked to hold the same names
    and shapes, and values that can be loaded (``unloadable``): all or nothing."""
    _check_names(state, params, f"state dict does not match spec '{spec_name}'")
    for name, param in params.items():
        value = state[name]
        if tuple(value.shape) != tuple(param.shape):
            raise ValueError(f"'{name}': shape {tuple(value.shape)} in the state dict, "
                             f"{tuple(param.shape)} in spec '{spec_name}'")
        problem = unloadable(name, value)
        if problem:
            raise ValueError(f"state dict for spec '{spec_name}': {problem}")
    for name, param in params.items():
        param.copy_(state[name])
