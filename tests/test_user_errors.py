"""Input a careless user gives, and a machine that refuses a write, are one line on
stderr naming the file or option, exit status 2, and nothing half-made on disk:
outputs where a file or a read-only folder is in the way, a full disk while a
checkpoint is written, a link to nowhere as --run, a damaged run directory or
checkpoint, numbers no run can work with. (README: "Bad input ... is one line".)"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import n2ngraph as ng
from n2ngraph.app import config
from n2ngraph.app.checkpoint import load_checkpoint
from n2ngraph.app.cli import main
from n2ngraph.app.config import SettingError, TrainConfig, check_memory, check_settings
from n2ngraph.app.data import parse_noise
from n2ngraph.compiler.spec import MAX_SEED

from helpers import ROOT, fails

SPEC = str(ROOT / "specs" / "noise2noise.yaml")
QUICK = ["--epochs", "1", "--pairs", "64", "--batch", "4", "--val-count", "16", "--no-progress",
         "--threads", "1"]


@pytest.fixture(autouse=True)
def eight_gib_free(monkeypatch):
    """What the memory check refuses does not depend on the machine the tests run on
    (and where it cannot read the memory, --pairs 1000000000 is not tried for real)."""
    monkeypatch.setattr(config, "host_available_bytes", lambda: 8 * 2**30)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A run's checkpoint of the seed net, written by save_checkpoint (no training)."""
    from n2ngraph.app.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("weights") / "net.safetensors"
    model = ng.compile(ng.load_spec(SPEC), None)
    save_checkpoint(path, model.state_dict(), spec_text=Path(SPEC).read_text())
    return path


@pytest.fixture
def photo(tmp_path) -> Path:
    from n2ngraph.app.data import save_photo

    path = tmp_path / "in" / "cat.png"
    path.parent.mkdir()
    save_photo(path, torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8,
                                   generator=torch.Generator().manual_seed(0)))
    return path


# ---- outputs that cannot be written ------------------------------------------------------


def test_a_file_where_the_output_folder_should_be(tmp_path, capsys, photo, weights):
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    fails(capsys, [SPEC, "--denoise", str(photo), "--weights", str(weights),
                    "--out", str(blocker)], f"--out {blocker}", "not a folder")
    fails(capsys, [SPEC, "--export", str(blocker), "--pairs", "8", "--val-count", "4"],
           f"--export {blocker}", "not a folder")
    assert blocker.read_text() == "keep me"


def test_a_read_only_file_system_under_the_output_folder(tmp_path, capsys, photo, weights,
                                                          monkeypatch):
    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(os, "mkdir", read_only)
    out = tmp_path / "ro" / "out"
    fails(capsys, [SPEC, "--denoise", str(photo), "--weights", str(weights), "--out", str(out)],
           str(out), "Read-only file system")
    fails(capsys, [SPEC, "--export", str(out), "--pairs", "8", "--val-count", "4"],
           str(out), "Read-only file system")


def test_a_link_to_nowhere_as_the_run_directory_is_refused_and_left_alone(tmp_path, capsys):
    link = tmp_path / "run"
    link.symlink_to(tmp_path / "nowhere")
    fails(capsys, [SPEC, "--train", "--run", str(link), *QUICK], str(link), "already exists")
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()


