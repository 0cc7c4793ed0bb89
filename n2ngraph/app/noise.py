"""Noise models: one fixed level (``Noise``), or levels drawn per pair from ranges and
mixtures of kinds (``NoiseMix``), for one network that denoises any level ("blind").

Every model works on uint8 photos and returns uint8: the noisy image is rounded to the
nearest of 256 levels and clipped to 0..255, as a saved 8-bit photo is. That is always
so, for every model: the data layer holds 8-bit images throughout, and a real camera's
noisy photo is quantised too.

The command line's forms (``parse_noise``; ``str`` of a model gives the same text back):

- ``gaussian:25``, ``poisson:30``, ``bernoulli:0.5``, ``none``: one fixed level;
- ``gaussian:0-50``: sigma drawn per pair, uniformly from 0 to 50;
- ``gaussian:0-50+poisson:5-50``: each pair draws one of the parts with equal chance,
  then its level from that part's range (a part may be a fixed level too).

A pair's two noisy views share the kind and level drawn for it and differ in the noise
itself: they are two photos of one scene at one ISO. All randomness comes from the
generator passed in, so the pairs stay a function of (seed, epoch, chunk, row).
"""

from __future__ import annotations

import math
import re

import attrs
import torch

__all__ = ["NOISE_FORMS", "Noise", "NoiseRange", "NoiseMix", "parse_noise", "noisy_photo"]

Tensor = torch.Tensor

NOISE_FORMS = ("gaussian:SIGMA (0 <= SIGMA <= 1000, on the 0-255 scale, e.g. gaussian:25)",
               "poisson:PEAK (photon count at white, 0.001 <= PEAK <= 1e6, e.g. poisson:30)",
               "bernoulli:P (each pixel set to 0 with probability 0 <= P < 1, e.g. bernoulli:0.5)",
               "none",
               "a range, the level drawn per pair: gaussian:0-50",
               "a mixture, each pair drawing one part: gaussian:0-50+poisson:5-50")
"""The levels are bounded to where noise still means something and float32 holds it:
beyond sigma 1000 (four times the whole 0-255 range) almost every pixel is clipped to
black or white, and gaussian:1e308 would overflow; at a million photons the Poisson noise
is under half a quantisation step, and at 0.001 a white pixel is almost never lit."""

_LEVELS = {"none": lambda v: v == 0, "gaussian": lambda v: 0 <= v <= 1000,
           "poisson": lambda v: 1e-3 <= v <= 1e6, "bernoulli": lambda v: 0 <= v < 1}


def _accepted() -> str:
    return f"accepted: {'; '.join(NOISE_FORMS)}"


def _check_kind_level(kind: str, level: float) -> None:
    if kind not in _LEVELS:
        raise ValueError(f"unknown noise kind {kind!r}; {_accepted()}")
    if not math.isfinite(level) or not _LEVELS[kind](level):
        raise ValueError(f"bad level {level!r} for {kind} noise; {_accepted()}")


def _check_level(noise: "Noise", _attribute, level: float) -> None:
    _check_kind_level(noise.kind, level)


def _quantise(values: Tensor) -> Tensor:
    """To 8 bits, as a camera stores it: round to the nearest level, clip to 0..255."""
    return values.round_().clamp_(0, 255).to(torch.uint8)


def _number(value: float) -> str:
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _check_images(clean) -> None:
    if not isinstance(clean, Tensor) or clean.dtype != torch.uint8 or clean.dim() < 3:
        kind = (f"{str(clean.dtype).removeprefix('torch.')} tensor of shape {tuple(clean.shape)}"
                if isinstance(clean, Tensor) else type(clean).__name__)
        raise TypeError(f"Noise.apply takes a uint8 (..., 3, H, W) tensor, got {kind}")


