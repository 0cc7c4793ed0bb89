"""Run directories under crashes and misuse: a real training process killed with SIGKILL
at many points (while its directory is made, mid-epoch, while a checkpoint is written,
between the checkpoint and metrics.csv) always resumes, ends with an uninterrupted run's
weights bit for bit and one metrics row per epoch; one process trains a run at a time;
signals give the shell's exit statuses; spec names, --max-steps and specs given with
--resume cannot do what they should not.

The crashes happen at named points (fileio.fault_point): the process signals itself
there, so each one is exact and the test does not depend on timing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from n2ngraph.app.checkpoint import load_checkpoint
from n2ngraph.app.cli import main

from helpers import ROOT, fails

SPEC = str(ROOT / "specs" / "noise2noise.yaml")
TINY = ["--epochs", "2", "--pairs", "16", "--batch", "4", "--crop", "16", "--val-count", "8",
        "--threads", "1", "--no-progress"]  # 4 steps an epoch


def _start(argv: list[str], fault: str, signal_name: str = "SIGKILL") -> subprocess.Popen:
    env = dict(os.environ, N2NGRAPH_FAULT_AT=fault, N2NGRAPH_FAULT_SIGNAL=signal_name,
               PYTHONUNBUFFERED="1")  # what it printed before a SIGKILL too
    return subprocess.Popen([sys.executable, "-m", "n2ngraph.run", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen) -> tuple[int, str]:
    out, err = process.communicate(timeout=120)
    return process.returncode, out + err


def _killed_at(argv: list[str], fault: str) -> str:
    code, output = _finish(_start(argv, fault))
    assert code == -signal.SIGKILL, (fault, output)
    return output


@pytest.fixture(autouse=True)
def _threads_restored():
    """``--threads 1`` in this process (as in the killed ones, for the same sums) must
    not slow the tests that run after these."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def reference(tmp_path):
    """The uninterrupted run, in this process."""
    assert main([SPEC, "--train", "--run", str(tmp_path / "reference"), *TINY]) == 0
    return tmp_path / "reference"


