"""The command line, ``python -m n2ngraph.run``: train, resume, evaluate, denoise, sweep (also ``n2ngraph``).

Every user error (a bad spec, image, pkl, weights file, option or run directory) is one
line on stderr naming the file and the problem, exit status 2, and nothing on disk is
overwritten or left half-written. A training run whose loss or gradients go nan or inf
stops with one line naming the step and the first value that did, exit status 3,
keeping the checkpoints it wrote before.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

from ..codegen import CodegenError
from ..codegen.build import cache_dir as codegen_cache
from ..codegen.build import compiler as codegen_compiler
from ..compiler.parse import load_spec, parse_spec
from ..compiler.spec import OPTIMIZERS, SCHEDULES, Spec
from ..errors import SpecError
from ..runtime.distributed import DEFAULT_TIMEOUT, RankLost
from ..runtime.program import compile
from . import pretrained
from .checkpoint import CheckpointError, check_params_fit, load_checkpoint
from .config import MAX_COUNT, PAIRS_FROM, SettingError, check_memory, check_settings
from .data import DataError
from .fileio import WriteError, make_directory, safe_component
from .images import ALIGN, TILE
from .parallel import LaunchError, error_prefix, join_if_launched, leader, on_leader, report
from .train import RunDirectoryError, TrainingDiverged

EXAMPLES = """\
examples:
  python -m n2ngraph.run specs/noise2noise.yaml --train                 the seed's recipe
  python -m n2ngraph.run specs/noise2noise.yaml --train --epochs 1 --pairs 5000 --run runs/quick
  python -m n2ngraph.run --resume runs/quick                           continue a stopped run
  python -m n2ngraph.run specs/noise2noise.yaml --train --optimizer adam --schedule rampdown --augment
  python -m n2ngraph.run specs/unet.yaml --train --noise gaussian:0-50+poisson:5-50   one net, any level
  python -m n2ngraph.run specs/unet.yaml --train --data my_photos/ --pairs-from single --noise none
  python -m n2ngraph.run specs/noise2noise.yaml --eval --weights runs/quick
  python -m n2ngraph.run specs/noise2noise.yaml --eval --weights runs/quick --data photos/ --noise gaussian:25
  python -m n2ngraph.run specs/noise2noise.yaml --denoise a.png b.jpg --weights runs/quick --out clean/
  python -m n2ngraph.run specs/noise2noise.yaml --denoise a.png --out clean/   with the shipped weights
  python -m n2ngraph.run specs/noise2noise.yaml --sweep --lrs 0.1,1,1.5 --batches 4,16 --epochs 1
  python -m n2ngraph.run specs/noise2noise.yaml --export pairs/ --pairs 50000   course-format pkl files
  python -m n2ngraph.run specs/noise2noise.yaml --summary                compiled graph and memory plan
  python -m n2ngraph.run specs/noise2noise.yaml --profile --batch 64     where the time goes, node by node

data (--data): scikit-image's bundled photos by default (split by image into training
and validation); a folder of png/jpg photos; or the course's train_data.pkl (two uint8
N x 3 x 32 x 32 tensors, noisy input and noisy target; a val_data.pkl beside it, noisy
and clean, is used for validation). Noise (--noise): gaussian:SIGMA (0-255 scale),
poisson:PEAK, bernoulli:P, none, a range (gaussian:0-50: the level drawn per pair, both
views at one level) or a mixture (gaussian:0-50+poisson:5-50: each pair draws a part);
noisy images are always quantised to 8 bits, as a saved photo is. --pairs-from single
trains on single noisy photos (Neighbor2Neighbor): --noise none takes a folder's photos
as they are (validated against a second noisy view); any other --noise trains on one
fixed noisy copy of each photo and validates on clean crops.

exit status: 0 done (or stopped by --max-steps), 2 bad input, 3 training diverged (its
loss or gradients went nan or inf; the checkpoints written before are kept), 130 stopped
by Ctrl-C, 143 by SIGTERM (after saving a checkpoint that --resume continues), 4 lost
another rank of a data-parallel run (docs/distributed.md)

data-parallel (docs/distributed.md): torchrun --standalone --nproc_per_node 2 -m n2ngraph.run
  specs/noise2noise.yaml --train --threads 1       --batch stays the global batch
