"""Data-parallel training (runtime/distributed.py, app/parallel.py): two gloo ranks on
127.0.0.1, each a process this test starts, follow one process's trajectory on the same
global batches (float64, 1e-9 relative), through the API and through torchrun; a rank
that dies or hangs is reported by the other within the timeout; a distributed run
resumes, with another number of ranks too."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from n2ngraph.app.checkpoint import load_checkpoint
from n2ngraph.app.cli import main
from n2ngraph.compiler.parse import load_spec
from n2ngraph.runtime.buckets import _cut
from n2ngraph.runtime.flat import flat_view
from n2ngraph.runtime.program import compile

import dist_worker
from helpers import ROOT, relative

SPEC = str(ROOT / "specs" / "noise2noise.yaml")
RUN = ["--pairs", "48", "--batch", "8", "--crop", "16", "--val-count", "6", "--threads", "1",
       "--float64", "--no-progress", "--optimizer", "adam", "--lr", "0.01"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "n2ngraph.run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, port: int, **extra) -> dict[str, str]:
    """A rank's environment, as torchrun would set it, on the loopback only."""
    env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    env.update(extra)
    return env


def start_ranks(argv: list[str], cwd, extra=({}, {})) -> list[subprocess.Popen]:
    port = free_port()
    return [subprocess.Popen(argv, cwd=cwd, env=rank_env(rank, port, **extra[rank]),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for rank in (0, 1)]


def assert_same_params(a: dict, b: dict, tol: float = 1e-9) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert relative(a[name], b[name]) < tol, (name, relative(a[name], b[name]))


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "sgd-after-backward"])
def test_two_ranks_follow_one_process(dist_api_run, optimizer):
    """The API: each rank's Program trains its half of every global batch; both end with
    one process's parameters (1e-9 relative: float64 sums split in two halves) and
    exactly each other's (the all_reduce hands both the same bits). Gradients sent in
    buckets during backward, or all at once after it (as a batch run in parts does)."""
    reference, losses = dist_worker.train(optimizer.split("-")[0], None)
    ranks = [torch.load(dist_api_run / f"{optimizer}-{r}.pt") for r in (0, 1)]
    for rank in ranks:
        assert_same_params(rank["params"], reference)
        assert rank["losses"] == pytest.approx(losses, rel=1e-12)
    for name, value in ranks[0]["params"].items():
        assert torch.equal(value, ranks[1]["params"][name]), name
    start, _ = dist_worker.train("sgd", None, steps=0)
    assert relative(reference["conv1.weight"], start["conv1.weight"]) > 1e-5  # moved: 1e-9 means something


def test_gradient_buckets_leave_during_backward():
    """The U-Net's flat gradient cut into buckets from its tail: they tile the buffer,
    all but the head's are ready before backward's last kernel, the first one when
    less than 60% of the plan's kernels (forward and backward) have run."""
    spec = load_spec(ROOT / "specs" / "unet.yaml")
    prog = compile(spec, (1, 3, 32, 32))
    compiled = prog.compilations[0]
    order = {value: i for i, value in enumerate(compiled.schedule.order)}
    writers = {p: order[g] for p, g in compiled.graph.grads.items()}
    buckets = _cut(prog.grads, writers, 4)
    flat = flat_view(list(prog.grads.values()))
    assert sum(b.numel() for b, _ in buckets) == flat.numel() and len(buckets) == 4
    assert buckets[-1][0].data_ptr() == flat.data_ptr()  # the head, sent last
    last = len(compiled.schedule.order) - 1
    assert buckets[-1][1] == last and all(ready < last for _, ready in buckets[:-1])
    assert buckets[0][1] < 0.6 * last
    assert [ready for _, ready in buckets] == sorted(ready for _, ready in buckets)


@pytest.fixture(scope="module")
def dist_api_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist-api")
    ranks = start_ranks([sys.executable, str(ROOT / "tests" / "dist_worker.py"), str(out)], ROOT)
    for p in ranks:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    return out


