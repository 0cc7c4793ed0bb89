"""Photos in, noisy training pairs out: the data layer for Noise2Noise.

Noise2Noise never shows the network a clean target: it learns from two independent
noisy views of the same clean patch, and the clean image only appears at validation.
Everything here stays in uint8 (images are ``(3, H, W)``, batches ``(N, 3, H, W)``,
RGB, channels first) because that is what photos and the course's ``.pkl`` files hold;
the trainer divides by 255 when it moves a batch to the device.

Sources of photos:

- ``embedded_photos()``: colour photos that ship inside the scikit-image wheel, so a
  fresh machine can train with no download and no data set to find;
- ``load_photo`` / ``load_folder``: your own photos, through Pillow (a run reads a
  folder a photo at a time, through ``folder.PhotoFolder``);
- ``load_pairs``: the EPFL EE-559 ``.pkl`` files, ``train_data.pkl`` (noisy, noisy) and
  ``val_data.pkl`` (noisy, clean).

``source_kind`` says which of the three a ``--data`` argument names.

Every problem with a file surfaces as one ``DataError`` whose message names the file.
All randomness comes from a ``torch.Generator`` passed in, so a seed fixes the data.
Writes are atomic (temp file in the same directory, then ``os.replace``): a crash or a
bad argument never leaves a half-written file where a good one was.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import torch

from .fileio import atomic_path
from .noise import NOISE_FORMS, Noise, NoiseMix, parse_noise  # noqa: F401 (re-exported)


__all__ = [
    "DataError", "EMBEDDED", "VALIDATION_PHOTOS", "embedded_photos", "embedded_split",
    "source_kind", "photo_size", "load_photo", "photo_files", "load_folder", "save_photo",
    "Noise", "NoiseMix", "parse_noise", "random_crops", "training_pairs", "augment_pairs",
    "validation_set", "load_pairs", "save_pairs",
]

Tensor = torch.Tensor


class DataError(Exception):
    """A file that cannot be used as data, with which file and why, on one line:
    ``photos/x.png: not an image (cannot identify image file)``."""

    def __init__(self, file: str | os.PathLike, problem: str):
        self.file = str(file)
        self.problem = problem
        super().__init__(f"{self.file}: {problem}")

    def __reduce__(self):  # the default would call DataError(message) and fail
        return DataError, (self.file, self.problem)


# ---------------------------------------------------------------------------------------
# Embedded photos
# ---------------------------------------------------------------------------------------

EMBEDDED = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry",
            "motorcycle_left", "motorcycle_right", "retina", "rocket")

# Split by image, never by crop: crops of one photo share content, so a validation crop
# from a training photo would measure memory, not denoising. coffee and rocket are two
# mid-sized everyday scenes (objects on a table; a structure against the sky) unlike
# anything in the training photos. The stereo motorcycle pair must stay on one side,
# since its two views are almost the same picture; both are kept for training.
VALIDATION_PHOTOS = ("coffee", "rocket")


@functools.lru_cache(maxsize=1)
def _embedded() -> dict[str, Tensor]:
    try:
        import skimage.data as sk  # imported here: slow to import, needed only here
    except ImportError as exc:
        raise ModuleNotFoundError("the embedded photos need scikit-image: "
                                  "pip install scikit-image") from exc
    left, right, _disparity = sk.stereo_motorcycle()
    arrays = {name: getattr(sk, name)() for name in EMBEDDED if not name.startswith("motorcycle")}
    arrays.update(motorcycle_left=left, motorcycle_right=right)
    return {name: _from_hwc(arrays[name]) for name in EMBEDDED}


def embedded_photos() -> dict[str, Tensor]:
    """The scikit-image colour photos, by name, as uint8 ``(3, H, W)``.

    Decoded once per process (about a second); each call returns copies, so a caller
    that edits a photo in place cannot corrupt the next caller's."""
    return {name: photo.clone() for name, photo in _embedded().items()}


