"""Training runs: data per epoch, the step loop, validation, checkpoints and resume.

A run directory holds everything a run produced and everything needed to continue it:

    config.json        the settings used (spec recipe + command-line overrides)
    spec.yaml          the spec text, as trained
    metrics.csv        one row per epoch: loss, validation PSNR, time, throughput
    last.safetensors   parameters + optimizer state + position (epoch, step) + metrics
    best.safetensors   parameters of the epoch with the best validation PSNR
    *.png              plots (loss and PSNR per epoch, example denoisings)
    .lock              locked by the process training the run, so there is only one

The directory appears whole, with ``last.safetensors`` at the starting point, before the
first step: a run killed at any moment resumes. ``last.safetensors`` is the truth;
``metrics.csv`` is written from it after it is saved (and again on resume), so a kill
between the two never repeats or loses an epoch's row.

Every chunk of an epoch's batches is derived from (seed, epoch, chunk) alone (pairs.py;
a background thread draws them ahead, stream.py), and every step's learning rate from
its index (optim.learning_rate), so resuming from a checkpoint that records (epoch,
step) and the optimizer's buffers regenerates the same batches and rates and continues
bit-identically: no random-generator or scheduler state has to be saved.
"""

from __future__ import annotations

import csv
import json
import math
import signal
import threading
import time
from pathlib import Path
from typing import Mapping

import attrs
import torch

from ..compiler.spec import Spec
from ..runtime.divergence import Recent, describe_state, first_nonfinite_tensor, locate, state_tensors
from ..runtime.optim import learning_rate
from . import data as datasets
from .checkpoint import (CheckpointError, check_loadable, check_params_fit, load_checkpoint,
                         save_checkpoint)
from .config import TrainConfig
from .fileio import (DirectoryBusy, created_whole, fault_point, lock_directory,
                     remove_stale_temps, write_atomic)
from .folder import PhotoFolder
from .images import self_ensemble
from .metrics import psnr
from .neighbours import GAMMA, NeighbourLoss, NoisyCopies, SinglePhotos, self_supervised_validation
from .pairs import EpochPlan, FixedPairs, PhotoPairs, share
from .stream import BatchStream


@attrs.frozen
class Data:
    """What a run trains and validates on: ``pairs``, a source whose ``draw(epoch, chunk)``
    gives the pairs of a chunk of an epoch (pairs.PhotoPairs, pairs.FixedPairs), and the
    validation crops, uint8, held whole (``val_count`` of them)."""

    pairs: PhotoPairs | FixedPairs | SinglePhotos
    val_noisy: torch.Tensor
    val_clean: torch.Tensor
    description: str
    loss: NeighbourLoss | None = None  # how a single photo's batch is trained; None: pairs


def held_out(names: list[str]) -> list[str]:
    """The validation photos of a folder, by sorted file name: every fifth (the first of a
    folder of fewer than five). tools/training_photos orders its files by this rule."""
    return names[4::5] or names[:1]


def prepare_data(config: TrainConfig) -> Data:
    """The data of ``config.data`` (data.source_kind): the course's pairs, or crops of
    photos (a folder's, or scikit-image's) noised afresh every epoch."""
    noise = datasets.parse_noise(config.noise)
    if config.pairs_from == "single":
        return _single_photos(config, noise)
    if datasets.source_kind(config.data) == "pairs":
        return _fixed_pairs(config, noise)
    r = config.recipe
    train, val, where = _photos(config.data)
    val_noisy, val_clean = datasets.validation_set(val, config.val_count, r.crop, noise, r.seed)
    plan = EpochPlan(r.pairs, r.batch, r.crop * r.crop)
    pairs = PhotoPairs(train, plan, r.crop, noise, r.seed, augment=r.augment)
    return Data(pairs, val_noisy, val_clean,
                f"{r.pairs} fresh {r.crop}x{r.crop} pairs per epoch from {where}, "
                f"noise {noise}{', augmented by flips and rotations' if r.augment else ''}; "
                f"validation: {len(val_noisy)} crops of {', '.join(sorted(val))}")


