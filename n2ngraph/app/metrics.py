"""Image quality, the way the course measured it.

PSNR is computed per image and then averaged over the batch, with the course's
formula ``-10 * log10(mean((x - y)**2) + 1e-8)`` on [0, 1] data (peak 1). Averaging
per-image dB is not the PSNR of the batch's pooled MSE: it weights every image equally
and is what the EE-559 numbers (and this project's reports) mean by "validation PSNR".
The 1e-8 caps a perfect match at 80 dB instead of infinity.
"""

from __future__ import annotations

import torch

__all__ = ["psnr", "psnr_per_image", "psnr_uint8"]

Tensor = torch.Tensor
EPSILON = 1e-8


def _check(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    if x.shape != y.shape:
        raise ValueError(f"psnr: shapes differ, {tuple(x.shape)} vs {tuple(y.shape)}")
    if not (x.is_floating_point() and y.is_floating_point()):
        # uint8 subtraction wraps around (3 - 5 == 254): never measure on raw bytes.
        raise ValueError(f"psnr takes float tensors, got {x.dtype} and {y.dtype}; "
                         "use psnr_uint8 for uint8 images")
    if x.dim() == 3:  # one (C, H, W) image
        x, y = x.unsqueeze(0), y.unsqueeze(0)
    if x.dim() != 4 or x.shape[0] == 0:
        raise ValueError(f"psnr takes (N, C, H, W) or (C, H, W) with N >= 1, "
                         f"got {tuple(x.shape)}")
    return x, y


def psnr_per_image(x: Tensor, y: Tensor, peak: float = 1.0) -> Tensor:
    """PSNR in dB of each image, shape (N,), float64.

    The MSE is taken relative to ``peak**2`` before the epsilon is added, so data on
    0..255 with ``peak=255`` gives exactly what the same data divided by 255 gives with
    the course's peak of 1. Float64, so large images do not lose digits in the mean."""
    x, y = _check(x, y)
    error = (x.double() - y.double()).div_(peak).square_()
    return error.flatten(1).mean(1).add_(EPSILON).log10_().mul_(-10.0)


def psnr(x: Tensor, y: Tensor, peak: float = 1.0) -> float:
    """Mean over the batch of per-image PSNR in dB (the course's convention)."""
    return psnr_per_image(x, y, peak).mean().item()


def psnr_uint8(x: Tensor, y: Tensor) -> float:
    """``psnr`` of uint8 images, on the [0, 1] scale the network sees (x / 255)."""
    if x.dtype != torch.uint8 or y.dtype != torch.uint8:
        raise ValueError(f"psnr_uint8 takes uint8 tensors, got {x.dtype} and {y.dtype}")
    return psnr(x.double() / 255.0, y.double() / 255.0)