def embedded_split() -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(train, val)``: the embedded photos split by image at ``VALIDATION_PHOTOS``."""
    photos = embedded_photos()
    train = {k: v for k, v in photos.items() if k not in VALIDATION_PHOTOS}
    val = {k: v for k, v in photos.items() if k in VALIDATION_PHOTOS}
    return train, val


def source_kind(source: str | os.PathLike | None) -> str:
    """Which data ``source`` (``--data``) names: ``"embedded"`` when none is given
    (scikit-image's photos), ``"pairs"`` for a ``.pkl`` file (the course's pairs),
    ``"photos"`` for anything else (a folder of photos; ``photo_files`` says so when it is
    not one). Training and evaluation both choose by this one rule."""
    if not source:
        return "embedded"
    return "pairs" if Path(source).suffix == ".pkl" else "photos"


# ---------------------------------------------------------------------------------------
# Photo files
# ---------------------------------------------------------------------------------------

PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _from_hwc(array: np.ndarray, out: Tensor | None = None) -> Tensor:
    """uint8 (H, W, 3) -> uint8 (3, H, W), copied once into ``out`` (else a new
    tensor). ``array`` is only read, so it may be a read-only view of Pillow's pixels."""
    if out is None:
        out = torch.empty((array.shape[2], *array.shape[:2]), dtype=torch.uint8)
    out.numpy()[...] = array.transpose(2, 0, 1)
    return out


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise DataError(path, "no such file")
    if path.is_dir():
        raise DataError(path, "is a directory, expected a file")


BAND_PIXELS = 2**20
"""A decoded photo is copied out of Pillow a band of about this many pixels at a time."""