"""


class UsageError(Exception):
    pass


USER_ERRORS = (SpecError, DataError, CheckpointError, UsageError, RunDirectoryError,
               WriteError, LaunchError)
DIVERGED = 3  # the exit status of a training run stopped by a nan or an inf
LOST_RANK = 4  # the exit status of a rank that lost another rank of its data-parallel run


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m n2ngraph.run", epilog=EXAMPLES,
                                description="Train and use Noise2Noise denoisers compiled by n2ngraph.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", nargs="?", help="network spec (YAML), e.g. specs/noise2noise.yaml")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--train", action="store_true", help="train with the spec's recipe")
    mode.add_argument("--resume", metavar="DIR", help="continue the run in DIR where it stopped")
    mode.add_argument("--eval", action="store_true", help="PSNR of input and output on validation data")
    mode.add_argument("--denoise", nargs="+", metavar="IMG", help="denoise these photos")
    mode.add_argument("--sweep", action="store_true", help="grid of learning rates x batch sizes")
    mode.add_argument("--export", metavar="DIR", help="write training and validation pairs as the "
                      "course's train_data.pkl / val_data.pkl")
    mode.add_argument("--summary", action="store_true", help="print the compiled program (default)")
    mode.add_argument("--profile", action="store_true",
                      help="--summary, then the time of every node's forward and backward kernels")
    r = p.add_argument_group("training (defaults: the spec's train: recipe)")
    r.add_argument("--epochs", type=int)
    r.add_argument("--batch", type=int)
    r.add_argument("--lr", type=float, help="learning rate (with --optimizer: its default)")
    r.add_argument("--optimizer", choices=list(OPTIMIZERS),
                   help="another optimizer than the spec's, with its default settings")
    r.add_argument("--schedule", choices=list(SCHEDULES),
                   help="another learning-rate schedule than the spec's, with its defaults")
    r.add_argument("--clip-grad-norm", type=float, metavar="X",
                   help="rescale gradients to global L2 norm <= X (0: no clipping)")
    r.add_argument("--augment", action=argparse.BooleanOptionalAction,
                   help="random flips and 90-degree rotations of the training pairs")
    r.add_argument("--crop", type=int, help="training crop size")
    r.add_argument("--pairs", type=int, help="training pairs per epoch")
    r.add_argument("--seed", type=int)
    r.add_argument("--run", "--run-dir", metavar="DIR", dest="run",
                   help="run directory (default runs/<spec>-<time>); --run-dir under torchrun, "
                        "whose own parser takes --run for its --run-path")
    r.add_argument("--from-weights", metavar="FILE|RUNDIR|shipped",
                   help="start from these parameters instead of fresh ones (fine-tuning): a "
                        "checkpoint, a run's best one, or 'shipped' for the spec's shipped weights")
    r.add_argument("--max-steps", type=int, metavar="N",
                   help="stop after N >= 1 steps, resumable (with --resume: N more)")
    r.add_argument("--lrs", default="0.001,0.01,0.1,0.5,1,1.5,2", help="sweep learning rates")
    r.add_argument("--batches", default="4,12,24,48", help="sweep batch sizes")
    d = p.add_argument_group("data and devices")
    d.add_argument("--data", help="photo folder or train_data.pkl (default: embedded photos)")
    d.add_argument("--noise", default="gaussian:25",
                   help="noise model (default gaussian:25): gaussian:SIGMA, poisson:PEAK, "
                        "bernoulli:P, none; a range draws the level per pair (gaussian:0-50), a "
                        "mixture draws one part per pair (gaussian:0-50+poisson:5-50)")
    d.add_argument("--pairs-from", choices=list(PAIRS_FROM),
                   help="training pairs: 'pairs' (default), two noisy views of each clean crop; "
                        "'single', each crop of one noisy photo sub-sampled into two "
                        "(Neighbor2Neighbor): with --noise none, your own noisy photos as they are")
    d.add_argument("--val-count", type=int, default=1000, help="validation crops (default 1000)")
    d.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    d.add_argument("--float64", action="store_true", help="compute in float64")
    d.add_argument("--tf32", action="store_true",
                   help="on a GPU, let float32 GEMMs use TF32 tensor cores: several times "
                        "faster, with 10-bit mantissas (PyTorch's own convolutions do so by default)")
    d.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True,
                   help="on a GPU, replay each step as one CUDA graph (default); "
                        "--no-cuda-graphs launches every kernel from Python")
    d.add_argument("--codegen", action=argparse.BooleanOptionalAction, default=True,
                   help="on a CPU with a C compiler, run the kernels n2ngraph generates where "
                        "they are faster, e.g. Winograd 3x3 convs (default); --no-codegen "
                        "keeps to tensor-op kernels")
    d.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice; 1 "
                   "is often fastest at small batches or on a busy machine); per rank under torchrun")
    d.add_argument("--rank-timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                   help=f"under torchrun: seconds a rank waits for the others before it stops "
                        f"with an error (default {DEFAULT_TIMEOUT:g})")
    d.add_argument("--weights", metavar="FILE|RUNDIR", help="checkpoint, or a run's best one "
                   "(default for --eval, --denoise: the weights shipped for the spec)")
    d.add_argument("--ensemble", action="store_true",
                   help="--eval, --denoise: average the eight flips and rotations (8x the time, "
                        "a sharper result)")
    d.add_argument("--out", metavar="DIR", help="where --denoise writes its PNGs")
    d.add_argument("--overwrite", action="store_true", help="let --denoise replace existing files")
    d.add_argument("--tile", type=int, default=TILE, metavar="N",
                   help=f"--denoise, --eval on photos: photos larger than one tile go through in "
                        f"tiles of at most N x N pixels (default {TILE}); smaller tiles take less "
                        f"memory, a little more time")
    d.add_argument("--steps", type=int, default=20, help="--summary, --profile: steps to time (default 20)")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


# ---- helpers -----------------------------------------------------------------------


def _dtype(args) -> torch.dtype:
    return torch.float64 if args.float64 else torch.float32


def _device(name: str) -> str:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    if not (name == "cpu" or name.startswith("cuda")):
        raise UsageError(f"--device {name}: expected cpu or cuda")
    return name


def _spec(args) -> tuple[Spec, str]:
    if not args.spec:
        raise UsageError("a spec file is needed, e.g. specs/noise2noise.yaml")
    spec = load_spec(args.spec)
    return spec, Path(args.spec).read_text()


def _read_text(path: Path) -> str:
    """A run directory's text file, or a UsageError naming it."""
    try:
        return path.read_text()
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot read ({e.strerror or e})") from None


