"""Strided copies between NCHW tensors and the layouts GEMMs want, and tiles.

Each helper returns *calls* (``functools.partial`` of one in-place tensor op) for a
kernel's ``prepare`` to collect, so that slicing views is done once, not every run.
"""

from __future__ import annotations

import functools

import torch

ZERO_WHOLE_BELOW = 2**17
"""A workspace only partly written by copies (the output side's gathered gradient, a
zero-padded input) is zeroed whole, once, before them when it holds fewer values than
this; larger, only the strips that no copy writes are zeroed. On small batches the
number of tensor ops, not the bytes, sets the pace (docs/performance.md, "Why the
tuning constants are what they are")."""


def channel_major(t: torch.Tensor, into: torch.Tensor):
    """(N, C, H, W), any strides -> (C, N*H*W), the layout the GEMMs want."""
    n, c, h, w = t.shape
    return functools.partial(into.view(c, n, h, w).copy_, t.transpose(0, 1))


def from_channel_major(t: torch.Tensor, into: torch.Tensor):
    """(C, N*H*W) -> (N, C, H, W), any strides."""
    n, c, h, w = into.shape
    return functools.partial(into.copy_, t.view(c, n, h, w).transpose(0, 1))


def tiles(n: int, ho: int, wo: int, columns: int) -> list[tuple[int, int, int, int]]:
    """(n0, n1, r0, r1): whole samples while a sample has fewer than ``columns``
    pixels, else blocks of output rows within one sample."""
    if ho * wo < columns:
        step = columns // (ho * wo)
        return [(i, min(i + step, n), 0, ho) for i in range(0, n, step)]
    rows = max(1, columns // wo)
    return [(i, i + 1, r, min(r + rows, ho)) for i in range(n) for r in range(0, ho, rows)]


def overlap(shift: int, size: int, out_size: int):
    """Output positions i in [0, out_size) whose input i + shift lies in [0, size), as
    ((i0, i1), (i0 + shift, i1 + shift)); (None, None) when there are none."""
    i0, i1 = max(0, -shift), min(out_size, size - shift)
    if i0 >= i1:
        return None, None
    return (i0, i1), (i0 + shift, i1 + shift)


def zeros_outside(plane: torch.Tensor, rows, cols) -> list:
    """Calls zeroing what lies outside rows x cols in the last two dimensions of ``plane``."""
    h, w = plane.shape[-2:]
    strips = []
    if rows[0] > 0:
        strips.append(plane[..., :rows[0], :])
    if rows[1] < h:
        strips.append(plane[..., rows[1]:, :])
    if cols[0] > 0:
        strips.append(plane[..., rows[0]:rows[1], :cols[0]])
    if cols[1] < w:
        strips.append(plane[..., rows[0]:rows[1], cols[1]:])
    return [strip.zero_ for strip in strips]


def padded(x: torch.Tensor, xpad: torch.Tensor | None, top: int,
           left: int) -> tuple[torch.Tensor, list]:
    """The input as windows read it (``xpad`` if given, else ``x``), and the calls that
    zero-pad ``x`` into ``xpad``, ``top`` rows and ``left`` columns in."""
    if xpad is None:
        return x, []
    inside = xpad[:, :, top:top + x.shape[2], left:left + x.shape[3]]
    return xpad, [xpad.zero_, functools.partial(inside.copy_, x)]


def flat_padded(x: torch.Tensor, xt: torch.Tensor, pads: tuple[int, int, int, int]) -> list:
    """Calls that write x (N, C, H, W), zero-padded by ``pads`` (top, bottom, left,
    right), into the flat channel-major ``xt`` (C, N*Hp*Wp, then any columns past the
    last sample, which the last taps of a shifted-window conv read beyond it: zeros)."""
    n, c, h, w = x.shape
    top, bottom, left, right = pads
    hp, wp = top + h + bottom, left + w + right
    grid = xt[:, :n * hp * wp].view(c, n, hp, wp)
    copy = functools.partial(grid[:, :, top:top + h, left:left + w].copy_, x.transpose(0, 1))
    if xt.numel() < ZERO_WHOLE_BELOW:
        return [xt.zero_, copy]
    tail = xt[:, n * hp * wp:]
    return [copy, *zeros_outside(grid, (top, top + h), (left, left + w)),
            *([tail.zero_] if tail.shape[1] else [])]