@attrs.frozen
class Noise:
    """A noise model: ``kind`` in gaussian, poisson, bernoulli, none, and its ``level``.

    ``apply`` works on uint8 and returns uint8, rounded and clipped: the noisy images a
    real camera gives are quantised too, and the course's data was stored this way.
    ``str(noise)`` is the string ``parse_noise`` reads, so it round-trips."""

    kind: str
    level: float = attrs.field(default=0.0, converter=float, validator=_check_level)

    def __str__(self) -> str:
        return "none" if self.kind == "none" else f"{self.kind}:{_number(self.level)}"

    def draw(self, count: int, generator: torch.Generator) -> None:
        """What ``count`` pairs share between their views: nothing, for a fixed level
        (and nothing is drawn, so a seed gives the pairs it always gave)."""
        return None

    def apply(self, clean: Tensor, generator: torch.Generator, drawn=None) -> Tensor:
        """One noisy realisation of ``clean`` (uint8, ``(..., 3, H, W)``), same shape."""
        _check_images(clean)
        return getattr(self, f"_{self.kind}")(clean, generator)

    def _none(self, clean: Tensor, generator: torch.Generator) -> Tensor:
        return clean.clone()

    def _gaussian(self, clean: Tensor, generator: torch.Generator) -> Tensor:
        noisy = torch.randn(clean.shape, generator=generator, device=clean.device)
        # float() first: a mixed uint8 + float add takes twice as long on CPU
        return _quantise(torch.add(clean.float(), noisy, alpha=self.level, out=noisy))

    def _poisson(self, clean: Tensor, generator: torch.Generator) -> Tensor:
        # Photon counting: a pixel of value v collects Poisson(v/255 * PEAK) photons.
        # Low PEAK means few photons and strong noise; the noise grows with brightness.
        rate = clean.float().mul_(self.level / 255.0)
        counts = torch.poisson(rate, generator=generator)
        return _quantise(counts.mul_(255.0 / self.level))

    def _bernoulli(self, clean: Tensor, generator: torch.Generator) -> Tensor:
        # A dropped pixel loses all three channels at once, like a dead photosite.
        shape = clean.shape[:-3] + (1,) + clean.shape[-2:]
        keep = torch.rand(shape, generator=generator, device=clean.device) >= self.level
        return clean * keep


# ---- levels drawn per pair -------------------------------------------------------------

def _check_range(part: "NoiseRange", _attribute, high: float) -> None:
    if part.kind == "none":
        raise ValueError(f"'none' has no level to draw; {_accepted()}")
    _check_kind_level(part.kind, part.low)
    _check_kind_level(part.kind, high)
    if part.low > high:
        raise ValueError(f"the range {_number(part.low)}-{_number(high)} runs backwards (give "
                         f"the low level first); {_accepted()}")


@attrs.frozen
class NoiseRange:
    """One part of a mixture: ``kind`` with its level uniform in [``low``, ``high``]
    (``low == high``: that one level)."""

    kind: str
    low: float = attrs.field(converter=float)
    high: float = attrs.field(converter=float, validator=_check_range)

    def __str__(self) -> str:
        if self.low == self.high:
            return f"{self.kind}:{_number(self.low)}"
        return f"{self.kind}:{_number(self.low)}-{_number(self.high)}"


def _gaussian_at(clean: Tensor, level: Tensor, generator: torch.Generator) -> Tensor:
    noisy = torch.randn(clean.shape, generator=generator, device=clean.device)
    return _quantise(noisy.mul_(level).add_(clean))


def _poisson_at(clean: Tensor, level: Tensor, generator: torch.Generator) -> Tensor:
    counts = torch.poisson(clean.float().mul_(level / 255.0), generator=generator)
    return _quantise(counts.mul_(255.0 / level))


def _bernoulli_at(clean: Tensor, level: Tensor, generator: torch.Generator) -> Tensor:
    shape = clean.shape[:-3] + (1,) + clean.shape[-2:]
    return clean * (torch.rand(shape, generator=generator, device=clean.device) >= level)


_AT_LEVELS = {"gaussian": _gaussian_at, "poisson": _poisson_at, "bernoulli": _bernoulli_at}