def _config(spec: Spec, args, *, whole_epoch: bool = False, **extra):
    """The run's settings from the spec and the options (``extra`` overriding them),
    checked, and checked to fit in memory (with an epoch's pairs held ``whole_epoch``)."""
    from .config import TrainConfig

    batch = extra.get("batch") or args.batch or spec.train.batch
    pairs = args.pairs or spec.train.pairs
    if batch > pairs:
        raise UsageError(f"--batch {batch} is larger than the {pairs} pairs of an epoch")
    if args.data is not None and not Path(args.data).exists():
        raise UsageError(f"--data {args.data}: no such file or folder")
    values = dict(epochs=args.epochs, batch=args.batch, lr=args.lr, pairs=args.pairs,
                  seed=args.seed, noise=args.noise, data=args.data, val_count=args.val_count,
                  device=_device(args.device), optimizer=args.optimizer, schedule=args.schedule,
                  clip_grad_norm=args.clip_grad_norm, augment=args.augment, crop=args.crop,
                  float64=args.float64 or None, tf32=args.tf32 or None,
                  pairs_from=args.pairs_from)
    values.update(extra)
    try:
        config = TrainConfig.from_spec(spec, **values)
        check_memory(config, whole_epoch=whole_epoch)
    except SettingError as e:
        raise UsageError(e.option()) from None
    return config


SETTINGS = ("epochs", "batch", "lr", "pairs", "seed", "crop", "val_count", "clip_grad_norm",
            "noise")
"""The options that are a run's settings, checked by config.check_settings like config.json."""


def _check_options(args) -> None:
    """Each setting given on the command line held to what a run can work with, before
    any mode starts: ``--seed 99999999999999999999`` is one line naming the option, not
    a traceback from torch.Generator."""
    try:
        check_settings({key: getattr(args, key) for key in SETTINGS})
    except SettingError as e:
        raise UsageError(e.option()) from None
    if args.tile < ALIGN:
        raise UsageError(f"--tile {args.tile}: must be at least {ALIGN} (tiles are cut on a "
                         f"{ALIGN}-pixel grid)")


