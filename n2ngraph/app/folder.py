"""A folder of photos read one photo at a time, so memory does not grow with the folder.

``load_folder`` decodes every photo up front: a folder of a thousand 12-megapixel photos
would need 36 GB. ``PhotoFolder`` reads only each file's header when it is made (its size,
and that it is an image at all, so a stray text file stops a run before its first step),
and decodes a photo when one is asked for, keeping the most recently used decoded photos
in 8 bits up to ``CACHE_BYTES``. Which photos are decoded when never changes what is
drawn from them: the cache only saves decoding a photo again.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Iterator

import torch

from .data import load_photo, photo_files, photo_size

CACHE_BYTES = 256 * 2**20
"""How many bytes of decoded 8-bit photos a folder keeps for reuse (about 85 megapixels):
all of a folder of a few dozen ordinary photos, so each is decoded once per run."""


class PhotoFolder(Mapping):
    """The photos of ``files`` (default: ``data.photo_files(folder)``), by file name, in
    sorted order, as uint8 ``(3, H, W)``, decoded when looked up. ``shape_of(name)`` is the
    shape from the file's header, without decoding. Safe to read from several threads."""

    def __init__(self, folder: str | os.PathLike, files: list[Path] | None = None,
                 cache_bytes: int | None = None):
        self.folder = Path(folder)
        files = photo_files(folder) if files is None else files
        self._paths = {path.name: path for path in sorted(files, key=lambda p: p.name)}
        self._shapes = {name: _header_shape(path) for name, path in self._paths.items()}
        self._cache = _Cache(CACHE_BYTES if cache_bytes is None else cache_bytes)

    def subset(self, names: list[str]) -> "PhotoFolder":
        """The photos ``names`` of this folder, sharing its cache (and its budget): a
        run's training and validation photos hold ``CACHE_BYTES`` between them."""
        part = PhotoFolder.__new__(PhotoFolder)
        part.folder, part._cache = self.folder, self._cache
        part._paths = {name: self._paths[name] for name in sorted(names)}
        part._shapes = {name: self._shapes[name] for name in part._paths}
        return part

    def shape_of(self, name: str) -> tuple[int, int, int]:
        return self._shapes[name]

    def __getitem__(self, name: str) -> torch.Tensor:
        path = self._paths[name]
        photo = self._cache.get(path)
        if photo is None:
            photo = load_photo(path)  # outside the cache's lock: decoding is the slow part
            self._cache.keep(path, photo)
        return photo

    def cached_bytes(self) -> int:
        return self._cache.bytes()

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


class _Cache:
    """Decoded photos by path, the least recently used let go beyond ``budget`` bytes."""

    def __init__(self, budget: int):
        self.budget = budget
        self._photos: OrderedDict[Path, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path) -> torch.Tensor | None:
        with self._lock:
            photo = self._photos.get(path)
            if photo is not None:
                self._photos.move_to_end(path)
            return photo

    def keep(self, path: Path, photo: torch.Tensor) -> None:
        """Caches ``photo``; one larger than the whole budget is not kept at all."""
        if photo.numel() > self.budget:
            return
        with self._lock:
            self._photos[path] = photo
            self._photos.move_to_end(path)
            while sum(p.numel() for p in self._photos.values()) > self.budget:
                self._photos.popitem(last=False)

    def bytes(self) -> int:
        with self._lock:
            return sum(p.numel() for p in self._photos.values())


def _header_shape(path: Path) -> tuple[int, int, int]:
    """(3, height, width) from the header. A photo whose EXIF orientation turns it a
    quarter comes out of ``load_photo`` transposed; its shorter side, which is what a
    crop must fit in, is the same either way."""
    width, height = photo_size(path)
    return 3, height, width
