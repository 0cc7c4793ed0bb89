"""The seed's model.py: ``Model()``, ``load_pretrained_model()``, ``train``, ``predict``."""

from __future__ import annotations

import torch

from ..app.pretrained import load_pretrained, spec_path
from ..runtime.program import Program
from ..compiler.parse import load_spec


class Model:
    """The seed network (``noise2noise.yaml``, shipped in the package) with its recipe:
    SGD, lr 1.5, batches of 4. Images are N x 3 x H x W in 0-255 (uint8 or float)."""

    SPEC = "noise2noise"
    MULTIPLE = 4  # two stride-2 convolutions: sizes divisible by 4 come back unchanged
    PREDICT_PIXELS = 2**18  # images per predict step: up to one 512 x 512 image's pixels

    def __init__(self) -> None:
        self.spec = load_spec(spec_path(self.SPEC))
        self.program = Program(self.spec)
        self.epochs_done = 0

    def load_pretrained_model(self) -> None:
        self.program.load_state_dict(load_pretrained(self.SPEC))

    def train(self, train_input: torch.Tensor, train_target: torch.Tensor, num_epochs: int) -> None:
        if train_input.shape != train_target.shape:
            raise ValueError(f"train_input {tuple(train_input.shape)} and train_target "
                             f"{tuple(train_target.shape)} must have the same shape")
        batch = self.spec.train.batch
        for _ in range(num_epochs):
            gen = torch.Generator().manual_seed(self.spec.train.seed + self.epochs_done)
            order = torch.randperm(len(train_input), generator=gen)
            for start in range(0, len(order), batch):
                index = order[start:start + batch]
                self.program.train_step(self._unit(train_input[index]),
                                        self._unit(train_target[index]))
            self.epochs_done += 1

    def predict(self, test_input: torch.Tensor) -> torch.Tensor:
        """Denoised images in 0-255 (float), the shape of ``test_input``. Any H x W: the
        image is edge-padded to a multiple of 4 for the network, then cropped back."""
        n, c, h, w = test_input.shape
        m = self.MULTIPLE
        step = max(1, self.PREDICT_PIXELS // (h * w))
        result = torch.empty((n, c, h, w), dtype=self.program.dtype)
        for start in range(0, n, step):
            padded = _pad_edges(self._unit(test_input[start:start + step]), -h % m, -w % m)
            result[start:start + step] = self.program.forward(padded)[:, :, :h, :w]
        return result.mul_(255)

    def _unit(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.program.dtype) / 255  # a new tensor: the caller's stays as is


def _pad_edges(x: torch.Tensor, bottom: int, right: int) -> torch.Tensor:
    """``x`` extended by repeating its last row ``bottom`` and last column ``right`` times."""
    if not bottom and not right:
        return x
    n, c, h, w = x.shape
    out = x.new_empty((n, c, h + bottom, w + right))
    out[:, :, :h, :w] = x
    out[:, :, h:, :w] = x[:, :, h - 1:, :]
    out[:, :, :, w:] = out[:, :, :, w - 1:w]
    return out