def _single_photos(config: TrainConfig, noise) -> Data:
    """Crops of single noisy photos, sub-sampled into pairs (neighbours.py): the photos as
    they are with ``--noise none`` (a user's own), validated against a second noisy view;
    else each photo noised once, a fixed noisy copy, validated on clean crops like a
    Noise2Noise run, so the two compare."""
    r = config.recipe
    train, val, where = _photos(config.data)
    if noise == datasets.Noise("none"):
        noisy, _ = datasets.validation_set(val, config.val_count, r.crop, noise, r.seed)
        val_noisy, val_clean = self_supervised_validation(noisy, r.seed)
        kind, checked = "the photos as they are", "against a second noisy view (no clean photo)"
    else:
        train = NoisyCopies(train, noise, r.seed)
        val_noisy, val_clean = datasets.validation_set(val, config.val_count, r.crop, noise, r.seed)
        kind, checked = f"one noisy copy ({noise}) of each photo", f"noise {noise}"
    plan = EpochPlan(r.pairs, r.batch, r.crop * r.crop)
    pairs = SinglePhotos(train, plan, r.crop, r.seed, augment=r.augment)
    return Data(pairs, val_noisy, val_clean,
                f"{r.pairs} {r.crop}x{r.crop} crops per epoch of {kind} from {where}, each "
                f"sub-sampled into a Neighbor2Neighbor pair (gamma {GAMMA:g}); validation: "
                f"{len(val_noisy)} crops of {', '.join(sorted(val))}, {checked}",
                loss=NeighbourLoss())


def _photos(source: str | None) -> tuple[Mapping, Mapping, str]:
    """(training photos, validation photos, where from): scikit-image's photos split by
    image, or a folder's split by ``held_out``, read a photo at a time (folder.PhotoFolder)."""
    if datasets.source_kind(source) == "embedded":
        train, val = datasets.embedded_split()
        return train, val, "scikit-image's photos"
    photos = PhotoFolder(source)
    names = list(photos)
    val_names = held_out(names)
    train = photos.subset([k for k in names if k not in val_names or len(names) == 1])
    val = photos.subset(val_names)
    return train, val, f"{len(train)} of the {len(names)} photos in {source}"


def _fixed_pairs(config: TrainConfig, noise: datasets.Noise) -> Data:
    """The course's pairs, in a new order every epoch (turned anew by ``augment``);
    validation on the val_data.pkl beside them, or else on crops of scikit-image's photos."""
    r, source = config.recipe, config.data
    a, b = datasets.load_pairs(source)
    val_path = Path(source).with_name("val_data.pkl")
    if val_path.exists() and val_path != Path(source):
        val_noisy, val_clean = datasets.load_pairs(val_path)
    else:
        _, val = datasets.embedded_split()
        val_noisy, val_clean = datasets.validation_set(val, config.val_count, a.shape[-1],
                                                       noise, r.seed)
    count = min(r.pairs, a.shape[0])
    if r.batch > count:
        raise datasets.DataError(source, f"holds {count} pairs, fewer than a batch of {r.batch}")
    pairs = FixedPairs(a, b, EpochPlan(count, r.batch, a.shape[-2] * a.shape[-1]), r.seed,
                       augment=r.augment)
    return Data(pairs, val_noisy, val_clean,
                f"{count} pairs from {source}{', augmented' if r.augment else ''}")


def to_float(batch: torch.Tensor, device, dtype) -> torch.Tensor:
    return batch.to(device=device, dtype=dtype).div_(255)


EVAL_CHUNK_PIXELS = 2**18