def _refused_while_stopped(process: subprocess.Popen, run, capsys) -> None:
    """``process`` froze itself (SIGSTOP) holding the run's lock: a second --resume is
    refused in one line."""
    _, status = os.waitpid(process.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status)
    capsys.readouterr()
    assert main(["--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "being trained by another process" in err and f"pid {process.pid}" in err, err
    assert err.count("\n") == 1


def test_a_run_killed_anywhere_resumes_bit_identically(reference, tmp_path, capsys):
    run = tmp_path / "run"
    train, resume = [SPEC, "--train", "--run", str(run), *TINY], ["--resume", str(run), *TINY[-3:]]

    _killed_at(train, "rename:last.safetensors")  # the starting checkpoint, directory unmade
    assert not run.exists() and len(list(tmp_path.glob(".run.*.creating"))) == 1
    _killed_at(train, "step#2")  # mid-epoch 1, before any checkpoint of the old trainer
    assert not list(tmp_path.glob(".run.*")), "the abandoned directory was not removed"
    assert load_checkpoint(run / "last.safetensors")[2]["epoch"] == 0

    paused = _start(resume, "step#2", "SIGSTOP")
    try:
        _refused_while_stopped(paused, run, capsys)
        paused.send_signal(signal.SIGTERM)  # handled once it runs again: stop after the step
        paused.send_signal(signal.SIGCONT)
        code, output = _finish(paused)
    finally:
        if paused.poll() is None:  # a failed check above: leave no frozen process behind
            paused.kill()
            paused.communicate()
    assert code == 143 and "continue with --resume" in output, output

    _killed_at(resume, "rename:best.safetensors")  # end of epoch 1, mid-checkpoint
    assert list(run.glob(".best.safetensors.*.tmp")) and not (run / "metrics.csv").exists()
    output = _killed_at(resume, "written:last.safetensors")  # checkpoint saved, metrics not
    assert "removed 1 unfinished temp file" in output, output
    assert not list(run.glob(".*.tmp")) and not (run / "metrics.csv").exists()

    code, output = _finish(_start(resume, ""))
    assert code == 0 and "resuming" in output and "epoch 2, step 0" in output, output
    for name in ("last.safetensors", "best.safetensors"):
        expected, got = load_file(reference / name), load_file(run / name)
        assert expected.keys() == got.keys()
        assert all(torch.equal(expected[k], got[k]) for k in expected), name
    assert _metrics(run, "epoch") == ["1", "2"]
    for column in ("train_loss", "val_psnr", "input_psnr"):
        assert _metrics(run, column) == _metrics(reference, column), column


def _metrics(run, column: str) -> list[str]:
    lines = (run / "metrics.csv").read_text().splitlines()
    index = lines[0].split(",").index(column)
    return [line.split(",")[index] for line in lines[1:]]


def test_metrics_of_an_older_checkpoint_are_cut_to_its_epochs(reference, tmp_path):
    """A checkpoint written before the metrics moved into it: resuming keeps the csv's
    rows of the epochs the checkpoint holds, so a row written before a kill is not
    repeated."""
    run = tmp_path / "old"
    assert main([SPEC, "--train", "--run", str(run), *TINY, "--max-steps", "5"]) == 0
    tensors, state = load_file(run / "last.safetensors"), load_checkpoint(run / "last.safetensors")
    metadata = {"format": "n2ngraph-checkpoint-1", "spec": state[3],
                "state": json.dumps({k: v for k, v in state[2].items() if k != "metrics"})}
    save_file(tensors, run / "last.safetensors", metadata=metadata)
    lines = (run / "metrics.csv").read_text().splitlines()  # epoch 1, and a row of epoch 2
    (run / "metrics.csv").write_text("\n".join([*lines, lines[1].replace("1,", "2,", 1)]) + "\n")
    assert main(["--resume", str(run), "--no-progress"]) == 0
    assert _metrics(run, "epoch") == ["1", "2"]
    assert _metrics(run, "train_loss") == _metrics(reference, "train_loss")


def test_a_spec_name_never_moves_the_run_out_of_runs(tmp_path, monkeypatch):
    spec = tmp_path / "specs" / "escape.yaml"
    spec.parent.mkdir()
    spec.write_text((ROOT / "specs" / "noise2noise.yaml").read_text().replace(
        "name: noise2noise", 'name: "../../x/../y"', 1))
    work = tmp_path / "work" / "here"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    assert main([str(spec), "--train", *TINY, "--max-steps", "1"]) == 0
    made = list((work / "runs").iterdir())
    assert len(made) == 1 and made[0].name.startswith("_.._x_.._y-"), made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["specs", "work"]
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["here"]


def test_max_steps_must_be_positive(tmp_path, capsys):
    for steps in ("0", "-3"):
        fails(capsys, [SPEC, "--train", "--run", str(tmp_path / "r"), *TINY, "--max-steps", steps],
               "--max-steps", steps)
        fails(capsys, ["--resume", str(tmp_path / "r"), "--max-steps", steps], "--max-steps")
    assert not (tmp_path / "r").exists()


def test_a_spec_given_with_resume_must_be_the_runs(tmp_path, capsys):
    run = tmp_path / "r"
    assert main([SPEC, "--train", "--run", str(run), *TINY, "--max-steps", "1"]) == 0
    before = (run / "last.safetensors").read_bytes()
    other = str(ROOT / "specs" / "skipnet.yaml")
    fails(capsys, [other, "--resume", str(run)], "skipnet.yaml", "differs", "spec.yaml")
    fails(capsys, [str(tmp_path / "gone.yaml"), "--resume", str(run)], "gone.yaml")
    assert (run / "last.safetensors").read_bytes() == before
    assert main([SPEC, "--resume", str(run), "--max-steps", "1", "--no-progress"]) == 0
    assert load_checkpoint(run / "last.safetensors")[2]["step"] == 2


def test_a_signal_stops_a_sweep_with_the_shells_status(tmp_path, monkeypatch, capsys):
    """SIGTERM during a sweep's first run stops the sweep (exit 143), not just that run
    to go on with the next one."""
    from n2ngraph.runtime.program import Program

    original, steps = Program.train_step, []

    def step_then_signal(self, *inputs):
        steps.append(original(self, *inputs))
        if len(steps) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return steps[-1]

    monkeypatch.setattr(Program, "train_step", step_then_signal)
    sweep = tmp_path / "sweep"
    assert main([SPEC, "--sweep", "--run", str(sweep), "--lrs", "0.1,1", "--batches", "4",
                 *TINY]) == 128 + signal.SIGTERM
    assert [p.name for p in sweep.iterdir()] == ["lr0.1-batch4"] and len(steps) == 2
    assert "sweep stopped by SIGTERM" in capsys.readouterr().err
