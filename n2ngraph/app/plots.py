"""The seed report's figures, as PNG files (matplotlib, no display needed).

Figure 2: validation PSNR against learning rate, one curve per batch size (the sweep).
Figure 3: training loss and validation PSNR per epoch.
Figure 4: example crops, noisy / denoised / clean.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .fileio import write_atomic


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    write_atomic(path, lambda temp: fig.savefig(temp, format="png", dpi=120, bbox_inches="tight"))
    _pyplot().close(fig)


def plot_history(rows: list[dict], path: Path, title: str) -> None:
    plt = _pyplot()
    epochs = [int(r["epoch"]) for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(epochs, [float(r["train_loss"]) for r in rows], marker="o")
    left.set(xlabel="epoch", ylabel="training loss (MSE vs noisy target)", title="loss")
    right.plot(epochs, [float(r["val_psnr"]) for r in rows], marker="o", label="denoised")
    right.plot(epochs, [float(r["input_psnr"]) for r in rows], ls="--", label="noisy input")
    right.set(xlabel="epoch", ylabel="PSNR (dB)", title="validation PSNR")
    right.legend()
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    _save(fig, path)


def plot_examples(noisy: torch.Tensor, denoised: torch.Tensor, clean: torch.Tensor, path: Path,
                  count: int = 6) -> None:
    plt = _pyplot()
    count = min(count, len(noisy))
    fig, axes = plt.subplots(3, count, figsize=(1.6 * count, 5.2), squeeze=False)
    for row, (label, images) in enumerate([("noisy", noisy), ("denoised", denoised), ("clean", clean)]):
        for col in range(count):
            ax = axes[row][col]
            ax.imshow(images[col].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(label)
    _save(fig, path)


def plot_sweep(results: list[dict], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for batch in sorted({r["batch"] for r in results}):
        points = sorted((r["lr"], r["val_psnr"]) for r in results if r["batch"] == batch)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"batch {batch}")
    ax.set_xscale("log")
    ax.set(xlabel="learning rate", ylabel="validation PSNR (dB)", title="PSNR against learning rate")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