def _to_rgb(image, path: Path) -> Tensor:
    """Any common mode to 8-bit RGB ``(3, H, W)``. Greyscale is repeated over the
    channels, alpha is dropped, palettes are expanded; 16-bit greyscale is scaled down
    (Pillow's own conversion would clip it to 255, turning most of the photo white).
    An RGB photo is copied out in bands of rows: at once only Pillow's pixels (4 bytes
    a pixel), the result (3) and a band are held, where a whole-image array would hold
    two more copies of it while it is made."""
    if image.mode.startswith("I;16"):
        values = np.asarray(image, dtype=np.float64) / 257.0
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return _from_hwc(np.repeat(grey[:, :, None], 3, axis=2))
    if image.mode in ("I", "F"):
        raise DataError(path, f"unsupported image mode {image.mode} (32-bit samples)")
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    width, height = rgb.size
    out = torch.empty((3, height, width), dtype=torch.uint8)
    rows = max(1, BAND_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        bottom = min(top + rows, height)
        _from_hwc(np.asarray(rgb.crop((0, top, width, bottom))), out[:, top:bottom])
    return out


@contextlib.contextmanager
def _pillow_errors(path: Path) -> Iterator[None]:
    """Pillow's errors about the file at ``path`` as one DataError naming it."""
    from PIL import UnidentifiedImageError
    from PIL.Image import DecompressionBombError

    try:
        yield
    except UnidentifiedImageError:
        raise DataError(path, "not an image (cannot identify image file)") from None
    except DecompressionBombError as exc:
        raise DataError(path, f"image too large to load safely ({exc})") from None
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's decoders raise all three
        raise DataError(path, f"corrupt or unreadable image ({_first_line(exc)})") from None


def photo_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of a photo from its file's header, without decoding the pixels: a
    check that each of many inputs is an image before the work on the first one starts."""
    from PIL import Image

    path = Path(path)
    _check_readable(path)
    with _pillow_errors(path), Image.open(path) as image:
        return image.size


def load_photo(path: str | os.PathLike) -> Tensor:
    """Read one photo as uint8 ``(3, H, W)`` RGB, upright (EXIF orientation applied)."""
    from PIL import Image, ImageOps

    path = Path(path)
    _check_readable(path)
    with _pillow_errors(path), Image.open(path) as image:
        image.load()  # decode now, so a truncated file fails here, not later
        ImageOps.exif_transpose(image, in_place=True)
        return _to_rgb(image, path)


def photo_files(path: str | os.PathLike) -> list[Path]:
    """The photo files directly inside a folder, sorted by name.

    Not recursive. Hidden files are skipped (macOS leaves ``._x.png`` resource forks
    next to photos that are not images). No photo at all is a DataError."""
    folder = Path(path)
    if not folder.exists():
        raise DataError(folder, "no such folder")
    if not folder.is_dir():
        raise DataError(folder, "is not a folder")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES
                   and not p.name.startswith("."))
    if not files:
        raise DataError(folder, f"no photos in folder (looked for {', '.join(PHOTO_SUFFIXES)})")
    return files


def load_folder(path: str | os.PathLike) -> dict[str, Tensor]:
    """All photos directly inside a folder (``photo_files``), by file name, decoded at
    once: for a few photos. Training and ``--eval`` read a folder through
    ``folder.PhotoFolder``, which decodes one photo at a time. A file that fails to load
    fails the whole call: silently training on fewer photos than you gave is worse
    than an error."""
    return {p.name: load_photo(p) for p in photo_files(path)}


def _check_photo(path: Path, photo) -> None:
    if not isinstance(photo, Tensor):
        raise DataError(path, f"cannot save {type(photo).__name__}, expected a uint8 tensor")
    if photo.dtype != torch.uint8 or photo.dim() != 3 or photo.shape[0] != 3:
        raise DataError(path, f"cannot save a {_describe(photo)}, expected uint8 (3, H, W)")


def save_photo(path: str | os.PathLike, photo: Tensor) -> None:
    """Write a uint8 ``(3, H, W)`` photo as PNG (lossless: a denoised result should not
    gain JPEG artefacts on the way out), atomically."""
    from PIL import Image

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise DataError(path, "save_photo writes PNG; give the file a .png name")
    _check_photo(path, photo)
    array = photo.detach().cpu().permute(1, 2, 0).contiguous().numpy()
    _atomic_write(path, lambda f: Image.fromarray(array).save(f, format="PNG"))


# ---------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------

def _atomic_write(path: Path, write: Callable) -> None:
    """Run ``write(file)`` on a temp file beside ``path``, then rename it over ``path``
    (see ``fileio.atomic_path``); an OS error becomes a DataError naming ``path``."""
    try:
        with atomic_path(path) as temp, open(temp, "wb") as f:
            write(f)
    except OSError as exc:
        raise DataError(path, f"cannot write ({exc.strerror or exc})") from None


# ---------------------------------------------------------------------------------------
# Crops and pairs
# ---------------------------------------------------------------------------------------

_CHUNK = 4096  # crops noised at a time: keeps the float temporaries near 50 MB


def photo_shape(photos: Mapping[str, Tensor], name: str) -> tuple[int, ...]:
    """The shape of photo ``name``: from ``photos.shape_of`` where the mapping has one
    (a folder.PhotoFolder reads it from the file's header, without decoding), else from
    the tensor, which must be uint8 ``(3, H, W)``."""
    shape_of = getattr(photos, "shape_of", None)
    if shape_of is not None:
        return tuple(shape_of(name))
    photo = photos[name]
    if photo.dtype != torch.uint8 or photo.dim() != 3 or photo.shape[0] != 3:
        raise DataError(name, f"expected a uint8 (3, H, W) photo, got {_describe(photo)}")
    return tuple(photo.shape)


def check_crop(photos: Mapping[str, Tensor], count: int, crop: int) -> list[str]:
    """The sorted names of ``photos``, each checked to hold a ``crop`` x ``crop`` crop,
    without decoding a lazy folder's photos. Sorted: the draw depends on the seed, not
    on dict order."""
    if not photos:
        raise ValueError("no photos to crop from")
    if count < 0 or crop < 1:
        raise ValueError(f"need count >= 0 and crop >= 1, got count={count}, crop={crop}")
    for name in photos:
        shape = photo_shape(photos, name)
        if min(shape[1:]) < crop:
            raise DataError(name, f"photo is {shape[1]}x{shape[2]}, "
                                  f"smaller than the {crop}x{crop} crop")
    return sorted(photos)


def random_crops(photos: Mapping[str, Tensor], count: int, crop: int,
                 generator: torch.Generator) -> Tensor:
    """``count`` clean uint8 ``(count, 3, crop, crop)`` crops at uniform random places.

    Each crop picks its photo uniformly, not by area: by area, the 1411x1411 retina
    (mostly black border) would supply half of all embedded training crops, and one big
    photo in a user's folder would drown the rest. The photos are looked up one at a
    time, so a lazy ``photos`` (folder.PhotoFolder) decodes one photo at a time."""
    names = check_crop(photos, count, crop)
    which = torch.randint(len(names), (count,), generator=generator)
    where = torch.rand((count, 2), generator=generator, dtype=torch.float64)
    out = torch.empty((count, 3, crop, crop), dtype=torch.uint8)
    for i, name in enumerate(names):
        rows = (which == i).nonzero().squeeze(1)
        if len(rows):  # a photo no crop chose is not decoded
            out[rows] = crops_of(photos[name], crop, where[rows])
    return out


def crops_of(photo: Tensor, crop: int, where: Tensor) -> Tensor:
    """Gather crops at fractional positions ``where`` (k, 2) in [0, 1) in one indexing op
    on the photo's (free, strided) view of all its crop windows."""
    spans = torch.tensor([photo.shape[1] - crop + 1, photo.shape[2] - crop + 1])
    top_left = (where * spans).long().minimum(spans - 1)
    windows = photo.cpu().unfold(1, crop, 1).unfold(2, crop, 1)  # (3, rows, cols, c, c)
    return windows[:, top_left[:, 0], top_left[:, 1]].transpose(0, 1)


def training_pairs(photos: Mapping[str, Tensor], count: int, crop: int, noise: Noise | str,
                   generator: torch.Generator, augment: bool = False) -> tuple[Tensor, Tensor]:
    """``(a, b)``: ``count`` random clean crops, each noised twice, independently.

    The Noise2Noise pair: input and target are two noisy views of one clean patch, so
    the expected target is the clean patch and an L2 loss learns to denoise. Both uint8
    ``(count, 3, crop, crop)``. The clean crops are the ones ``random_crops`` draws
    first from the same generator state. ``noise`` may be a string for parse_noise.
    ``augment`` then turns each pair by ``augment_pairs``, drawing from the generator
    after everything else, so the pairs without it are unchanged. All ``count`` at once,
    from one generator: a training run draws its pairs a chunk at a time instead, with a
    generator per chunk and row (pairs.PhotoPairs), in the same order of draws."""
    noise = parse_noise(noise) if isinstance(noise, str) else noise
    clean = random_crops(photos, count, crop, generator)
    a, b = noisy_views(clean, noise, generator, views=2)
    if augment:
        return augment_pairs(a, b, generator)
    return a, b


def augment_pairs(a: Tensor, b: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Each pair mirrored and turned by one of the 8 symmetries of the square, drawn
    uniformly from ``generator``, the same one for both images so the pair still shows one
    patch. Photos have no preferred orientation up to these, so the network sees eight
    times the variety for free. Non-square images only get the 4 flips (no transpose),
    which keep their shape. New tensors; ``a`` and ``b`` are left alone."""
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"expected two (N, C, H, W) batches of one shape, got "
                         f"{_describe(a)} and {_describe(b)}")
    kinds = 8 if a.shape[-1] == a.shape[-2] else 4
    which = torch.randint(kinds, (len(a),), generator=generator)
    out_a, out_b = torch.empty_like(a), torch.empty_like(b)
    for k in range(kinds):
        rows = (which == k).nonzero().squeeze(1)
        out_a.index_copy_(0, rows, _symmetry(a.index_select(0, rows), k))
        out_b.index_copy_(0, rows, _symmetry(b.index_select(0, rows), k))
    return out_a, out_b


def _symmetry(x: Tensor, k: int) -> Tensor:
    """Symmetry ``k`` of the square (0..7): ``k & 4`` transposes, ``k & 1`` flips
    left-right, ``k & 2`` flips top-bottom; the 8 combinations are the 4 rotations by 90
    degrees, each with and without a mirror."""
    if k & 4:
        x = x.transpose(-1, -2)
    if k & 1:
        x = x.flip(-1)
    if k & 2:
        x = x.flip(-2)
    return x


def validation_set(photos: Mapping[str, Tensor], count: int, crop: int, noise: Noise | str,
                   seed: int) -> tuple[Tensor, Tensor]:
    """``(noisy, clean)`` crops fixed by ``seed``: the same set on every run, so PSNR is
    comparable across runs and epochs. Its own generator, so it does not shift the
    training draw."""
    noise = parse_noise(noise) if isinstance(noise, str) else noise
    generator = torch.Generator().manual_seed(seed)
    clean = random_crops(photos, count, crop, generator)
    noisy = noisy_views(clean, noise, generator, views=1)[0]
    return noisy, clean


def noisy_views(clean: Tensor, noise: Noise | NoiseMix, generator: torch.Generator,
                views: int) -> list[Tensor]:
    """``views`` independent noisy copies of the crops ``clean``, noised ``_CHUNK`` crops
    at a time, every view of a chunk before the next chunk: that order of draws from
    ``generator`` is what a seed has always given. A NoiseMix draws each crop's kind and
    level first, shared by all its views (a pair is one scene at one noise level)."""
    noisy = [torch.empty_like(clean) for _ in range(views)]
    for start in range(0, len(clean), _CHUNK):
        part = slice(start, start + _CHUNK)
        shared = noise.draw(len(clean[part]), generator)  # a fixed level draws nothing
        for view in noisy:
            view[part] = noise.apply(clean[part], generator, shared)
    return noisy


# ---------------------------------------------------------------------------------------
# The course's .pkl pairs
# ---------------------------------------------------------------------------------------

def _describe(value) -> str:
    if isinstance(value, Tensor):
        return f"{str(value.dtype).removeprefix('torch.')} tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    if "WeightsUnpickler error:" in text:  # torch's message buries the reason mid-text
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = lines[0] if lines else type(exc).__name__
    return reason if len(reason) <= 100 else reason[:97] + "..."


def _check_pairs(path: Path, pair) -> tuple[Tensor, Tensor]:
    """The course's layout: two uint8 tensors, both ``(N, 3, H, W)``, one shape.

    Float tensors are refused rather than guessed at: 0..1 or 0..255 cannot be told
    apart reliably, and a wrong guess trains on images 255 times too dark or bright."""
    if not isinstance(pair, (tuple, list)) or len(pair) != 2 \
            or not all(isinstance(t, Tensor) for t in pair):
        inner = f" ({', '.join(_describe(t) for t in pair)})" \
            if isinstance(pair, (tuple, list)) and len(pair) <= 4 else ""
        raise DataError(path, f"expected a pair (a, b) of tensors, got {_describe(pair)}{inner}")
    for which, t in zip(("first", "second"), pair):
        if t.dtype != torch.uint8:
            raise DataError(path, f"{which} tensor is {_describe(t)}, expected uint8 (0..255)")
        if t.dim() != 4 or t.shape[1] != 3 or 0 in t.shape:
            raise DataError(path, f"{which} tensor is {_describe(t)}, "
                                  f"expected (N, 3, H, W) with N, H, W >= 1")
    if pair[0].shape != pair[1].shape:
        raise DataError(path, f"the tensors differ in shape: {tuple(pair[0].shape)} vs "
                              f"{tuple(pair[1].shape)}")
    return pair[0], pair[1]


def load_pairs(path: str | os.PathLike) -> tuple[Tensor, Tensor]:
    """Read a course ``.pkl``: ``train_data.pkl`` gives (noisy, noisy), ``val_data.pkl``
    gives (noisy, clean). Loaded with ``weights_only=True`` (a pickle from elsewhere
    cannot run code) onto the CPU, whatever device it was saved from."""
    path = Path(path)
    _check_readable(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about old pickle protocols
            pair = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises half a dozen types for a bad file
        raise DataError(path, "not a torch file of tensors, or corrupt "
                              f"({_first_line(exc)})") from None
    return _check_pairs(path, pair)


def save_pairs(path: str | os.PathLike, a: Tensor, b: Tensor) -> None:
    """Write ``(a, b)`` in the course's format, atomically; ``load_pairs`` reads it back.

    Checked first, so a file that cannot be loaded back is never written. Each tensor is
    saved from a compact CPU copy: ``torch.save`` of a slice stores its whole storage."""
    path = Path(path)
    pair = _check_pairs(path, (a, b))
    compact = tuple(t.detach().cpu().clone(memory_format=torch.contiguous_format) for t in pair)
    _atomic_write(path, lambda f: torch.save(compact, f))