def _model(spec: Spec, config, dtype, args):
    r = config.recipe
    shape = (r.batch, spec.inputs[0].channels, config.train_crop, config.train_crop)
    ranks = getattr(args, "ranks", None)
    if ranks is not None and r.batch % ranks.size:
        raise UsageError(f"--batch {r.batch} cannot be shared by {ranks.size} ranks: the global "
                         f"batch must be a multiple of the number of ranks")
    if ranks is not None and config.pairs_from == "single":
        raise UsageError("--pairs-from single trains in one process only, for now: launch it "
                         "without torchrun")
    if ranks is not None:
        shape = (r.batch // ranks.size, *shape[1:])
    return compile(spec, shape, device=config.device, dtype=dtype, seed=r.seed,
                   optimizer=r.optimizer, clip_grad_norm=r.clip_grad_norm or 0.0,
                   cuda_graphs=args.cuda_graphs, codegen=args.codegen, group=ranks)


def _default_run(spec: Spec, kind: str = "") -> Path:
    """runs/<name><kind>-<time>, the name made one safe path component: a spec's name
    (``../../x``) never puts a run outside runs/."""
    return Path("runs") / f"{safe_component(spec.name)}{kind}-{datetime.now():%Y%m%d-%H%M%S}"


def _check_max_steps(args) -> None:
    if args.max_steps is not None and args.max_steps < 1:
        raise UsageError(f"--max-steps must be at least 1, got {args.max_steps}")


def _weights_file(path: str) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "best.safetensors"
    return p


def _shipped_weights(spec: Spec, flag: str) -> Path:
    path = pretrained.weights_path(spec.name)
    if not path.is_file():
        raise UsageError(f"no weights ship with n2ngraph for spec '{spec.name}': pass "
                         f"{flag} FILE|RUNDIR (a checkpoint, or a run directory)")
    print(f"weights: {path} (shipped for '{spec.name}')")
    return path


def _read_params_into(model, spec: Spec, path: Path) -> None:
    params, _, _, _ = load_checkpoint(path)
    check_params_fit(path, params, model.state_dict(), spec.name)
    model.load_state_dict(params)


def _load_weights(spec: Spec, args, dtype):
    """--weights, or else the weights shipped with n2ngraph for a spec of that name."""
    path = _weights_file(args.weights) if args.weights else _shipped_weights(spec, "--weights")
    model = compile(spec, None, device=_device(args.device), dtype=dtype,
                    cuda_graphs=args.cuda_graphs, codegen=args.codegen)
    _read_params_into(model, spec, path)
    return model


def _finish_run(run, data, config, dtype, log=print) -> None:
    from .images import to_uint8
    from .plots import plot_examples, plot_history

    plot_history(run.metrics(), run.dir / "history.png", f"{run.spec.name}: {run.dir.name}")
    sample = data.val_noisy[:6]
    x = sample.to(device=config.device, dtype=dtype) / 255
    plot_examples(sample, to_uint8(run.model.forward(x)), data.val_clean[:6], run.dir / "examples.png")
    best = run.dir / "best.safetensors"
    if best.is_file():
        log(f"best validation PSNR {run.best:.2f} dB; weights in {best}")
    else:  # no epoch gave a validation PSNR above -inf (a nan): named only if written
        log(f"no epoch gave a finite validation PSNR; last weights in {run.dir / 'last.safetensors'}")


def _train_to_end(run, data, config, dtype, args) -> int:
    """Trains ``run`` on and returns the exit status: 0 when it finished or stopped at
    --max-steps; 128 + the signal's number when Ctrl-C (130) or SIGTERM (143) stopped it
    after saving, as a shell reports a process a signal ended, so ``train && eval`` stops."""
    if run.train(data, max_steps=args.max_steps, progress=not args.no_progress) and run.leader:
        _finish_run(run, data, config, dtype)
    return 128 + run.stopped_by if run.stopped_by else 0


# ---- modes -------------------------------------------------------------------------


def _check_new_run(directory: Path) -> None:
    if os.path.lexists(directory):  # a link to nowhere too: mkdir would fail on it
        raise UsageError(f"run directory {directory} already exists: continue it with "
                         f"--resume {directory}, or choose another --run")


def _start_weights(spec: Spec, args) -> Path | None:
    """The checkpoint --from-weights names, checked to exist (None without it)."""
    if not args.from_weights:
        return None
    start = (_shipped_weights(spec, "--from-weights") if args.from_weights == "shipped"
             else _weights_file(args.from_weights))
    if not start.is_file():
        raise UsageError(f"--from-weights {args.from_weights}: no such checkpoint ({start})")
    return start


def do_train(args) -> int:
    from .train import Run, prepare_data

    _check_max_steps(args)
    spec, text = _spec(args)
    directory = Path(on_leader(args.ranks, lambda: args.run or str(_default_run(spec))))
    on_leader(args.ranks, lambda: _check_new_run(directory))
    start = on_leader(args.ranks, lambda: _start_weights(spec, args))  # before any data or file
    config = _config(spec, args, from_weights=str(start) if start else None)
    data = prepare_data(config)
    dtype = _dtype(args)
    model = _model(spec, config, dtype, args)
    if start is not None:  # read by rank 0 alone, whose parameters every rank then takes
        on_leader(args.ranks, lambda: _read_params_into(model, spec, start))
    with Run(directory, spec, text, model, config, dtype=dtype) as run:
        run.create()
        r = config.recipe
        leader(args.ranks, f"training {spec.name} into {directory}: {r.epochs} epochs, batch "
               f"{r.batch}, {r.optimizer.name} lr {r.optimizer.lr}, {r.schedule.name} schedule; "
               f"{data.description}" + (f"; starting from the parameters in {start}" if start else "")
               + (f"; {args.ranks.size} ranks, {r.batch // args.ranks.size} rows each"
                  if args.ranks else ""))
        return _train_to_end(run, data, config, dtype, args)


RESUME_KEEPS = ("epochs", "batch", "lr", "optimizer", "schedule", "clip_grad_norm", "augment",
                "crop", "pairs", "seed", "data", "run", "from_weights", "weights", "pairs_from")
"""Options a resumed run cannot take: it keeps the settings in its config.json."""


def _check_nothing_resume_ignores(args) -> None:
    """A setting given with --resume would be ignored (the run continues as it started,
    bit-identically): refused, naming the option, rather than silently dropped."""
    given = [name for name in RESUME_KEEPS if getattr(args, name, None) is not None]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise UsageError(f"{flag}: a resumed run keeps the settings it started with (its "
                         f"config.json); to change them, start a new run with --from-weights "
                         f"{args.resume}")


def do_resume(args) -> int:
    from .config import TrainConfig
    from .train import Run, prepare_data

    _check_max_steps(args)
    _check_nothing_resume_ignores(args)
    directory = Path(args.resume)
    config_path, spec_path = directory / "config.json", directory / "spec.yaml"
    text, record = on_leader(args.ranks, lambda: _read_run_files(args, directory))
    spec = parse_spec(text, file=str(spec_path))
    try:
        config = TrainConfig.from_record(spec, record)
        check_memory(config)
    except SettingError as e:
        raise UsageError(f"{config_path}: {e}") from None
    except (ValueError, TypeError) as e:
        raise UsageError(f"{config_path}: unreadable run configuration ({e})") from None
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"{config_path}: the run trains on {config.device}, and no CUDA "
                         f"device is available here")
    for flag, recorded in (("float64", config.float64), ("tf32", config.tf32)):
        if getattr(args, flag) and not recorded:
            raise UsageError(f"--{flag}: {directory} was trained without it, and a resumed run "
                             f"keeps the arithmetic it started with")
    if config.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    dtype = torch.float64 if config.float64 else torch.float32
    model = _model(spec, config, dtype, args)
    with Run(directory, spec, text, model, config, dtype=dtype) as run:
        run.resume()
        if run.epoch >= config.recipe.epochs:
            leader(args.ranks, f"{directory}: already trained for {config.recipe.epochs} epochs")
            return 0
        data = prepare_data(config)
        leader(args.ranks, f"resuming {directory} at epoch {run.epoch + 1}, step {run.step}"
               + (f" on {args.ranks.size} ranks" if args.ranks else ""))
        return _train_to_end(run, data, config, dtype, args)