def evaluate(model, noisy: torch.Tensor, clean: torch.Tensor, *, device="cpu",
             dtype=torch.float32, chunk: int | None = None,
             ensemble: bool = False) -> tuple[float, float]:
    """(PSNR of the input, PSNR of the output) in dB over uint8 pairs; with
    ``ensemble``, of the mean output over the eight orientations (images.self_ensemble).

    The crops go through in equal chunks of about 256k pixels (at most 250 crops), the
    last one overlapping the one before: every chunk then runs the same compiled
    inference plan, which holds a chunk's activations (a U-Net's takes ~1.8 KiB a pixel).
    """
    if chunk is None:
        chunk = max(1, min(250, EVAL_CHUNK_PIXELS // max(1, noisy[0, 0].numel())))
    chunk = min(chunk, len(noisy))
    outputs, done = [], 0
    while done < len(noisy):
        start = min(done, len(noisy) - chunk)
        x = to_float(noisy[start:start + chunk], device, dtype)
        y = self_ensemble(model.forward, x) if ensemble else model.forward(x)
        outputs.append(y[done - start:].clamp_(0, 1).cpu())
        done = start + chunk
    out = torch.cat(outputs).to(torch.float64)
    reference = clean.to(torch.float64) / 255
    return psnr(noisy.to(torch.float64) / 255, reference), psnr(out, reference)


class StopRequests:
    """Ctrl-C (SIGINT) and SIGTERM (``kill``, a job scheduler) ask the training loop to
    stop after the step in progress, which then saves a checkpoint that resumes
    bit-identically. Raising in the middle of a step instead could leave the parameters
    half updated. A second Ctrl-C interrupts at once. A signal the process was started
    to ignore (SIGINT under ``nohup ... &``) stays ignored."""

    SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}

    def __init__(self):
        self.requested: str | None = None
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, _frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = self.SIGNALS[signum]
        self.signum = signum

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


class RunDirectoryError(Exception):
    """A run directory that cannot be used now: another process trains it, it has no
    checkpoint, or it appeared while this run was being created."""


class TrainingDiverged(Exception):
    """A run whose loss, gradient norm, parameters or optimizer state went nan or inf.
    It stops there, with a message naming the step and the first value that went
    non-finite; the checkpoints it wrote before stay as they were."""


_STATE_KEYS = {"epoch": int, "step": int, "best": (int, float), "running": list,
               "optimizer_steps": int}


def check_training_state(path: Path, state: dict) -> None:
    """A CheckpointError naming ``path`` unless its training state has every key a run
    resumes from, of the right kind: checked before anything is loaded, so a damaged
    checkpoint is one line, never a KeyError halfway through restoring."""
    for key, kind in _STATE_KEYS.items():
        value = state.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            found = "missing" if key not in state else f"{type(value).__name__} {value!r:.40}"
            raise CheckpointError(f"{path}: its training state's '{key}' is {found}")
        if kind is int and value < 0:
            raise CheckpointError(f"{path}: its training state's '{key}' is negative ({value})")
    running = state["running"]
    if len(running) != 2 or not all(isinstance(v, (int, float)) for v in running):
        raise CheckpointError(f"{path}: its training state's 'running' is not [loss sum, steps]")
    if not isinstance(state.get("metrics", []), list):
        raise CheckpointError(f"{path}: its training state's 'metrics' is not a list")


class Run:
    """One training run in its directory; ``train()`` continues from wherever it is.

    ``create()`` or ``resume()`` takes the directory's lock, held until ``close()`` (or the
    end of a ``with`` block, or of the process)."""

    def __init__(self, directory: Path, spec: Spec, spec_text: str, model, config: TrainConfig,
                 *, dtype=torch.float32, log=print):
        self.dir = Path(directory)
        self.spec, self.spec_text, self.model, self.config = spec, spec_text, model, config
        self.dtype = dtype
        self.log = log
        self.epoch, self.step, self.best = 0, 0, float("-inf")
        self.running = (0.0, 0)  # (sum of losses, steps) of the current epoch
        self.rows: list[dict] = []  # metrics.csv: a row per finished epoch
        self.stopped_by: int | None = None  # the signal that stopped train(), if one did
        self._lock = None
        self.ranks = getattr(model, "ranks", None)  # a data-parallel Program's (distributed.py)
        self.leader = self.ranks is None or self.ranks.leader  # the one that writes files
        if not self.leader:
            self.log = lambda *_: None
        self.recent = Recent(model.state_dict())  # where the last steps started (divergence.py)

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # ---- files -----------------------------------------------------------------
    def create(self) -> None:
        """Makes the run directory whole or not at all: config.json, spec.yaml and the
        starting checkpoint, written beside it and renamed into place. A kill before the
        first step then leaves a run ``--resume`` continues, from parameters (fresh or
        ``--from-weights``) recorded bit for bit rather than drawn or read again.
        In a data-parallel run rank 0 alone does it, then hands its state to every rank."""
        self._led(self._create)

    def _led(self, work) -> None:
        """``work()`` in one process; in a data-parallel run, on rank 0 alone (its error
        raised on every rank), then rank 0's parameters, optimizer and position given to
        every rank: the other ranks never touch the run directory."""
        if self.ranks is None:
            return work()
        self.ranks.led(work)
        self.model.share_state()
        position = self.ranks.from_leader((self.epoch, self.step, self.best, self.running, self.rows))
        self.epoch, self.step, self.best, self.running, self.rows = position

    def _create(self) -> None:
        try:
            with created_whole(self.dir) as (temp, self._lock):
                write_atomic(temp / "config.json", lambda t: Path(t).write_text(
                    json.dumps(self.config.record(), indent=2)))
                write_atomic(temp / "spec.yaml", lambda t: Path(t).write_text(self.spec_text))
                self._checkpoint(temp / "last.safetensors")
        except FileExistsError:
            raise RunDirectoryError(f"run directory {self.dir} already exists: continue it "
                                    f"with --resume {self.dir}, or choose another --run") from None
        except OSError as e:
            raise RunDirectoryError(f"cannot create run directory {self.dir}: "
                                    f"{e.strerror or e}") from None

    def resume(self) -> None:
        """Takes the directory's lock, removes the temp files a killed process left, and
        restores the run from ``last.safetensors``, metrics.csv included (rank 0 alone,
        in a data-parallel run, which then hands the state to every rank)."""
        self._led(self._resume)

    def _resume(self) -> None:
        try:
            self._lock = lock_directory(self.dir)
        except DirectoryBusy as e:
            holder = f" (pid {e.args[0]})" if e.args[0] else ""
            raise RunDirectoryError(f"{self.dir} is being trained by another process{holder}; "
                                    f"wait for it to stop, or stop it") from None
        except OSError as e:  # a read-only directory: no checkpoint could be saved either
            raise RunDirectoryError(f"{self.dir}: cannot lock the run to train it "
                                    f"({e.strerror or e})") from None
        stale = remove_stale_temps(self.dir)
        if stale:
            self.log(f"removed {len(stale)} unfinished temp file(s) a killed run left in {self.dir}")
        if not (self.dir / "last.safetensors").is_file():
            raise RunDirectoryError(f"{self.dir}: no last.safetensors to resume from (a run "
                                    f"stopped before its first step by an n2ngraph older than "
                                    f"this one); train it again with --train and another --run")
        self.restore()
        self._write_metrics()

    def save(self, name: str) -> None:
        if self.leader:
            self._checkpoint(self.dir / name)

    def _checkpoint(self, path: Path) -> None:
        optimizer = self.model.optimizer.state_dict()
        state = {"epoch": self.epoch, "step": self.step, "best": self.best,
                 "running": list(self.running), "optimizer_steps": optimizer["steps"],
                 "metrics": self.rows}
        save_checkpoint(path, self.model.state_dict(), spec_text=self.spec_text,
                        state=state, optimizer=optimizer["tensors"])

    def restore(self) -> None:
        path = self.dir / "last.safetensors"
        params, buffers, state, _ = load_checkpoint(path)
        check_training_state(path, state)
        check_params_fit(path, params, self.model.state_dict(), self.spec.name)
        check_loadable(path, buffers)
        self.model.load_state_dict(params)
        try:
            self.model.optimizer.load_state_dict({"steps": state["optimizer_steps"],
                                                  "tensors": buffers})
        except KeyError as e:
            raise CheckpointError(f"{path}: {e.args[0]}") from None
        self.epoch, self.step = state["epoch"], state["step"]
        self.best = state["best"]
        self.running = tuple(state["running"])
        if "metrics" in state:
            self.rows = state["metrics"]
        else:  # a checkpoint of an older n2ngraph: the csv's rows of the epochs it holds
            self.rows = self._read_metrics()[:self.epoch]

    def _read_metrics(self) -> list[dict]:
        path = self.dir / "metrics.csv"
        if not path.exists():
            return []
        with path.open() as f:
            return list(csv.DictReader(f))

    def _write_metrics(self) -> None:
        """metrics.csv as the rows the run holds, replaced whole: written after the
        checkpoint that holds them, it never has a row ``last.safetensors`` lacks."""
        path = self.dir / "metrics.csv"
        if not self.leader:
            return
        if not self.rows:
            path.unlink(missing_ok=True)
            return

        def write(temp: str) -> None:
            with open(temp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(self.rows[0]))
                writer.writeheader()
                writer.writerows(self.rows)

        write_atomic(path, write)

    def metrics(self) -> list[dict]:
        return list(self.rows)

    # ---- the loop --------------------------------------------------------------
    def train(self, data: Data, *, max_steps: int | None = None, progress: bool = True) -> bool:
        """Trains to the configured epoch count; returns False if stopped early
        (``max_steps`` reached, Ctrl-C or SIGTERM: then ``stopped_by`` is the signal),
        after saving a resumable checkpoint."""
        fault_point("train")
        with StopRequests() as stop:
            return self._train(data, max_steps, progress, stop)

    def _stop(self, stop: "StopRequests") -> bool:
        self._check_state()
        self.save("last.safetensors")
        self.stopped_by = stop.signum
        self.log(f"stopped by {stop.requested}: saved {self.dir / 'last.safetensors'} at epoch "
                 f"{self.epoch + 1}, step {self.step}; continue with --resume {self.dir}")
        return False

    def _train(self, data: Data, max_steps: int | None, progress: bool, stop: "StopRequests") -> bool:
        with BatchStream(data.pairs, self.config.recipe.epochs, self._rows()) as batches:
            return self._epochs(batches, data, max_steps, progress, stop)

    def _epochs(self, batches: BatchStream, data: Data, max_steps: int | None, progress: bool,
                stop: "StopRequests") -> bool:
        from tqdm import tqdm

        r = self.config.recipe
        steps_done = 0
        while self.epoch < r.epochs:
            per_epoch, first_step = data.pairs.plan.steps, self.step
            stream = batches.epoch(self.epoch, self.step)
            started = time.perf_counter()
            bar = tqdm(total=per_epoch, initial=self.step, desc=f"epoch {self.epoch + 1}/{r.epochs}",
                       unit="step", disable=not (progress and self.leader), leave=False,
                       dynamic_ncols=True)
            with bar:
                for batch_a, batch_b in self._saved_on_data_error(stream):
                    self._step(batch_a, batch_b, per_epoch, data.loss)
                    fault_point("step")
                    bar.update(1)
                    if self.step % 50 == 0:
                        rate = bar.format_dict["rate"] or 0
                        bar.set_postfix(loss=f"{self.running[0] / self.running[1]:.5f}",
                                        samples_s=f"{rate * r.batch:,.0f}")
                    steps_done += 1
                    if self._stop_agreed(stop):
                        bar.close()
                        return self._stop(stop)
                    if max_steps is not None and steps_done >= max_steps:
                        self._check_state()
                        self.save("last.safetensors")
                        return False
            self._end_epoch(data, time.perf_counter() - started, per_epoch - first_step)
            if self._stop_agreed(stop) and self.epoch < r.epochs:
                return self._stop(stop)
        return True

    def _rows(self) -> range | None:
        """The rows of each batch this rank trains on (pairs.share); all when alone."""
        if self.ranks is None:
            return None
        return share(self.ranks.rank, self.ranks.size, self.config.recipe.batch)

    def _stop_agreed(self, stop: "StopRequests") -> bool:
        """Whether to stop here: in a data-parallel run, whether any rank was asked to
        (Ctrl-C reaches the ranks one by one), so that all stop after the same step."""
        if self.ranks is not None:
            signum = self.ranks.largest(stop.signum or 0, "agreeing whether to stop")
            if signum and not stop.requested:
                stop.requested, stop.signum = StopRequests.SIGNALS[signum], signum
        return stop.requested is not None

    def _saved_on_data_error(self, batches):
        """The batches; a DataError drawing them (a photo that no longer decodes: the
        headers alone were read at the start) saves the run where it stands first, so no
        step is lost, and says how to continue."""
        try:
            yield from batches
        except datasets.DataError as e:
            self._check_state()
            self.save("last.safetensors")
            raise datasets.DataError(e.file, f"{e.problem}; saved {self.dir / 'last.safetensors'} "
                                             f"at epoch {self.epoch + 1}, step {self.step}: "
                                             f"repair the file, then continue with --resume "
                                             f"{self.dir}") from None

    def _step(self, batch_a: torch.Tensor, batch_b: torch.Tensor, per_epoch: int,
              single: NeighbourLoss | None = None) -> None:
        """One update, at the learning rate of its index in the run (optim.learning_rate);
        with ``single``, on a single photo's batch (the noisy crops and their choices)."""
        r, device = self.config.recipe, self.config.device
        scale, offset = 1.0, None
        if single is None:
            x, t = to_float(batch_a, device, self.dtype), to_float(batch_b, device, self.dtype)
        else:
            x, t, offset = single.batch(self.model, batch_a, batch_b, device, self.dtype)
            scale = single.lr_scale(r.optimizer.name)
        self.model.optimizer.set_lr(scale * learning_rate(
            r.schedule, r.optimizer.lr, self.epoch * per_epoch + self.step, per_epoch,
            r.epochs * per_epoch))
        label = f"epoch {self.epoch + 1}, step {self.step + 1}"
        self.recent.keep(label, (x, t))
        loss = self.model.train_step(x, t)
        if single is not None:
            loss = single.total(loss, offset)
        self.step += 1
        self._check_step(label, loss)
        total, count = self.running
        self.running = (total + loss, count + 1)

    # ---- divergence ------------------------------------------------------------
    def _check_step(self, label: str, loss: float) -> None:
        """Stops the run if the step's loss, or the gradient norm that clipping
        computed, is nan or inf: values a step reads back anyway, so no step slows."""
        if not math.isfinite(loss):
            raise self._diverged(f"the loss of {label} is {loss}")
        clip = getattr(self.model, "clip", None)  # a Program's ClipGradNorm, if it clips
        if clip is not None and not math.isfinite(norm := float(clip.total)):
            raise self._diverged(f"the gradient norm of {label} is {norm}")

    def _check_state(self) -> None:
        """Stops the run before it validates or saves parameters or optimizer state
        holding a nan or an inf, which a finite loss can hide (relu reads -inf as 0)."""
        bad = first_nonfinite_tensor(state_tensors(self.model))
        if bad is not None:
            raise self._diverged(f"{describe_state(bad)} is non-finite after epoch "
                                 f"{self.epoch + 1}, step {self.step}")

    def _diverged(self, detected: str) -> TrainingDiverged:
        """The error that stops a diverged run: what was detected, where re-running the
        steps kept with checks found it started (divergence.locate), and the
        checkpoints that stay as they were."""
        where = ""
        if hasattr(self.model, "first_nonfinite"):  # a Program (tools/torch_reference's is not)
            where = f"re-run with checks, {locate(self.model, self.recent).message}; "
        kept = [str(self.dir / n) for n in ("last.safetensors", "best.safetensors")
                if (self.dir / n).is_file()]
        saved = (f"{' and '.join(kept)} {'are' if len(kept) > 1 else 'is'} kept as before"
                 if kept else "no checkpoint had been written")
        return TrainingDiverged(f"training diverged: {detected}; {where}{saved}; try a learning "
                                f"rate lower than {self.config.recipe.optimizer.lr:g}")

    def _validate(self, data: Data) -> tuple[float, float]:
        """``evaluate`` on the validation crops; in a data-parallel run each rank
        evaluates a contiguous share of them and the per-crop PSNRs are summed."""
        noisy, clean, device = data.val_noisy, data.val_clean, self.config.device
        if self.ranks is None:
            return evaluate(self.model, noisy, clean, device=device, dtype=self.dtype)
        rank, size, n = self.ranks.rank, self.ranks.size, len(noisy)
        lo, hi = n * rank // size, n * (rank + 1) // size
        sums = [0.0, 0.0, 0.0]
        if hi > lo:
            i, o = evaluate(self.model, noisy[lo:hi], clean[lo:hi], device=device, dtype=self.dtype)
            sums = [i * (hi - lo), o * (hi - lo), float(hi - lo)]
        i, o, count = self.ranks.total(sums, self.model.device, "validating")
        return i / count, o / count

    def _end_epoch(self, data: Data, seconds: float, steps: int) -> None:
        """Validates, records and logs the epoch that ``steps`` steps in ``seconds``
        finished, then moves to the next one, saving the checkpoints and then the metrics
        from them (a kill between the two: ``resume`` writes the metrics again)."""
        r = self.config.recipe
        self._check_state()
        input_psnr, output_psnr = self._validate(data)
        total, count = self.running
        throughput = steps * r.batch / seconds
        row = {"epoch": self.epoch + 1, "train_loss": f"{total / max(count, 1):.6f}",
               "val_psnr": f"{output_psnr:.4f}", "input_psnr": f"{input_psnr:.4f}",
               "seconds": f"{seconds:.1f}", "samples_per_s": f"{throughput:.0f}"}
        self.log(f"epoch {self.epoch + 1}/{r.epochs}: loss {row['train_loss']}, "
                 f"lr {self.model.optimizer.lr:.3g}, validation "
                 f"{input_psnr:.2f} dB -> {output_psnr:.2f} dB, {seconds:.0f} s "
                 f"({row['samples_per_s']} samples/s)")
        self.rows = [*self.rows, row]
        self.epoch, self.step, self.running = self.epoch + 1, 0, (0.0, 0)
        if output_psnr > self.best:
            self.best = output_psnr
            self.save("best.safetensors")
        self.save("last.safetensors")
        self._write_metrics()
