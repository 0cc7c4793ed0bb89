"""Checkpoints: safetensors files keyed by torch.nn names, written atomically.

A checkpoint holds the parameters (``conv1.weight``...), optionally the optimizer state
(``optimizer.momentum.conv1.weight``, ``optimizer.exp_avg.conv1.weight``...: the
optimizer's buffers by kind and parameter), and in its metadata the spec text and the
training state needed to resume (JSON). safetensors cannot execute code on load, and a
temp file + rename means a crash never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ..runtime.divergence import first_nonfinite_tensor
from ..runtime.state import mismatched_keys, unloadable
from .fileio import write_atomic

OPTIMIZER = "optimizer."


class CheckpointError(Exception):
    """A weights file that cannot be used, with the file named in the message."""


def save_checkpoint(path: Path, params: dict[str, torch.Tensor], *, spec_text: str,
                    state: dict | None = None,
                    optimizer: dict[str, torch.Tensor] | None = None) -> None:
    """``optimizer``: the optimizer's buffers (``state_dict()["tensors"]``), if any."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in params.items()}
    for k, v in (optimizer or {}).items():
        tensors[OPTIMIZER + k] = v.detach().to("cpu").contiguous()
    bad = first_nonfinite_tensor(tensors)  # the training loop stops first; this is the last guard
    if bad is not None:
        raise CheckpointError(f"{path}: not written: '{bad}' holds nan or inf values")
    metadata = {"format": "n2ngraph-checkpoint-1", "spec": spec_text,
                "state": json.dumps(state or {})}
    blob = save(tensors, metadata=metadata)  # written by Python, so a full disk is an OSError
    write_atomic(path, lambda temp: Path(temp).write_bytes(blob))


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict, str]:
    """(params, optimizer buffers, training state, spec text) from a checkpoint file;
    the buffers are keyed like ``momentum.conv1.weight``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        tensors = load_file(path)
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({e})") from None
    if metadata.get("format") != "n2ngraph-checkpoint-1":
        raise CheckpointError(f"{path}: not an n2ngraph checkpoint (no n2ngraph metadata)")
    params = {k: v for k, v in tensors.items() if not k.startswith(OPTIMIZER)}
    buffers = {k[len(OPTIMIZER):]: v for k, v in tensors.items() if k.startswith(OPTIMIZER)}
    return params, buffers, _state(path, metadata.get("state", "{}")), metadata.get("spec", "")


def _state(path: Path, text: str) -> dict:
    """The training state a checkpoint's metadata records, as JSON of an object."""
    try:
        state = json.loads(text)
    except ValueError as e:
        raise CheckpointError(f"{path}: its training state is not valid JSON ({e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: its training state is not a JSON object")
    return state


def check_params_fit(path, params: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                     spec_name: str) -> None:
    """A clear error when a weights file belongs to another network, or holds values
    that cannot be loaded (``check_loadable``)."""
    missing, unexpected = mismatched_keys(params, expected)
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(f"{path}: weights are for another network than spec "
                              f"'{spec_name}' ({detail})")
    for k, v in expected.items():
        if tuple(params[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{path}: '{k}' has shape {tuple(params[k].shape)}, spec "
                                  f"'{spec_name}' needs {tuple(v.shape)}")
    check_loadable(path, params)


def check_loadable(path, tensors: dict[str, torch.Tensor]) -> None:
    """A clear error for weights that would be cast silently (int32, float16: only
    float32 and float64 load) or hold a nan or an inf (runtime.state.unloadable)."""
    for name, value in tensors.items():
        problem = unloadable(name, value)
        if problem:
            raise CheckpointError(f"{path}: {problem}")
