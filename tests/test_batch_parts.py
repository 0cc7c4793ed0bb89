"""A training batch split across CPU threads: the same loss, gradients and updates as
the whole batch, deterministic (so resume stays bit-identical), and only where the
loss is a mean over every element."""

from __future__ import annotations

import pytest
import torch

import n2ngraph as ng
from n2ngraph.runtime import parts as parts_module
from n2ngraph.app.cli import main
from n2ngraph.app.checkpoint import load_checkpoint

from helpers import ROOT

SPECS = {name: ng.load_spec(ROOT / "specs" / f"{name}.yaml") for name in ("noise2noise", "skipnet")}


@pytest.fixture
def threads():
    before = torch.get_num_threads()

    def use(count):
        torch.set_num_threads(count)
    yield use
    torch.set_num_threads(before)


@pytest.fixture
def small_parts(monkeypatch):
    monkeypatch.setattr(parts_module, "PART_PIXELS", 64)


def test_parts_cover_the_batch(threads, small_parts):
    threads(2)
    prog = ng.compile(SPECS["noise2noise"], (5, 3, 8, 8))
    parts = prog.batch_parts(prog.input_shapes((5, 3, 8, 8)))
    assert parts == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]  # 5 samples, at most 4 per thread
    assert prog.batch_parts(prog.input_shapes((1, 3, 8, 8))) == [(0, 1)]
    threads(1)
    assert prog.batch_parts(prog.input_shapes((5, 3, 8, 8))) == [(0, 5)]


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("batch", [6, 7])  # equal and unequal parts
def test_parts_train_exactly_like_the_whole_batch(name, batch, threads, small_parts):
    spec = SPECS[name]
    shape = (batch, 3, 8, 8)
    config = ng.compiler.spec.OptimizerSpec(lr=0.05, momentum=0.9)
    threads(1)
    whole = ng.compile(spec, shape, dtype=torch.float64, seed=2, optimizer=config)
    threads(2)
    split = ng.compile(spec, shape, dtype=torch.float64, seed=2, optimizer=config)
    assert len(split.batch_parts(split.input_shapes(shape))) > 1
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        x, t = (torch.rand(shape, generator=gen, dtype=torch.float64) for _ in range(2))
        threads(1)
        expected = whole.train_step(x, t)
        threads(2)
        got = split.train_step(x, t)
        assert torch.get_num_threads() == 2
        assert got == pytest.approx(expected, rel=1e-12)
        for key, grad in whole.grads.items():
            torch.testing.assert_close(split.grads[key], grad, rtol=1e-10, atol=1e-13)
    for key, p in whole.params.items():
        torch.testing.assert_close(split.params[key], p, rtol=1e-10, atol=1e-13)
    assert any(key[2] is not None for key in split._cache)  # part plans were used


def test_part_gradients_are_allocated_before_the_threads_run(threads, small_parts, monkeypatch):
    """The parts' threads only read the list of part gradients (and the sums over them
    that go with it): two threads growing it at once could leave a sum without a part."""
    import threading

    threads(2)
    prog = ng.compile(SPECS["noise2noise"], (8, 3, 8, 8))
    grown_in = []
    gradients = prog._part_grads
    allocate = gradients.of

    def watched(part):
        before = len(gradients.parts)
        found = allocate(part)
        if len(gradients.parts) > before:
            grown_in.append(threading.current_thread() is threading.main_thread())
        return found
    monkeypatch.setattr(gradients, "of", watched)
    x = torch.rand(8, 3, 8, 8)
    prog.train_step(x, x.flip(0))
    assert len(prog.batch_parts(prog.input_shapes(x.shape))) == 8 and grown_in == [True]
    assert len(gradients.sums[0][1]) == 8  # every part in the sum (one, flat)


def test_a_loss_that_is_not_a_mean_is_never_split(threads, small_parts, monkeypatch):
    from n2ngraph.ops.losses import MSE

    threads(2)
    program = ng.Program(SPECS["noise2noise"])
    shapes = program.input_shapes((8, 3, 8, 8))
    assert len(program.batch_parts(shapes)) > 1
    monkeypatch.setattr(MSE, "mean_over_elements", False)  # say, a sum over the batch
    assert program.batch_parts(shapes) == [(0, 8)]


def test_split_runs_resume_bit_identically(tmp_path, threads, small_parts):
    threads(2)
    spec = str(ROOT / "specs" / "noise2noise.yaml")
    quick = ["--pairs", "48", "--batch", "8", "--val-count", "8", "--no-progress", "--lr", "0.5",
             "--epochs", "2", "--crop", "16"]
    assert main([spec, "--train", "--run", str(tmp_path / "whole"), *quick]) == 0
    assert main([spec, "--train", "--run", str(tmp_path / "cut"), "--max-steps", "7", *quick]) == 0
    assert main(["--resume", str(tmp_path / "cut"), "--no-progress"]) == 0
    expected, *_ = load_checkpoint(tmp_path / "whole" / "last.safetensors")
    resumed, *_ = load_checkpoint(tmp_path / "cut" / "last.safetensors")
    for key, value in expected.items():
        assert torch.equal(resumed[key], value), key
