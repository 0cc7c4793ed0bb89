"""Training from single noisy photos: Neighbor2Neighbor (Huang et al., CVPR 2021).

A user with only noisy photos has no second view of any scene. A random neighbour
sub-sampler makes one: cut the photo into 2x2 cells and, in each cell, take two
different pixels that touch (side by side or one above the other); the first of each
cell makes ``g1(y)``, the second ``g2(y)``, two half-size images whose noise is
independent (noise independent per pixel) and whose clean images differ only by a
pixel's shift. Training ``f(g1(y))`` towards ``g2(y)`` is Noise2Noise on them, up to that
shift; the paper's regulariser pulls the shift's share back out:

    L = ||f(g1 y) - g2 y||^2 + gamma ||f(g1 y) - g2 y - (g1 f(y) - g2 f(y))||^2,

with ``f(y)``, the network on the whole noisy photo, held constant (no gradient through
it). With ``a = f(g1 y)``, ``b = g2 y`` and the constant ``c = g1 f(y) - g2 f(y)``:

    ||a - b||^2 + gamma ||a - b - c||^2
        = (1 + gamma) ||a - (b + gamma c / (1 + gamma))||^2 + gamma/(1 + gamma) ||c||^2,

so a step is the spec's own MSE step against the target ``b + gamma c / (1 + gamma)``,
after an inference pass of the same network on the whole photos gives ``c``: no new
gradient code. The factor ``1 + gamma`` scales the gradient: SGD's learning rate is
multiplied by it (exact, momentum included, without weight decay; with it, the decay is
scaled too). Adam's rate is left alone: a constant loss scale moves Adam only through
its eps, so a step is Adam's on the paper's loss with eps (1 + gamma) times the
recipe's (3e-8 for the default 1e-8). Norm clipping sees the unscaled MSE gradient. The
loss a run logs is the paper's ``L``. tests/test_neighbours.py checks both optimizers'
steps against torch autograd of ``L``.

``gamma`` is fixed at ``GAMMA`` = 2, the paper's value; the authors' code instead ramps
it from 0 up to 2 over the epochs, which this does not do. Both terms are means over
the pixels, as in their code.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Iterator

import attrs
import torch

from .data import photo_shape
from .noise import Noise, NoiseMix
from .pairs import EpochPlan, PhotoPairs, derived_seed

Tensor = torch.Tensor

GAMMA = 2.0
"""The regulariser's weight: the paper's gamma."""

NEIGHBOURS = ((0, 1), (0, 2), (1, 3), (2, 3), (1, 0), (2, 0), (3, 1), (3, 2))
"""The eight ordered pairs of touching pixels of a 2x2 cell, whose pixels are numbered
0 1 / 2 3 (row by row): a choice in 0..7 names which pixel goes to g1 and which to g2."""


def subsample(images: Tensor, choices: Tensor) -> tuple[Tensor, Tensor]:
    """``(g1, g2)``: the half-size images ``(N, C, H/2, W/2)`` that ``choices`` (integers
    0..7, ``(N, H/2, W/2)``: a pair of ``NEIGHBOURS`` per cell, the same for all
    channels) picks from ``images`` ``(N, C, H, W)``, H and W even."""
    n, c, h, w = images.shape
    if h % 2 or w % 2 or choices.shape != (n, h // 2, w // 2):
        raise ValueError(f"cannot sub-sample images {tuple(images.shape)} by choices "
                         f"{tuple(choices.shape)}: need even sides and a choice per 2x2 cell")
    cells = images.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 2, 4, 3, 5)
    cells = cells.reshape(n, c, h // 2, w // 2, 4)
    pairs = torch.tensor(NEIGHBOURS, device=images.device)[choices.to(images.device).long()]

    def pick(which: int) -> Tensor:
        index = pairs[..., which][:, None, :, :, None].expand(n, c, h // 2, w // 2, 1)
        return cells.gather(4, index).squeeze(4)
    return pick(0), pick(1)


def draw_choices(count: int, half: int, generator: torch.Generator) -> Tensor:
    """A random neighbour pair for each cell of ``count`` crops of ``half`` x ``half``
    cells, uint8 ``(count, half, half)``, uniform over the eight."""
    return torch.randint(len(NEIGHBOURS), (count, half, half), generator=generator,
                         dtype=torch.uint8)


class NoisyCopies(Mapping):
    """``photos`` (a mapping, maybe lazy: folder.PhotoFolder), each noised once with
    ``noise`` by a generator of its own from (``seed``, its name): a fixed noisy copy, as
    a camera would have taken it, for testing single-photo training where the clean
    photos are known. Which photo is looked up when changes nothing; the most recently
    used copies are kept up to ``cache_bytes``."""

    def __init__(self, photos: Mapping[str, Tensor], noise: Noise | NoiseMix, seed: int,
                 cache_bytes: int = 256 * 2**20):
        self.photos, self.noise, self.seed = photos, noise, seed
        self.budget = cache_bytes
        self._kept: OrderedDict[str, Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def shape_of(self, name: str) -> tuple[int, ...]:
        return photo_shape(self.photos, name)

    def __getitem__(self, name: str) -> Tensor:
        with self._lock:
            if name in self._kept:
                self._kept.move_to_end(name)
                return self._kept[name]
        generator = torch.Generator().manual_seed(derived_seed("noisy copy", self.seed, name))
        copy = self.noise.apply(self.photos[name], generator)
        with self._lock:
            self._kept[name] = copy
            while sum(p.numel() for p in self._kept.values()) > self.budget and len(self._kept) > 1:
                self._kept.popitem(last=False)
        return copy

    def __iter__(self) -> Iterator[str]:
        return iter(self.photos)

    def __len__(self) -> int:
        return len(self.photos)


class SinglePhotos:
    """A pair source for ``--pairs-from single``: ``draw`` gives, for the rows of each
    batch of a chunk, random crops of the noisy ``photos`` (uint8 ``(steps, rows, 3,
    crop, crop)``, turned with ``augment``) and each crop's neighbour choices (uint8
    ``(steps, rows, crop/2, crop/2)``). Crops as PhotoPairs draws them, choices from a
    generator of (seed, epoch, chunk, row) of their own: a pure function of those, as
    every pair source is (pairs.py)."""

    def __init__(self, photos: Mapping[str, Tensor], plan: EpochPlan, crop: int, seed: int,
                 augment: bool = False):
        if crop % 2:
            raise ValueError(f"single-photo training needs an even crop, got {crop}")
        self.crops = PhotoPairs(photos, plan, crop, Noise("none"), seed, augment=augment)
        self.plan, self.crop, self.seed = plan, crop, seed

    def draw(self, epoch: int, chunk: int, rows: range | None = None) -> tuple[Tensor, Tensor]:
        rows = self.plan.rows(rows)
        noisy, _same = self.crops.draw(epoch, chunk, rows)
        choices = torch.empty((noisy.shape[0], len(rows), self.crop // 2, self.crop // 2),
                              dtype=torch.uint8)
        for j, row in enumerate(rows):
            generator = torch.Generator().manual_seed(
                derived_seed("neighbours", self.seed, epoch, chunk, row))
            choices[:, j] = draw_choices(noisy.shape[0], self.crop // 2, generator)
        return noisy, choices


def self_supervised_validation(noisy: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """``(g1, g2)`` of the noisy crops ``noisy``, by choices fixed by ``seed``: with no
    clean photo, a run validates on how close ``f(g1)`` comes to the second noisy view
    ``g2``: the noise's variance above the true error (and a pixel's shift), so higher
    is still better, but it is no PSNR against a clean image."""
    generator = torch.Generator().manual_seed(derived_seed("neighbour validation", seed))
    return subsample(noisy, draw_choices(len(noisy), noisy.shape[-1] // 2, generator))


@attrs.frozen
class NeighbourLoss:
    """The paper's loss as an MSE step (see the module's docstring), with weight ``gamma``."""

    gamma: float = GAMMA

    def batch(self, model, noisy: Tensor, choices: Tensor, device, dtype) -> tuple[Tensor, Tensor, float]:
        """(input ``g1 y``, target ``g2 y + gamma c / (1 + gamma)``, the loss's constant
        ``gamma / (1 + gamma) mean(c^2)``) for the uint8 noisy crops and their choices;
        ``model.forward`` on the whole crops gives ``c``, an inference pass."""
        y = noisy.to(device=device, dtype=dtype).div_(255)
        g1, g2 = subsample(y, choices)
        f1, f2 = subsample(model.forward(y), choices)
        c = f1.sub_(f2)
        weight = self.gamma / (1 + self.gamma)
        offset = weight * float(c.square().mean())
        return g1.contiguous(), g2.add_(c, alpha=weight).contiguous(), offset

    def lr_scale(self, optimizer: str) -> float:
        """What the learning rate is multiplied by so that a step of the MSE against the
        moved target is the step of the paper's loss: ``1 + gamma`` for SGD; 1 for Adam,
        which the loss's scale moves only through eps."""
        return 1 + self.gamma if optimizer == "sgd" else 1.0

    def total(self, mse: float, offset: float) -> float:
        """The paper's loss from the step's MSE and ``batch``'s constant."""
        return (1 + self.gamma) * mse + offset