def test_a_full_disk_while_a_checkpoint_is_written_keeps_the_last_one(tmp_path, capsys,
                                                                      monkeypatch):
    """The disk fills up once the first epoch is saved: writing the second epoch's
    checkpoint fails (in fsync, where a file system with delayed allocation reports it),
    the run stops with one line naming the checkpoint, and the first epoch's stays whole."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell which file is being written")
    run, real_fsync = tmp_path / "run", os.fsync

    def full_once_epoch_1_is_saved(fd):
        writing = os.readlink(f"/proc/self/fd/{fd}")
        # metrics.csv is written after epoch 1's checkpoints (the starting one is older)
        if ".safetensors." in writing and (run / "metrics.csv").exists():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_once_epoch_1_is_saved)
    fails(capsys, [SPEC, "--train", "--run", str(run), *QUICK, "--epochs", "2"],
           f"{run}{os.sep}", ".safetensors: cannot write (No space left on device)")
    _, _, state, _ = load_checkpoint(run / "last.safetensors")
    assert state["epoch"] == 1  # the first epoch's checkpoint, whole
    assert not list(run.glob(".*.tmp"))  # no half-written temp file left behind


def test_a_checkpoint_larger_than_the_file_system_allows_is_an_error_naming_it(tmp_path):
    """A real write that fails (here the file-size limit, EFBIG, which fails the write
    itself as a full disk does): the error names the file and the old one stays."""
    code = """if True:
        import resource, signal, sys, torch
        from pathlib import Path
        from n2ngraph.app.checkpoint import save_checkpoint
        path = Path(sys.argv[1])
        save_checkpoint(path, {"w": torch.zeros(10)}, spec_text="small")
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
        try:
            save_checkpoint(path, {"w": torch.zeros(100_000)}, spec_text="too large")
        except Exception as e:
            print(type(e).__name__, e)
        """
    path = tmp_path / "last.safetensors"
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                            text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"WriteError {path}: cannot write (File too large)", \
        result.stdout
    params, _, _, spec_text = load_checkpoint(path)
    assert spec_text == "small" and params["w"].shape == (10,)
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]


# ---- damaged run directories and checkpoints ---------------------------------------------


def test_a_checkpoint_whose_training_state_is_not_json(tmp_path, capsys, weights):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(weights, framework="pt") as f:
        metadata = f.metadata()
    for state in ("{not json", "[1, 2]"):
        bad = tmp_path / "bad.safetensors"
        save_file(load_file(weights), bad, metadata={**metadata, "state": state})
        fails(capsys, [SPEC, "--eval", "--weights", str(bad), "--val-count", "4"],
               str(bad), "training state")


def _run_directory(tmp_path, **changes) -> Path:
    """A run directory as --train writes it (config.json, spec.yaml), with ``changes``
    to its config.json; no checkpoint is needed for the errors tested."""
    run = tmp_path / "run"
    run.mkdir()
    record = TrainConfig.from_spec(ng.load_spec(SPEC)).record()
    (run / "config.json").write_text(json.dumps({**record, **changes}))
    (run / "spec.yaml").write_text(Path(SPEC).read_text())
    return run


@pytest.mark.parametrize("key, value", [
    ("epochs", "5"), ("seed", 10**30), ("seed", -1), ("batch", 0), ("batch", 10**6), ("lr", "x"),
    ("lr", 1e400), ("noise", 5), ("noise", "gaussian:1e308"), ("data", 7), ("device", "tpu"),
    ("optimizer", "foo"), ("crop", 1.5), ("val_count", -1), ("augment", "yes"),
    ("pairs", 2**31),
], ids=str)
def test_bad_values_in_a_run_directorys_config(tmp_path, capsys, key, value):
    run = _run_directory(tmp_path, **{key: value})
    fails(capsys, ["--resume", str(run), "--no-progress"], str(run / "config.json"), key)


def test_a_run_directory_whose_files_are_not_text(tmp_path, capsys):
    run = _run_directory(tmp_path)
    (run / "spec.yaml").write_bytes(b"name: \xff\xfe\n")
    fails(capsys, ["--resume", str(run)], str(run / "spec.yaml"), "not UTF-8")
    (run / "spec.yaml").write_text(Path(SPEC).read_text())
    (run / "config.json").write_bytes(b'{"epochs": "\xff"}')
    fails(capsys, ["--resume", str(run)], str(run / "config.json"))
    (run / "config.json").write_text("[1, 2]")
    fails(capsys, ["--resume", str(run)], str(run / "config.json"), "not a JSON object")


# ---- numbers no run can work with ------------------------------------------------------


@pytest.mark.parametrize("option, value", [
    ("--noise", "gaussian:1e308"), ("--noise", "poisson:1e-300"),
    ("--seed", "99999999999999999999"), ("--seed", "-1"),
    ("--val-count", "1000000000"), ("--pairs", "0"),
    ("--crop", "99999999999999999999"), ("--lr", "inf"), ("--clip-grad-norm", "nan"),
], ids=str)
def test_numbers_no_run_can_work_with_are_refused_before_anything_is_made(tmp_path, capsys,
                                                                          option, value):
    run = tmp_path / "run"
    # given after QUICK, the tested value is the one argparse keeps
    fails(capsys, [SPEC, "--train", "--run", str(run), *QUICK, option, value], option)
    assert not run.exists()


def test_an_export_of_more_pairs_than_memory_holds(tmp_path, capsys):
    """Training streams its pairs; --export holds an epoch's whole: 10^9 pairs of 32x32
    (5.7 TiB) are refused before anything is made, and train in the memory there is."""
    fails(capsys, [SPEC, "--export", str(tmp_path / "out"), "--pairs", "1000000000",
                   "--val-count", "4"], "--pairs 1000000000: an epoch's 1,000,000,000 pairs")
    assert not (tmp_path / "out").exists()
    check_memory(TrainConfig.from_spec(ng.load_spec(SPEC), pairs=10**9))


def test_a_sweep_with_a_batch_size_of_zero(tmp_path, capsys):
    run = tmp_path / "sweep"
    fails(capsys, [SPEC, "--sweep", "--run", str(run), "--lrs", "1", "--batches", "4,0",
                    "--epochs", "1", "--pairs", "8", "--val-count", "4"], "--batches", "batch 0")
    fails(capsys, [SPEC, "--sweep", "--run", str(run), "--lrs", "1,inf", "--batches", "4",
                    "--epochs", "1", "--pairs", "8", "--val-count", "4"], "--lrs", "lr inf")
    fails(capsys, [SPEC, "--sweep", "--run", str(run), "--lrs", "1", "--batches", "4,16",
                    "--epochs", "1", "--pairs", "8", "--val-count", "4"], "--batch 16")
    assert not run.exists()  # every grid point checked before the first run is made


def test_threads_torch_cannot_take(capsys):
    fails(capsys, [SPEC, "--summary", "--steps", "0", "--threads", "99999999999999999999"],
           "--threads")


def test_eval_refuses_a_seed_torch_cannot_take(capsys):
    fails(capsys, [SPEC, "--eval", "--seed", str(2**64), "--val-count", "4"], "--seed")


def test_control_characters_in_a_spec_name(tmp_path, capsys, monkeypatch):
    """A spec's name names the default run directory: a NUL in it is a spec error, not
    a traceback from the file system after the data is made."""
    text = Path(SPEC).read_text().replace("name: noise2noise", 'name: "noise\\0two"')
    spec = tmp_path / "nul.yaml"
    spec.write_text(text)
    monkeypatch.chdir(tmp_path)  # the default run directory, runs/<name>-<time>, goes here
    fails(capsys, [str(spec), "--train", *QUICK], "nul.yaml", "'name'", "control characters")
    assert [p.name for p in tmp_path.iterdir()] == ["nul.yaml"]


def test_a_spec_seed_torch_cannot_take(tmp_path):
    text = Path(SPEC).read_text().replace("seed: 0", f"seed: {MAX_SEED + 1}")
    assert text != Path(SPEC).read_text()
    with pytest.raises(ng.SpecError, match="train.seed"):
        ng.parse_spec(text)
    ng.parse_spec(text.replace(f"seed: {MAX_SEED + 1}", f"seed: {MAX_SEED}"))


def test_every_seed_allowed_seeds_every_generator_a_run_makes():
    from n2ngraph.app.pairs import epoch_generator, row_generator

    epoch_generator(MAX_SEED, 2**31 - 1)  # the largest epoch's shuffle of fixed pairs
    row_generator(MAX_SEED, 2**31 - 1, 2**31 - 1, 2**31 - 1)  # hashed: any seed, epoch, chunk
    torch.Generator().manual_seed(MAX_SEED * 7919 + 10**6)  # --eval's photo noise


def test_noise_levels_are_bounded_to_what_float32_holds():
    clean = torch.full((1, 3, 4, 4), 200, dtype=torch.uint8)
    for text in ("gaussian:1000", "poisson:0.001", "poisson:1e6"):  # the bounds work
        noisy = parse_noise(text).apply(clean, torch.Generator().manual_seed(0))
        assert noisy.dtype == torch.uint8
    for text in ("gaussian:1001", "gaussian:1e308", "poisson:0.0009", "poisson:1e7"):
        with pytest.raises(ValueError, match="accepted"):
            parse_noise(text)


def test_the_memory_check_weighs_pairs_and_validation_crops():
    """Training holds the chunks in flight (4 of 1,024 pairs of 32x32 here: the clean
    crops and two views, two more augmented), however many pairs an epoch has; --export
    holds the epoch's two views as well."""
    spec = ng.load_spec(SPEC)
    in_flight, crop = 4 * 1024, 3 * 32 * 32
    validation = 100 * crop * 2
    for pairs in (1000, 10**5, 10**9):
        config = TrainConfig.from_spec(spec, pairs=pairs, batch=4, val_count=100, crop=32)
        held = min(pairs, in_flight) * crop * 3
        check_memory(config, available=held + validation)
        with pytest.raises(SettingError, match="pairs"):
            check_memory(config, available=held + validation - 1)
    with pytest.raises(SettingError, match="val_count"):
        check_memory(config, available=validation - 1)
    augmented = TrainConfig.from_spec(spec, pairs=10**5, batch=4, val_count=100, crop=32,
                                      augment=True)
    with pytest.raises(SettingError, match="pairs"):
        check_memory(augmented, available=in_flight * crop * 3 + validation)
    export = in_flight * crop * 3 + 10**5 * crop * 2 + validation
    check_memory(config := TrainConfig.from_spec(spec, pairs=10**5, batch=4, val_count=100,
                                                 crop=32), available=export, whole_epoch=True)
    with pytest.raises(SettingError, match="an epoch's 100,000 pairs"):
        check_memory(config, available=export - 1, whole_epoch=True)


