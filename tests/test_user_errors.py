"""Input a careless user gives, and a machine that refuses a write, are one line on
stderr naming the file or option, exit status 2, and nothing half-made on disk:
outputs where a file or a read-only folder is in the way, a full disk while a
checkpoint is written, a link to nowhere as --run, a damaged run directory or
checkpoint, numbers no run can work with. (README: "Bad input ... is one line".)"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import n2ngraph as ng
from n2ngraph.app.checkpoint import load_checkpoint
from n2ngraph.app.cli import main

from helpers import ROOT

SPEC = str(ROOT / "specs" / "noise2noise.yaml")
QUICK = ["--epochs", "1", "--pairs", "64", "--batch", "4", "--val-count", "16", "--no-progress",
         "--threads", "1"]


def _fails(capsys, argv, *needles) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


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
    _fails(capsys, [SPEC, "--denoise", str(photo), "--weights", str(weights),
                    "--out", str(blocker)], f"--out {blocker}", "not a folder")
    _fails(capsys, [SPEC, "--export", str(blocker), "--pairs", "8", "--val-count", "4"],
           f"--export {blocker}", "not a folder")
    assert blocker.read_text() == "keep me"


def test_a_read_only_file_system_under_the_output_folder(tmp_path, capsys, photo, weights,
                                                          monkeypatch):
    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(os, "mkdir", read_only)
    out = tmp_path / "ro" / "out"
    _fails(capsys, [SPEC, "--denoise", str(photo), "--weights", str(weights), "--out", str(out)],
           str(out), "Read-only file system")
    _fails(capsys, [SPEC, "--export", str(out), "--pairs", "8", "--val-count", "4"],
           str(out), "Read-only file system")


def test_a_link_to_nowhere_as_the_run_directory_is_refused_and_left_alone(tmp_path, capsys):
    link = tmp_path / "run"
    link.symlink_to(tmp_path / "nowhere")
    _fails(capsys, [SPEC, "--train", "--run", str(link), *QUICK], str(link), "already exists")
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
        if ".safetensors." in writing and (run / "last.safetensors").exists():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_once_epoch_1_is_saved)
    _fails(capsys, [SPEC, "--train", "--run", str(run), *QUICK, "--epochs", "2"],
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
        _fails(capsys, [SPEC, "--eval", "--weights", str(bad), "--val-count", "4"],
               str(bad), "training state")