def torchrun(argv: list[str], cwd, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([*TORCHRUN, *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def params_of(run) -> dict:
    return load_checkpoint(run / "last.safetensors")[0]


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("single") / "run"
    assert main([SPEC, "--train", "--run", str(run), "--epochs", "2", *RUN]) == 0
    return run


def test_torchrun_trains_like_one_process(one_process_run, tmp_path):
    """Two ranks under torchrun: the same parameters after two epochs, the same metrics
    (validation sharded and summed), and rank 0 alone wrote files."""
    done = torchrun([SPEC, "--train", "--run-dir", "run", "--epochs", "2", *RUN], tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing else written
    assert_same_params(params_of(tmp_path / "run"), params_of(one_process_run))
    for ours, theirs in zip(rows(tmp_path / "run"), rows(one_process_run)):
        assert float(ours["train_loss"]) == pytest.approx(float(theirs["train_loss"]), rel=1e-6)
        assert float(ours["val_psnr"]) == pytest.approx(float(theirs["val_psnr"]), abs=1e-3)
    assert done.stdout.count("epoch 2/2") == 1  # one rank speaks for the run


def rows(run) -> list[dict]:
    return load_checkpoint(run / "last.safetensors")[2]["metrics"]


def test_a_distributed_run_resumes_with_another_number_of_ranks(one_process_run, tmp_path):
    """Stopped after 5 steps on two ranks, continued by one process for 4 more, then
    finished on two ranks: the trajectory of the run that never stopped."""
    run = tmp_path / "run"
    done = torchrun([SPEC, "--train", "--run-dir", "run", "--epochs", "2", "--max-steps", "5",
                     *RUN], tmp_path)
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(run / "last.safetensors")[2]["step"] == 5
    assert main(["--resume", str(run), "--max-steps", "4", "--no-progress", "--threads", "1"]) == 0
    done = torchrun(["--resume", "run", "--no-progress", "--threads", "1"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "at epoch 2, step 3 on 2 ranks" in done.stdout
    assert_same_params(params_of(run), params_of(one_process_run))


def test_a_killed_rank_stops_the_other_within_the_timeout(tmp_path):
    """Rank 1 is killed (SIGKILL) after its third step; rank 0 exits with status 4 and
    one line naming what it lost, long before the timeout, and writes no half a file."""
    argv = [sys.executable, "-m", "n2ngraph.run", SPEC, "--train", "--run", "run", "--epochs",
            "50", *RUN, "--rank-timeout", "30"]
    ranks = start_ranks(argv, tmp_path, ({}, {"N2NGRAPH_FAULT_AT": "step#3"}))
    started = time.monotonic()
    _, err = ranks[0].communicate(timeout=120)
    ranks[1].wait(timeout=30)
    assert ranks[1].returncode == -signal.SIGKILL
    assert ranks[0].returncode == 4, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "rank 0 of 2: lost contact with another rank while" in lines[0], err
    assert "Traceback" not in err
    assert time.monotonic() - started < 60
    assert load_checkpoint(tmp_path / "run" / "last.safetensors")[2]["step"] == 0


def test_a_hung_rank_stops_the_other_after_the_timeout(tmp_path):
    """Rank 1 freezes (SIGSTOP) after its second step: rank 0 gives up after
    --rank-timeout seconds with status 4, never hangs."""
    argv = [sys.executable, "-m", "n2ngraph.run", SPEC, "--train", "--run", "run", "--epochs",
            "50", *RUN, "--rank-timeout", "5"]
    ranks = start_ranks(argv, tmp_path, ({}, {"N2NGRAPH_FAULT_AT": "step#2",
                                             "N2NGRAPH_FAULT_SIGNAL": "SIGSTOP"}))
    try:
        _, err = ranks[0].communicate(timeout=120)
        assert ranks[0].returncode == 4, err
        assert "did not answer within 5 s" in err and "Traceback" not in err
    finally:
        ranks[1].kill()
        ranks[1].wait()


def test_a_signal_to_one_rank_stops_every_rank_after_one_checkpoint(tmp_path):
    """SIGTERM reaches rank 1 alone after its fourth step (Ctrl-C on torchrun reaches the
    ranks one by one): both stop after the same step, rank 0 saves it, both exit 143,
    and the run resumes from there."""
    argv = [sys.executable, "-m", "n2ngraph.run", SPEC, "--train", "--run", "run", "--epochs",
            "2", *RUN]
    ranks = start_ranks(argv, tmp_path, ({}, {"N2NGRAPH_FAULT_AT": "step#4",
                                             "N2NGRAPH_FAULT_SIGNAL": "SIGTERM"}))
    outputs = [p.communicate(timeout=120) for p in ranks]
    assert [p.returncode for p in ranks] == [143, 143], outputs
    assert "stopped by SIGTERM" in outputs[0][0] and not outputs[1][0]
    state = load_checkpoint(tmp_path / "run" / "last.safetensors")[2]
    assert (state["epoch"], state["step"]) == (0, 4)


def test_ctrl_c_on_the_launcher_stops_every_rank_after_one_checkpoint(tmp_path):
    """SIGINT to torchrun (Ctrl-C), which forwards it to the ranks: both stop after the
    same step, rank 0 saves it and says so, and the run resumes from there."""
    argv = [*TORCHRUN, SPEC, "--train", "--run-dir", "run", "--epochs", "50", *RUN]
    launcher = subprocess.Popen(argv, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "run" / "last.safetensors").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2)  # some steps in
    launcher.send_signal(signal.SIGINT)
    out, err = launcher.communicate(timeout=90)
    assert out.count("stopped by Ctrl-C: saved") == 1, (out, err)
    state = load_checkpoint(tmp_path / "run" / "last.safetensors")[2]
    assert f"at epoch {state['epoch'] + 1}, step {state['step']};" in out
    assert main(["--resume", str(tmp_path / "run"), "--max-steps", "1", "--no-progress",
                 "--threads", "1"]) == 0


def test_single_photo_training_is_refused_on_several_ranks(tmp_path):
    """--pairs-from single (neighbours.py) runs an inference pass of its own each step,
    not shared out yet: on two ranks it is one line, before any file (torchrun then adds
    its own report of a failed child)."""
    done = torchrun([SPEC, "--train", "--run-dir", "run", "--pairs-from", "single", *RUN], tmp_path)
    assert done.returncode != 0
    assert "error: --pairs-from single trains in one process only" in done.stderr
    assert not (tmp_path / "run").exists()