@pytest.mark.parametrize("values", [{"seed": True}, {"epochs": 2**31}, {"lr": float("nan")},
                                    {"clip_grad_norm": -1}, {"schedule": "sometimes"}], ids=str)
def test_check_settings_names_the_setting(values):
    key = next(iter(values))
    with pytest.raises(SettingError) as info:
        check_settings(values)
    assert info.value.key == key and info.value.option().startswith(f"--{key.replace('_', '-')} ")


@pytest.mark.parametrize("change", [{"step": None}, {"epoch": "1"}, {"running": [1.0]},
                                    {"optimizer_steps": -1}, {"best": True},
                                    {"metrics": "rows"}], ids=str)
def test_a_resumed_checkpoint_missing_part_of_its_training_state(tmp_path, capsys, change):
    """Valid JSON, but not the state a run resumes from: one line naming the checkpoint
    and the key, before anything is loaded."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    assert main([SPEC, "--train", "--run", str(run), *QUICK, "--max-steps", "1"]) == 0
    last = run / "last.safetensors"
    with safe_open(last, framework="pt") as f:
        metadata = f.metadata()
    state = json.loads(metadata["state"])
    (key, value), = change.items()
    state.pop(key) if value is None else state.update(change)
    save_file(load_file(last), last, metadata={**metadata, "state": json.dumps(state)})
    capsys.readouterr()
    fails(capsys, ["--resume", str(run), "--no-progress"], str(last), f"'{key}'")
