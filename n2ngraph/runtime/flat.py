"""Parameter-shaped tensors packed end to end in one flat buffer.

A network's parameters are a few dozen small tensors, and an optimizer that updates
them one at a time launches its handful of ops once per tensor: Adam's seven ops on
the U-Net's 30 tensors are 210 launches a step, on a GPU more than a fifth of the
kernels a replayed training step is made of. Packed, each parameter is a view into one
flat buffer, and so are its gradient and each optimizer buffer, laid out the same way;
the update then runs its handful of ops once, over the flat buffers. Elementwise ops
give each element the same result either way, so the update is unchanged to the bit
(tests/test_training_recipe.py checks it against PyTorch's optimizers).

Tensors that are not packed (parameters adopted from their owner, as the ``compat``
modules do) are updated one by one, as before.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

Tensors = Mapping[str, torch.Tensor]


def packed(tensors: Tensors) -> dict[str, torch.Tensor]:
    """Copies of ``tensors`` (one dtype and device) as views into one new flat buffer,
    in the given order."""
    views = _carved(tensors)
    for name, t in tensors.items():
        views[name].copy_(t)
    return views


def packed_like(tensors: Tensors, *, zero: bool = False) -> dict[str, torch.Tensor]:
    """New tensors shaped like ``tensors``, uninitialised (or zero): views into one flat
    buffer when ``tensors`` are packed, else one tensor each."""
    if tensors and flat_view(list(tensors.values())) is not None:
        return _carved(tensors, zero)
    make = torch.zeros_like if zero else torch.empty_like
    return {name: make(t) for name, t in tensors.items()}


def _carved(tensors: Tensors, zero: bool = False) -> dict[str, torch.Tensor]:
    """Views shaped like ``tensors``, end to end in one new buffer."""
    first = next(iter(tensors.values()), None)
    if first is None:
        return {}
    total = sum(t.numel() for t in tensors.values())
    buffer = (torch.zeros if zero else torch.empty)(total, dtype=first.dtype, device=first.device)
    views, start = {}, 0
    for name, t in tensors.items():
        views[name] = buffer[start:start + t.numel()].view(t.shape)
        start += t.numel()
    return views


def flat_view(tensors: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """The one flat tensor that ``tensors`` tile end to end, in order, with no gaps
    (contiguous views of one buffer, each starting where the previous one stops);
    None if they do not."""
    if not tensors:
        return None
    first = tensors[0]
    storage, start = first.untyped_storage().data_ptr(), first.storage_offset()
    offset = start
    for t in tensors:
        if (t.untyped_storage().data_ptr() != storage or t.storage_offset() != offset
                or not t.is_contiguous() or t.dtype != first.dtype):
            return None
        offset += math.prod(t.shape)
    return first.as_strided((offset - start,), (1,), start)


def zipped(*sets: Tensors) -> list[tuple[torch.Tensor | None, ...]]:
    """What an update over parameter-shaped ``sets`` (params, grads, buffers; the first
    set's names, in its order) loops over: one tuple of their flat tensors when every
    set is packed, else one tuple per name. An empty set (a buffer a configuration does
    without) gives None in each tuple."""
    names = list(sets[0])
    if not names:
        return []
    whole = [flat_view([t[n] for n in names]) if t else None for t in sets]
    if all(w is not None for w, t in zip(whole, sets) if t):
        return [tuple(whole)]
    return [tuple(t[n] if t else None for t in sets) for n in names]
