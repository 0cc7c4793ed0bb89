"""Whole photos through a network that changes sizes: pad, run, crop back.

Strided convolutions and upsampling only map sizes that are multiples of some factor
back to themselves (4 for the seed net). Rather than assume the factor, ask the
compiler's shape inference for the smallest size >= the photo's that comes back
unchanged, pad the photo to it by mirroring its border, and crop the result.
"""

from __future__ import annotations

import functools

import torch

from ..errors import SpecError
from ..compiler.shapes import infer_shapes
from ..ops.tensor import reflected
from ..compiler.spec import Spec


@functools.lru_cache(maxsize=256)
def _fitting(spec: Spec, size: int, axis: int) -> int:
    first = spec.inputs[0]
    for candidate in range(size, size + 257):
        shape = [1, first.channels, 8, 8]
        shape[2 + axis] = candidate
        try:
            out = infer_shapes(spec, {first.name: tuple(shape)}, [spec.output])[spec.output]
        except SpecError:
            continue
        if out[2 + axis] == candidate:
            return candidate
    raise SpecError(f"no input size near {size} comes out of the network unchanged",
                    file=spec.file, field="output")


def fitting_shape(spec: Spec, height: int, width: int) -> tuple[int, int]:
    return _fitting(spec, height, 0), _fitting(spec, width, 1)


def mirror_pad(x: torch.Tensor, height: int, width: int, top: int = 0, left: int = 0) -> torch.Tensor:
    """(N, C, H, W) extended to (height, width) by reflection, ``top`` rows above and
    ``left`` columns to the left, the rest below and to the right (the pad op's
    'reflect', repeated for pads larger than the image)."""
    h, w = x.shape[2:]
    rows = torch.tensor([reflected(i, h) for i in range(-top, height - top)], device=x.device)
    cols = torch.tensor([reflected(j, w) for j in range(-left, width - left)], device=x.device)
    return x.index_select(2, rows).index_select(3, cols)


def self_ensemble(forward, x: torch.Tensor) -> torch.Tensor:
    """The mean of ``forward`` over the eight flips and quarter turns of ``x``, each
    result turned back: "geometric self-ensemble". A denoiser trained with flips and
    rotations has no favourite orientation, so its eight answers err differently and
    their mean is closer to the truth (about +0.27 dB for the shipped U-Net on
    Kodak24 at sigma 25), for eight times the work."""
    total = None
    for turns in range(4):
        for flip in (False, True):
            view = x.rot90(turns, (2, 3))
            view = view.flip(3) if flip else view
            y = forward(view.contiguous())
            y = (y.flip(3) if flip else y).rot90(-turns, (2, 3))
            total = y.clone() if total is None else total.add_(y)
    return total.div_(8)


TILE = 1024
"""Photos of more pixels than one window (TILE + 2 * TILE_MARGIN square) are denoised a
tile at a time: an inference plan holds every activation of its input, and the U-Net's
took 3.0 GB for a 2000x1500 photo in one piece, 1.3 GB in tiles (peak RSS of
``--denoise``, one thread), which stays so for photos of any size."""

TILE_MARGIN = 64
"""Context on every side of a tile, computed and thrown away: wider than the U-Net's
reach, so a tile's pixels come out as they would from the whole photo."""

ALIGN = 32
"""Tiles and margins are multiples of this, so every window starts on the pooling grid
of a network that halves the image up to five times."""


def denoise(model, spec: Spec, photos: torch.Tensor, *, device="cpu", dtype=torch.float32,
            ensemble: bool = False, tile: int | None = TILE, margin: int = TILE_MARGIN) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> denoised uint8 of the same shape, any H and W; with
    ``ensemble``, the mean over the eight orientations (``self_ensemble``). Photos
    larger than a window go through in tiles of at most ``tile`` pixels a side
    (``tile=None``: whole)."""
    return to_uint8(denoise_float(model, spec, photos.to(device=device, dtype=dtype) / 255,
                                  ensemble=ensemble, tile=tile, margin=margin))


def denoise_float(model, spec: Spec, x: torch.Tensor, *, ensemble: bool = False,
                  tile: int | None = TILE, margin: int = TILE_MARGIN) -> torch.Tensor:
    """``denoise`` on values in [0, 1], before rounding to 8 bits."""
    run = functools.partial(self_ensemble, model.forward) if ensemble else model.forward
    n, c, h, w = x.shape
    if tile is not None and h * w > (tile + 2 * margin) ** 2:
        th, tw = _tile_side(h, tile), _tile_side(w, tile)
        window = (th + 2 * margin, tw + 2 * margin)
        if fitting_shape(spec, *window) == window:
            return _tiled(run, x, th, tw, margin)
    fit_h, fit_w = fitting_shape(spec, h, w)
    return run(mirror_pad(x, fit_h, fit_w))[:, :, :h, :w]


def _tile_side(size: int, most: int) -> int:
    """The side of the fewest equal tiles of at most ``most`` (rounded up to ALIGN)
    that cover ``size``: the least work wasted past the photo's edge."""
    count = -(-size // most)
    return -(-size // (count * ALIGN)) * ALIGN


def _tiled(run, x: torch.Tensor, th: int, tw: int, margin: int) -> torch.Tensor:
    """``run`` over windows of one size (one compiled plan): each a th x tw tile and its
    margin, cut from the photo mirrored outwards by ``margin`` and up to whole tiles;
    the windows' centres laid side by side."""
    n, c, h, w = x.shape
    rows, cols = -(-h // th), -(-w // tw)
    canvas = mirror_pad(x, rows * th + 2 * margin, cols * tw + 2 * margin, margin, margin)
    out = torch.empty(n, c, rows * th, cols * tw, dtype=x.dtype, device=x.device)
    for i in range(rows):
        for j in range(cols):
            y0, x0 = i * th, j * tw
            window = canvas[:, :, y0:y0 + th + 2 * margin, x0:x0 + tw + 2 * margin]
            out[:, :, y0:y0 + th, x0:x0 + tw] = run(window.contiguous())[
                :, :, margin:margin + th, margin:margin + tw]
    return out[:, :, :h, :w]


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