def _read_run_files(args, directory: Path) -> tuple[str, dict]:
    """(spec text, recorded settings) of the run in ``directory``: read by rank 0 alone
    in a data-parallel run (the other ranks may be on machines without the directory)."""
    config_path, spec_path = directory / "config.json", directory / "spec.yaml"
    for path in (config_path, spec_path):
        if not path.is_file():
            raise UsageError(f"{path}: missing; is {directory} a run directory?")
    if args.spec:
        _check_resumed_spec(args.spec, spec_path)
    try:
        record = json.loads(config_path.read_text())
    except ValueError as e:
        raise UsageError(f"{config_path}: unreadable run configuration ({e})") from None
    return _read_text(spec_path), record


def _check_resumed_spec(given: str, recorded: Path) -> None:
    """A resumed run trains the spec it started with (its spec.yaml): a spec given with
    --resume must be that one, not silently ignored."""
    try:
        same = Path(given).read_bytes() == recorded.read_bytes()
    except OSError as e:
        raise UsageError(f"{given}: cannot read spec ({e.strerror})") from None
    if not same:
        raise UsageError(f"{given} differs from {recorded}, the spec the run was started with; "
                         f"--resume continues that one: leave the spec out")


def do_eval(args) -> int:
    from . import data as datasets

    spec, _ = _spec(args)
    dtype = _dtype(args)
    model = _load_weights(spec, args, dtype)
    noise = datasets.parse_noise(args.noise) if args.noise else None
    seed = args.seed if args.seed is not None else 0
    if datasets.source_kind(args.data) == "photos":
        input_psnr, output_psnr, what = _eval_photos(model, spec, args, noise, seed, dtype)
    else:
        input_psnr, output_psnr, what = _eval_crops(model, spec, args, noise, seed, dtype)
    if args.ensemble:
        what += ", mean of 8 orientations"
    print(f"{spec.name}: PSNR {input_psnr:.2f} dB (input) -> {output_psnr:.2f} dB (output) on {what}")
    return 0


