"""Whole photos through a network that changes sizes: pad, run, crop back.

Strided convolutions and upsampling only map sizes that are multiples of some factor
back to themselves (4 for the seed net). Rather than assume the factor, ask the
compiler's shape inference for the smallest size >= the photo's that comes back
unchanged, pad the photo to it by mirroring its border, and crop the result. Large
photos go through in tiles (``TILE``), each cut from the 8-bit photo and rounded back
to 8 bits on its own, so memory does not grow with the photo's float32 copies.
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
    'reflect', repeated for pads larger than the image). A negative ``top`` or ``left``
    starts that far inside: a window of the mirrored photo, which reads only the part
    of ``x`` the window covers."""
    h, w = x.shape[2:]
    rows = [reflected(i, h) for i in range(-top, height - top)]
    cols = [reflected(j, w) for j in range(-left, width - left)]
    r0, c0 = min(rows), min(cols)
    covered = x[:, :, r0:max(rows) + 1, c0:max(cols) + 1]
    return (covered.index_select(2, torch.tensor(rows, device=x.device) - r0)
            .index_select(3, torch.tensor(cols, device=x.device) - c0))


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
tile at a time: an inference plan holds every activation of its input. Peak RSS of
``--denoise`` through the U-Net, one thread (tools/peak_memory): a 2000x1500 photo
2,949 MiB in one piece, 1,253 MiB in tiles; in tiles of the full 1152x1152 window, a
2048x2048 photo 1,556 MiB and a 6000x4000 one 1,642 MiB: beyond the window's work a
photo costs about 5 bytes a pixel (its 8-bit pixels in and out)."""

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
    (``tile=None``: whole).

    Only a window is ever in floating point, and only it goes to the device: each is
    cut from the 8-bit photo, scaled to [0, 1], run, rounded back to 8 bits and put in
    place. So a photo of any size costs its 8-bit pixels in and out, and a window's
    work. The result is channels-last in memory (N, H, W, 3 underneath), the layout an
    image file wants, so saving it copies nothing."""
    out = torch.empty(photos.shape, dtype=torch.uint8, memory_format=torch.channels_last)
    forward = _forward(model, ensemble)
    _each_window(photos, out, lambda part: forward(part.to(device=device, dtype=dtype).div_(255)),
                 to_uint8, _windows(spec, *photos.shape[2:], tile, margin))
    return out


def denoise_float(model, spec: Spec, x: torch.Tensor, *, ensemble: bool = False,
                  tile: int | None = TILE, margin: int = TILE_MARGIN) -> torch.Tensor:
    """``denoise`` on values in [0, 1], before rounding to 8 bits."""
    out = torch.empty_like(x)
    _each_window(x, out, _forward(model, ensemble), lambda y: y,
                 _windows(spec, *x.shape[2:], tile, margin))
    return out


def _forward(model, ensemble: bool):
    return functools.partial(self_ensemble, model.forward) if ensemble else model.forward


def _windows(spec: Spec, h: int, w: int, tile: int | None, margin: int):
    """The windows an h x w photo goes through, each ``(top, left, height, width, m)``:
    where it starts in the photo (negative: in the mirrored surroundings), its size, and
    the margin ``m`` of context around its centre that is computed and thrown away.
    Tiles all share one size, so one compiled plan runs them all; a photo within one
    window, or a network no tile size fits, goes whole, mirrored up to a size it keeps."""
    if tile is not None and h * w > (tile + 2 * margin) ** 2:
        th, tw = _tile_side(h, tile), _tile_side(w, tile)
        window = (th + 2 * margin, tw + 2 * margin)
        if fitting_shape(spec, *window) == window:
            return [(y0 - margin, x0 - margin, *window, margin)
                    for y0 in range(0, h, th) for x0 in range(0, w, tw)]
    return [(0, 0, *fitting_shape(spec, h, w), 0)]


def _tile_side(size: int, most: int) -> int:
    """The side of the fewest equal tiles of at most ``most`` (rounded up to ALIGN)
    that cover ``size``: the least work wasted past the photo's edge."""
    count = -(-size // most)
    return -(-size // (count * ALIGN)) * ALIGN


def _each_window(source: torch.Tensor, out: torch.Tensor, run, finish, windows) -> None:
    """For each window of ``windows`` (``_windows``): cut it from ``source``, mirrored
    where it reaches past the border, ``run`` it, and write ``finish`` of its centre,
    less what lies past the photo, into ``out`` where the centre belongs."""
    h, w = source.shape[2:]
    for top, left, height, width, m in windows:
        y0, x0 = top + m, left + m
        rows, cols = min(height - 2 * m, h - y0), min(width - 2 * m, w - x0)
        result = run(mirror_pad(source, height, width, -top, -left).contiguous())
        out[:, :, y0:y0 + rows, x0:x0 + cols] = finish(result[:, :, m:m + rows, m:m + cols])


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
