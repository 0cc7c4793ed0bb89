"""An epoch's training pairs, drawn a chunk at a time, each chunk a pure function of
(seed, epoch, chunk): so memory holds a chunk, not an epoch, and a resumed run draws
again exactly the batches it would have trained on.

An epoch is ``pairs // batch`` steps of ``batch`` pairs. Its steps are cut into chunks
of ``steps_per_chunk`` steps, about ``CHUNK_PIXELS`` pixels of pairs each, so a chunk
is the same few megabytes whatever ``--pairs`` is. Within a chunk, the pairs at row
``j`` of every batch are drawn by their own generator, seeded from (seed, epoch, chunk,
j): a share of each batch's rows (``share(rank, ranks, batch)``, for data-parallel
training) is drawn without drawing the rest, and the shares of all ranks put together
are the batches one process draws. The stream depends on the plan (pairs, batch, crop)
too, which a run keeps from start to end.
"""

from __future__ import annotations

import hashlib
from typing import Mapping

import attrs
import torch

from .data import Noise, augment_pairs, check_crop, crops_of, noisy_views

Tensor = torch.Tensor

CHUNK_PIXELS = 2**20
"""Pixels of pairs a chunk holds, at least one step's: 1024 pairs of 32x32 crops (3 MiB
a view in 8 bits), 256 of 64x64. Changing it changes every run's data."""

PHOTOS_PER_CHUNK = 16
"""A chunk's crops come from at most this many photos, drawn from (seed, epoch, chunk):
a chunk then decodes at most this many photos of a large folder, however many it holds;
a folder of up to this many photos (scikit-image's seven) is used whole in every chunk.
Changing it changes the data of larger folders."""