def _eval_photos(model, spec: Spec, args, noise, seed: int, dtype) -> tuple[float, float, str]:
    """(input PSNR, output PSNR, on what) over the photos of folder ``--data``, each whole
    and noised with its own seed, the output rounded to 8 bits as a saved photo is.
    Memory holds one photo at a time, however many the folder has."""
    from tqdm import tqdm

    from .folder import PhotoFolder

    photos = PhotoFolder(args.data, cache_bytes=0)  # every header read, no photo decoded yet
    scores = []
    listed = tqdm(photos, total=len(photos), desc="photos", unit="photo", leave=False,
                  disable=args.no_progress, dynamic_ncols=True)
    for i, name in enumerate(listed):
        scores.append(_photo_psnr(model, spec, args, photos[name], noise, seed, i, dtype))
    what = f"{len(scores)} photos in {args.data} (noise {noise}, seed {seed}, full size, 8-bit output)"
    return (sum(s[0] for s in scores) / len(scores), sum(s[1] for s in scores) / len(scores), what)


def _photo_psnr(model, spec: Spec, args, clean, noise, seed: int, index: int,
                dtype) -> tuple[float, float]:
    """(input PSNR, output PSNR) of photo ``index`` noised by ``noise.noisy_photo``; its
    copies are let go on return, before the next photo is decoded."""
    from .images import denoise
    from .metrics import psnr
    from .noise import noisy_photo

    noisy = noisy_photo(clean, noise, seed, index)
    out = denoise(model, spec, noisy, device=model.device, dtype=dtype, ensemble=args.ensemble,
                  tile=args.tile)
    reference = clean[None].double() / 255
    return psnr(noisy.double() / 255, reference), psnr(out.double() / 255, reference)


def _eval_crops(model, spec: Spec, args, noise, seed: int, dtype) -> tuple[float, float, str]:
    """(input PSNR, output PSNR, on what) over the course's pairs in ``--data``, or else
    over validation crops of scikit-image's photos."""
    from . import data as datasets
    from .train import evaluate

    if datasets.source_kind(args.data) == "pairs":
        noisy, clean = datasets.load_pairs(args.data)
        what = f"{len(noisy)} pairs in {args.data}"
    else:
        _, val = datasets.embedded_split()
        noisy, clean = datasets.validation_set(val, args.val_count, spec.train.crop, noise, seed)
        what = f"{len(noisy)} validation crops of scikit-image's photos (noise {noise}, seed {seed})"
    input_psnr, output_psnr = evaluate(model, noisy, clean, device=model.device, dtype=dtype,
                                       ensemble=args.ensemble)
    return input_psnr, output_psnr, what


def do_denoise(args) -> int:
    from . import data as datasets

    spec, _ = _spec(args)
    if not args.out:
        raise UsageError("--denoise needs --out DIR for the results")
    sources = [Path(p) for p in args.denoise]
    targets = _output_files(Path(args.out), [f"{path.stem}.png" for path in sources], "--out",
                            overwrite=args.overwrite, hint="pass --overwrite to replace it")
    for path in sources:  # each an image, from its header, before the work starts
        datasets.photo_size(path)
    dtype = _dtype(args)
    model = _load_weights(spec, args, dtype)
    make_directory(Path(args.out))
    for path, target in zip(sources, targets):
        _denoise_photo(model, spec, path, target, dtype, args)
    return 0


def _output_files(folder: Path, names: list[str], flag: str, *, overwrite: bool = False,
                  hint: str = "choose another folder") -> list[Path]:
    """The files ``names`` in ``folder`` (option ``flag``), checked before any work: the
    folder is one (or is not there yet), no two names collide, none is there already
    unless ``overwrite``; else a UsageError, with ``hint`` for a file already there."""
    if os.path.lexists(folder) and not folder.is_dir():
        raise UsageError(f"{flag} {folder}: exists and is not a folder")
    targets = [folder / name for name in names]
    if len(set(targets)) != len(targets):
        raise UsageError("two inputs share a file name; their outputs would collide")
    existing = [str(t) for t in targets if os.path.lexists(t)]
    if existing and not overwrite:
        raise UsageError(f"{existing[0]} exists: {hint}")
    return targets


def _denoise_photo(model, spec: Spec, path: Path, target: Path, dtype, args) -> None:
    """One photo decoded, denoised tile by tile into 8 bits, written and let go before
    the next is read: memory holds one photo's 8-bit pixels and one tile's work, for
    any number of photos of any size."""
    from . import data as datasets
    from .images import denoise

    start = time.perf_counter()
    photo = datasets.load_photo(path)
    h, w = photo.shape[1:]
    result = denoise(model, spec, photo[None], device=model.device, dtype=dtype,
                     ensemble=args.ensemble, tile=args.tile)[0]
    del photo  # before the PNG encoder takes its own copy of the result
    datasets.save_photo(target, result)
    print(f"{path} ({w}x{h}) -> {target} in {time.perf_counter() - start:.2f} s")


