"""The executor's per-kernel thread choice: small kernels run on one thread, the
thread count is restored after every run, and the numbers do not depend on it."""

from __future__ import annotations

import pytest
import torch

import n2ngraph as ng
from n2ngraph.runtime import executor

from helpers import ROOT

SPEC = ng.load_spec(ROOT / "specs" / "noise2noise.yaml")


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _executable(program, shape):
    return program.compiled("train", program.input_shapes(shape)).executable


def test_segments_cover_every_step_in_order(two_threads, monkeypatch):
    monkeypatch.setattr(executor, "SERIAL_BELOW", 2**18)
    program = ng.compile(SPEC, (64, 3, 32, 32))
    ex = _executable(program, (64, 3, 32, 32))
    flat = [step for _, steps in ex.segments for step in steps]
    assert flat == list(ex.steps)
    kinds = [serial for serial, _ in ex.segments]
    assert True in kinds and False in kinds  # a batch-64 step has kernels of both sizes
    assert all(a != b for a, b in zip(kinds, kinds[1:]))  # runs are maximal


def test_thread_count_is_restored_after_a_run(two_threads):
    program = ng.compile(SPEC, (64, 3, 32, 32))
    x = torch.rand(64, 3, 32, 32)
    program.train_step(x, x)
    assert torch.get_num_threads() == 2
    program.forward(x[:1])
    assert torch.get_num_threads() == 2


def test_results_do_not_depend_on_the_thread_choice(two_threads, monkeypatch):
    shape = (16, 3, 32, 32)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.rand(shape, generator=gen), torch.rand(shape, generator=gen)) for _ in range(3)]
    losses, params = [], []
    for limit in (0, 2**40):  # every kernel threaded / every kernel serial
        monkeypatch.setattr(executor, "SERIAL_BELOW", limit)
        program = ng.compile(SPEC, shape, dtype=torch.float64)
        losses.append([program.train_step(x, t) for x, t in batches])
        params.append(program.state_dict())
        serial = {flag for flag, _ in _executable(program, shape).segments}
        assert serial == {bool(limit)}
    assert losses[0] == pytest.approx(losses[1], rel=1e-12)
    for name, value in params[0].items():
        torch.testing.assert_close(value, params[1][name], rtol=1e-12, atol=1e-12)
