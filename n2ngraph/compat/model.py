"""The seed's model.py: ``Model()``, ``load_pretrained_model()``, ``train``, ``predict``."""

from __future__ import annotations

import pickle
import sys
from collections.abc import Mapping
from pathlib import Path

import torch

from ..app.checkpoint import CheckpointError
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

    BEST = "bestmodel.pth"

    def load_pretrained_model(self) -> None:
        """The course's rule: ``bestmodel.pth`` beside the user's model.py (the file
        defining or exporting this ``Model``), a state dict of the network's parameters,
        loaded with ``weights_only=True``; without one, the weights the package ships."""
        folder = _model_folder(type(self))
        best = folder / self.BEST if folder is not None else None
        if best is None or not best.is_file():
            self.program.load_state_dict(load_pretrained(self.SPEC))
            return
        try:
            state = torch.load(best, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
            raise CheckpointError(f"{best}: not a state dict torch.load can read with "
                                  f"weights_only=True ({str(error).splitlines()[0]})") from None
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{best}: holds a {type(state).__name__}, not a state dict "
                                  f"(parameter name -> tensor)")
        self.program.load_state_dict(state)

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
        # a new tensor: the caller's stays as is (one that requires grad is read as data)
        return images.detach().to(self.program.dtype) / 255


def _model_folder(cls: type) -> Path | None:
    """The folder of the user's model.py: the module defining ``cls`` when that is not
    n2ngraph's, else a loaded model.py exporting it as ``Model``, else a model.py among
    the callers."""
    candidates = [sys.modules.get(cls.__module__)]
    candidates += [m for m in list(sys.modules.values()) if getattr(m, "Model", None) is cls]
    for module in candidates:
        file = getattr(module, "__file__", None)
        if file and not module.__name__.startswith("n2ngraph.") and (
                module.__name__ == cls.__module__ or Path(file).name == "model.py"):
            return Path(file).resolve().parent
    frame = sys._getframe(1)
    while frame is not None:
        file = Path(frame.f_code.co_filename)
        if file.name == "model.py" and "n2ngraph" not in file.parts:
            return file.resolve().parent
        frame = frame.f_back
    return None


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