def do_sweep(args) -> int:
    import csv

    from .fileio import write_atomic
    from .plots import plot_sweep
    from .train import Run, prepare_data

    spec, text = _spec(args)
    directory = Path(args.run) if args.run else _default_run(spec, "-sweep")
    if os.path.lexists(directory):
        raise UsageError(f"sweep directory {directory} already exists; choose another --run")
    dtype = _dtype(args)
    grid = [(batch, lr, _config(spec, args, batch=batch, lr=lr))  # all checked before any run
            for batch, lr in _sweep_grid(args)]
    data = prepare_data(_config(spec, args))
    results = []
    for batch, lr, config in grid:
        with Run(directory / f"lr{lr:g}-batch{batch}", spec, text,
                 _model(spec, config, dtype, args), config, dtype=dtype,
                 log=lambda *_: None) as run:
            run.create()
            try:
                run.train(data, progress=not args.no_progress)
                outcome = f"best validation PSNR {run.best:.2f} dB"
            except TrainingDiverged as e:  # one point of the grid: the sweep goes on
                outcome = str(e)
        if run.stopped_by:  # Ctrl-C or SIGTERM stops the sweep, not just this run
            print(f"sweep stopped by {signal.Signals(run.stopped_by).name} during lr {lr:g}, "
                  f"batch {batch}; its runs so far are in {directory}", file=sys.stderr)
            return 128 + run.stopped_by
        results.append({"lr": lr, "batch": batch, "val_psnr": run.best})
        print(f"lr {lr:g}, batch {batch}: {outcome}")

    def write(temp):
        with open(temp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["lr", "batch", "val_psnr"])
            writer.writeheader()
            writer.writerows(results)

    write_atomic(directory / "sweep.csv", write)
    plot_sweep(results, directory / "sweep.png")
    best = max(results, key=lambda r: r["val_psnr"])
    if not math.isfinite(best["val_psnr"]):
        raise TrainingDiverged(f"every run of the sweep diverged in its first epoch; "
                               f"{directory / 'sweep.csv'}")
    print(f"best: lr {best['lr']:g}, batch {best['batch']}, {best['val_psnr']:.2f} dB; "
          f"{directory / 'sweep.png'}")
    return 0


def _sweep_grid(args) -> list[tuple[int, float]]:
    """(batch, lr) of each run of a sweep, batch sizes outermost, each value held to what
    a run can work with like the option it stands for (``--sweep --batches 0`` is an
    error naming --batches, not a traceback after the first runs)."""
    try:
        lrs = [float(v) for v in args.lrs.split(",")]
        batches = [int(v) for v in args.batches.split(",")]
    except ValueError:
        raise UsageError("--lrs and --batches are comma-separated numbers, e.g. --lrs 0.1,1") from None
    for flag, key, values in (("--lrs", "lr", lrs), ("--batches", "batch", batches)):
        try:
            for value in values:
                check_settings({key: value})
        except SettingError as e:
            raise UsageError(f"{flag}: {e}") from None
    return [(batch, lr) for batch in batches for lr in lrs]


def do_export(args) -> int:
    from . import data as datasets
    from .pairs import whole_epoch
    from .train import prepare_data

    spec, _ = _spec(args)
    if args.pairs_from == "single":
        raise UsageError("--export writes Noise2Noise pairs; --pairs-from single makes them "
                         "inside each training step, so there are none to write")
    config = _config(spec, args, whole_epoch=True)
    out = Path(args.export)
    targets = _output_files(out, ["train_data.pkl", "val_data.pkl"], "--export")
    data = prepare_data(config)
    a, b = whole_epoch(data.pairs, 0)
    make_directory(out)
    datasets.save_pairs(targets[0], a, b)
    datasets.save_pairs(targets[1], data.val_noisy, data.val_clean)
    print(f"wrote {targets[0]} ({len(a)} noisy/noisy pairs) and {targets[1]} "
          f"({len(data.val_noisy)} noisy/clean pairs); {data.description}")
    return 0