def derived_seed(*parts: int | str) -> int:
    """A 63-bit seed that depends on every one of ``parts`` (a hash, not a sum: seed 1,
    epoch 0 and seed 0, epoch 1 share nothing)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def row_generator(seed: int, epoch: int, chunk: int, row: int) -> torch.Generator:
    """The generator of the pairs at ``row`` of each batch of ``chunk``."""
    return torch.Generator().manual_seed(derived_seed("pairs", seed, epoch, chunk, row))


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator an epoch's shuffle of fixed pairs draws from (the course's .pkl),
    as it always was: seed x 1,000,003 + epoch + 500,000."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch + 500_000)


def share(rank: int, ranks: int, batch: int) -> range:
    """The rows of each batch that ``rank`` of ``ranks`` trains on: an equal, contiguous
    share, so the shares in rank order are the whole batch."""
    if not 0 <= rank < ranks or batch % ranks:
        raise ValueError(f"cannot share a batch of {batch} as rank {rank} of {ranks} "
                         f"(the batch must be a multiple of the number of ranks)")
    size = batch // ranks
    return range(rank * size, (rank + 1) * size)


@attrs.frozen
class EpochPlan:
    """How an epoch of ``pairs`` pairs of ``pixels`` pixels each is cut into steps of
    ``batch`` and chunks of steps. ``steps`` are trained; a last partial batch is drawn
    (``drawn_steps``, for ``--export``, which writes every pair) but not trained on: a
    program is compiled for one batch shape."""

    pairs: int
    batch: int
    pixels: int

    def __attrs_post_init__(self):
        if not 1 <= self.batch <= self.pairs or self.pixels < 1:
            raise ValueError(f"an epoch of {self.pairs} pairs of {self.pixels} pixels cannot be "
                             f"cut into batches of {self.batch}")

    @property
    def steps(self) -> int:
        return self.pairs // self.batch

    @property
    def drawn_steps(self) -> int:
        return -(-self.pairs // self.batch)

    @property
    def steps_per_chunk(self) -> int:
        return max(1, CHUNK_PIXELS // (self.batch * self.pixels))

    @property
    def chunks(self) -> int:
        return -(-self.drawn_steps // self.steps_per_chunk)

    def chunk_steps(self, chunk: int) -> range:
        first = chunk * self.steps_per_chunk
        return range(first, min(first + self.steps_per_chunk, self.drawn_steps))

    def rows(self, rows: range | None) -> range:
        """``rows`` (all of a batch when None), checked to lie within a batch."""
        rows = range(self.batch) if rows is None else rows
        if len(rows) == 0 or rows.step != 1 or rows.start < 0 or rows.stop > self.batch:
            raise ValueError(f"rows {rows} are not a share of a batch of {self.batch}")
        return rows


class PhotoPairs:
    """Fresh Noise2Noise pairs from random crops of ``photos`` (a mapping, which may decode
    lazily: folder.PhotoFolder), noised twice with ``noise``, turned with ``augment``."""

    def __init__(self, photos: Mapping[str, Tensor], plan: EpochPlan, crop: int, noise: Noise,
                 seed: int, augment: bool = False):
        self.names = check_crop(photos, 0, crop)
        self.photos, self.plan, self.crop = photos, plan, crop
        self.noise, self.seed, self.augment = noise, seed, augment

    def chunk_photos(self, epoch: int, chunk: int) -> list[str]:
        """The photos ``chunk`` crops from: all, or ``PHOTOS_PER_CHUNK`` of them."""
        if len(self.names) <= PHOTOS_PER_CHUNK:
            return self.names
        generator = torch.Generator().manual_seed(derived_seed("photos", self.seed, epoch, chunk))
        chosen = torch.randperm(len(self.names), generator=generator)[:PHOTOS_PER_CHUNK]
        return [self.names[i] for i in sorted(chosen.tolist())]

    def draw(self, epoch: int, chunk: int, rows: range | None = None) -> tuple[Tensor, Tensor]:
        """``(a, b)``, uint8 ``(steps, len(rows), 3, crop, crop)``: the pairs at ``rows``
        of each batch of ``chunk``. Row j's generator draws, in this order, each crop's
        photo and place, the first noisy views, the second, and the turns."""
        rows = self.plan.rows(rows)
        count = len(self.plan.chunk_steps(chunk))
        names = self.chunk_photos(epoch, chunk)
        generators = [row_generator(self.seed, epoch, chunk, row) for row in rows]
        which = torch.stack([torch.randint(len(names), (count,), generator=g) for g in generators])
        where = torch.stack([torch.rand((count, 2), generator=g, dtype=torch.float64)
                             for g in generators])
        clean = self._crops(names, which.flatten(), where.flatten(0, 1))
        clean = clean.view(len(rows), count, 3, self.crop, self.crop)
        a = torch.empty((count, len(rows), 3, self.crop, self.crop), dtype=torch.uint8)
        b = torch.empty_like(a)
        for j, generator in enumerate(generators):
            x, y = noisy_views(clean[j], self.noise, generator, views=2)
            if self.augment:
                x, y = augment_pairs(x, y, generator)
            a[:, j], b[:, j] = x, y
        return a, b

    def _crops(self, names: list[str], which: Tensor, where: Tensor) -> Tensor:
        """The crops ``which`` photo, at ``where``, gathered a photo at a time: each photo
        of the chunk is looked up (decoded, if not cached) once."""
        out = torch.empty((len(which), 3, self.crop, self.crop), dtype=torch.uint8)
        for i, name in enumerate(names):
            rows = (which == i).nonzero().squeeze(1)
            if len(rows):
                out[rows] = crops_of(self.photos[name], self.crop, where[rows])
        return out


class FixedPairs:
    """The pairs ``(a, b)`` of a file (the course's .pkl), the first ``plan.pairs`` of
    them, in a new order each epoch, turned with ``augment``. Unturned, each epoch's
    batches are the ones the whole-epoch shuffle always gave."""

    def __init__(self, a: Tensor, b: Tensor, plan: EpochPlan, seed: int, augment: bool = False):
        if len(a) != len(b) or len(a) < plan.pairs:
            raise ValueError(f"an epoch of {plan.pairs} pairs from {len(a)} and {len(b)} images")
        self.a, self.b, self.plan = a[:plan.pairs], b[:plan.pairs], plan
        self.seed, self.augment = seed, augment
        self._order: tuple[int, Tensor] | None = None

    def order(self, epoch: int) -> Tensor:
        """The epoch's permutation of the pairs (8 bytes a pair), kept for its chunks."""
        kept = self._order
        if kept is None or kept[0] != epoch:
            kept = (epoch, torch.randperm(len(self.a), generator=epoch_generator(self.seed, epoch)))
            self._order = kept
        return kept[1]

    def draw(self, epoch: int, chunk: int, rows: range | None = None) -> tuple[Tensor, Tensor]:
        """``(a, b)``, ``(steps, len(rows), 3, H, W)``: the pairs at ``rows`` of each batch
        of ``chunk``; with ``augment``, row j's turns drawn by row j's generator."""
        rows = self.plan.rows(rows)
        steps = torch.tensor(self.plan.chunk_steps(chunk))
        positions = steps[:, None] * self.plan.batch + torch.tensor(rows)[None, :]
        index = self.order(epoch)[positions % len(self.a)]  # past the end: a last batch cut short
        a, b = self.a[index], self.b[index]
        if self.augment:
            for j, row in enumerate(rows):
                a[:, j], b[:, j] = augment_pairs(a[:, j], b[:, j],
                                                 row_generator(self.seed, epoch, chunk, row))
        return a, b


def whole_epoch(source, epoch: int) -> tuple[Tensor, Tensor]:
    """All ``plan.pairs`` pairs of ``epoch``, ``(pairs, 3, H, W)`` each, in training order
    (for ``--export``): filled a chunk at a time, so only the result is held whole."""
    plan = source.plan
    out_a = out_b = None
    for chunk in range(plan.chunks):
        a, b = source.draw(epoch, chunk)
        a, b = a.flatten(0, 1), b.flatten(0, 1)
        if out_a is None:
            out_a = torch.empty((plan.pairs, *a.shape[1:]), dtype=a.dtype)
            out_b = torch.empty_like(out_a)
        first = plan.chunk_steps(chunk).start * plan.batch
        count = min(len(a), plan.pairs - first)
        out_a[first:first + count], out_b[first:first + count] = a[:count], b[:count]
    return out_a, out_b

