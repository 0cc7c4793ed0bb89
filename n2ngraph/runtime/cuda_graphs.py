"""A program's runs replayed as CUDA graphs (executor.Replay) on a GPU: a training step
(kernels, gradient clipping, the optimizer's update) or an inference, each recorded once
per input shape and replayed with one launch instead of one per kernel."""

from __future__ import annotations

from typing import Callable, Mapping

import torch

from .executor import Executable, Replay
from .optim import ClipGradNorm
from .plans import Shape


class CudaGraphs:
    """The replays of one program's plans, one per kind of run and input shapes."""

    def __init__(self, optimizer, clip: ClipGradNorm | None):
        self.optimizer, self.clip = optimizer, clip
        self.replays: dict[tuple, Replay] = {}

    def train_step(self, shapes: Mapping[str, Shape], executable: Executable,
                   inputs: Mapping[str, torch.Tensor]) -> None:
        """One training step as one CUDA graph: forward, backward, clipping and the
        optimizer's update, reading this step's learning rate from the device."""
        replay = self._replay("train", shapes, executable)
        executable.load(inputs)
        # SGD's first step takes a branch of its own: run, not recorded
        self.optimizer.step_replayed(replay.body if self.optimizer.steps == 0 else replay)

    def infer(self, shapes: Mapping[str, Shape], executable: Executable,
              inputs: Mapping[str, torch.Tensor]) -> None:
        executable.load(inputs)
        self._replay("infer", shapes, executable)()

    def _replay(self, kind: str, shapes: Mapping[str, Shape], executable: Executable) -> Replay:
        """The CUDA graph of ``executable``'s plan, its body made on first use: for
        training, the kernels, clipping and the optimizer's update; for inference, the
        kernels."""
        key = (kind, tuple(sorted(shapes.items())))
        if key not in self.replays:
            body = self._training_body(executable) if kind == "train" else executable.run_kernels
            self.replays[key] = Replay(body)
        return self.replays[key]

    def _training_body(self, executable: Executable) -> Callable[[], None]:
        optimizer, clip = self.optimizer, self.clip

        def body() -> None:
            executable.run_kernels()
            if clip is not None:
                clip()
            optimizer.recorded_update()
        return body