def do_summary(args) -> int:
    spec, _ = _spec(args)
    recipe = spec.train
    batch, crop = args.batch or recipe.batch, args.crop or recipe.crop
    shape = (batch, spec.inputs[0].channels, crop, crop)
    dtype = _dtype(args)
    prog = compile(spec, shape, device=_device(args.device), dtype=dtype,
                   cuda_graphs=args.cuda_graphs, codegen=args.codegen)
    compiled = prog.compiled("train" if spec.loss else "infer", prog.input_shapes(shape))
    graph = compiled.graph
    n_params = sum(p.numel() for p in prog.params.values())
    print(f"{spec.name}: {len(spec.nodes)} nodes, {len(prog.params)} parameter tensors "
          f"({n_params:,} values), compiled for {tuple(shape)} {str(dtype).split('.')[-1]} "
          f"on {prog.device}")
    print(f"kernels: {_codegen_status(prog)}")
    for node in spec.nodes:
        if node.name in graph:
            how = graph[node.name].impl.describe()
            print(f"  {node.name:<12} {node.op.describe():<70} -> {graph[node.name].shape}"
                  + (f"  [{how}]" if how else ""))
    kinds = [graph[v].kind for v in compiled.schedule.order]
    print(f"schedule: {kinds.count('op')} forward kernels, {len(kinds) - kinds.count('op')} backward "
          f"({len(graph.pruned)} gradients pruned)")
    print(f"memory: {compiled.plan.report()}")
    if not spec.loss or args.steps <= 0:
        return 0
    gen = torch.Generator().manual_seed(0)
    clean = torch.rand(shape, generator=gen, dtype=dtype)
    noisy = [(clean + 0.1 * torch.randn(shape, generator=gen, dtype=dtype)).to(prog.device)
             for _ in range(2)]
    prog.train_step(*noisy)
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = prog.train_step(*noisy)
    elapsed = time.perf_counter() - start
    print(f"{args.steps} training steps on synthetic pairs: {elapsed / args.steps * 1e3:.2f} ms/step, "
          f"{args.steps * batch / elapsed:,.0f} samples/s, final loss {loss:.5f}")
    if args.profile:
        print_profile(compiled, prog, noisy, args.steps)
    return 0


def _codegen_status(prog) -> str:
    """Whether the plan may run generated kernels, and why not where it may not."""
    if not prog.codegen:
        return "tensor ops only (--no-codegen)"
    if prog.device.type != "cpu":
        return f"tensor ops only (generated kernels run on a CPU, this is {prog.device})"
    found = codegen_compiler()
    if found is None:
        return "tensor ops only (no C compiler found: set CC to use one)"
    return f"generated where faster, built by {found.version} (cache {codegen_cache()})"


def print_profile(compiled, prog, inputs, repeats: int) -> None:
    """Median time of each node's forward kernel and of the VJP kernels that
    differentiate it, slowest node first; then the optimizer update."""
    graph = compiled.graph
    seconds = compiled.executable.profile(dict(zip(prog.spec.input_names, inputs)), repeats)
    rows: dict[str, list[float]] = {}
    for value, t in seconds.items():
        node = graph[value]
        owner = node.fwd if node.kind in ("op", "vjp") else f"({node.kind} {node.fwd})"
        rows.setdefault(owner, [0.0, 0.0])[0 if node.kind == "op" else 1] += t
    optimizer = []
    for _ in range(repeats):
        start = time.perf_counter()
        prog.optimizer.step()
        optimizer.append(time.perf_counter() - start)
    rows["(optimizer)"] = [0.0, sorted(optimizer)[len(optimizer) // 2]]
    total = sum(sum(r) for r in rows.values())
    print(f"\nprofile: median of {repeats} steps, kernel by kernel ({total * 1e3:.2f} ms in all)")
    print(f"  {'node':<24} {'op':<18} {'forward':>10} {'backward':>10} {'share':>7}")
    for owner, (fwd, bwd) in sorted(rows.items(), key=lambda kv: -sum(kv[1])):
        op = graph[owner].op.name if owner in graph else ""
        print(f"  {owner:<24} {op:<18} {fwd * 1e3:8.3f}ms {bwd * 1e3:8.3f}ms "
              f"{(fwd + bwd) / total:7.1%}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads is not None:
        if not 1 <= args.threads <= MAX_COUNT:  # torch.set_num_threads takes a C int
            print(f"error: --threads must be from 1 to {MAX_COUNT:,}", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    modes = [("train", do_train), ("resume", do_resume), ("eval", do_eval),
             ("denoise", do_denoise), ("sweep", do_sweep), ("export", do_export)]
    action = next((fn for name, fn in modes if getattr(args, name)), do_summary)
    args.ranks = None
    try:
        args.ranks = join_if_launched(action in (do_train, do_resume), args.rank_timeout)
        _check_options(args)
        status = action(args)
        if args.ranks is not None:
            args.ranks.close()
        return status
    except USER_ERRORS as e:
        report(args.ranks, str(e))
        return 2
    except TrainingDiverged as e:
        report(args.ranks, str(e))
        return DIVERGED
    except RankLost as e:
        print(f"error: {e}", file=sys.stderr)
        return LOST_RANK
    except CodegenError as e:  # raised while plans are built, before any step
        report(args.ranks, f"{e}; --no-codegen runs the tensor-op kernels instead")
        return 2
    except OSError as e:  # a file the system refused where no check above names it better
        where = f"{e.filename}: " if e.filename else ""
        report(args.ranks, f"{where}{e.strerror or e}")
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C while training, or one elsewhere
        print(f"{error_prefix(args.ranks)}interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