@attrs.frozen
class NoiseMix:
    """Noise whose kind and level each image draws: one of ``parts`` with equal chance,
    then a level uniform in that part's range. ``draw`` picks them for a batch, ``apply``
    noises it, with what ``draw`` picked (both views of a pair) or else drawing anew."""

    parts: tuple[NoiseRange, ...] = attrs.field(converter=tuple)

    def __attrs_post_init__(self):
        if not self.parts:
            raise ValueError(f"a noise mixture needs at least one part; {_accepted()}")

    def __str__(self) -> str:
        if len(self.parts) == 1:  # written as a range, "gaussian:25-25", or it reads as a Noise
            part = self.parts[0]
            return f"{part.kind}:{_number(part.low)}-{_number(part.high)}"
        return "+".join(str(part) for part in self.parts)

    def draw(self, count: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(which part, level) of each of ``count`` images: int64 and float64 ``(count,)``."""
        which = torch.randint(len(self.parts), (count,), generator=generator)
        where = torch.rand(count, generator=generator, dtype=torch.float64)
        low = torch.tensor([p.low for p in self.parts], dtype=torch.float64)[which]
        high = torch.tensor([p.high for p in self.parts], dtype=torch.float64)[which]
        return which, low + where * (high - low)

    def apply(self, clean: Tensor, generator: torch.Generator, drawn=None) -> Tensor:
        """Noisy ``clean`` (uint8 ``(N, 3, H, W)``, or one ``(3, H, W)`` image), image i
        with part ``drawn[0][i]`` at level ``drawn[1][i]`` (drawn now when None)."""
        _check_images(clean)
        if clean.dim() == 3:
            return self.apply(clean[None], generator, drawn)[0]
        if clean.dim() != 4:
            raise TypeError(f"a noise mixture takes (N, 3, H, W) images, got {tuple(clean.shape)}")
        which, levels = self.draw(len(clean), generator) if drawn is None else drawn
        out = torch.empty_like(clean)
        for k, part in enumerate(self.parts):
            rows = (which == k).nonzero().squeeze(1)
            if len(rows):
                level = levels[rows].to(device=clean.device, dtype=torch.float32).view(-1, 1, 1, 1)
                out[rows.to(clean.device)] = _AT_LEVELS[part.kind](
                    clean[rows.to(clean.device)], level, generator)
        return out


# ---- the command line's text -----------------------------------------------------------

_NUMBER = r"(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?"
_RANGE = re.compile(rf"({_NUMBER})\s*-\s*({_NUMBER})")
_PARTS = re.compile(r"(?<!\de)\+")  # '+' joins parts, except in an exponent (1e+3)


def _part(text: str) -> NoiseRange | Noise | None:
    """One ``kind:level`` or ``kind:low-high``; None if it is neither. A level out of
    range is a ValueError saying so."""
    kind, colon, level = text.strip().partition(":")
    kind, level = kind.strip(), level.strip()
    if kind == "none" and not colon:
        return Noise("none")
    if kind not in _AT_LEVELS or not colon:
        return None
    ranged = _RANGE.fullmatch(level)
    if ranged:
        return NoiseRange(kind, float(ranged[1]), float(ranged[2]))
    try:
        value = float(level)
    except ValueError:
        return None
    return Noise(kind, value)


def parse_noise(text: str) -> Noise | NoiseMix:
    """``"gaussian:25"``, ``"poisson:30"``, ``"bernoulli:0.5"``, ``"none"`` to a Noise;
    ranges (``"gaussian:0-50"``) and mixtures (``"gaussian:0-50+poisson:5-50"``) to a
    NoiseMix. Case and spaces are ignored. Anything else is a ValueError, one line, that
    lists the accepted forms."""
    if not isinstance(text, str):
        raise ValueError(f"noise must be a string, got {type(text).__name__}")
    quoted = repr(text) if len(text) <= 40 else repr(text[:37]) + "..."
    try:
        parts = [_part(piece) for piece in _PARTS.split(text.strip().lower())]
    except ValueError as e:
        raise ValueError(f"bad noise {quoted}: {e}") from None
    if len(parts) == 1 and isinstance(parts[0], Noise):
        return parts[0]
    if all(p is not None and p.kind != "none" for p in parts):
        return NoiseMix([p if isinstance(p, NoiseRange) else NoiseRange(p.kind, p.level, p.level)
                         for p in parts])
    raise ValueError(f"bad noise {quoted}; {_accepted()}")


def noisy_photo(clean: Tensor, noise: Noise | NoiseMix, seed: int, index: int) -> Tensor:
    """Photo ``index`` (in sorted file order) of a folder as ``--eval`` noises it with
    ``seed``, uint8 ``(1, 3, H, W)``: each photo its own generator, so the photos a
    comparison (tools/bm3d_table) noises are these very ones, however many it takes."""
    return noise.apply(clean[None], torch.Generator().manual_seed(seed * 7919 + index))
