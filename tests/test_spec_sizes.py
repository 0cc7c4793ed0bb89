"""Sizes that cannot fit are a SpecError naming the node, its line and the bytes against
the memory available, raised before anything is allocated (issue 18): parameters when
the spec is loaded and when a Program is made, a plan's values before lowering and its
buffers before the executor."""

from __future__ import annotations

import time

import pytest
import torch

import n2ngraph as ng
import n2ngraph.runtime.plans as plans
import n2ngraph.runtime.program as program
from n2ngraph.compiler import parse
from n2ngraph.compiler.fit import size_text
from helpers import ROOT

SEED = (ROOT / "specs" / "noise2noise.yaml").read_text()


def _edit(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


def test_out_channels_of_a_billion_is_refused_at_load_naming_node_line_and_bytes():
    """Before: it reached the allocator ('tried to allocate 216000000000 bytes')."""
    text = _edit(SEED, "in: up1,   in_channels: 24, out_channels: 24",
                 "in: up1,   in_channels: 24, out_channels: 1000000000")
    text = _edit(text, "in: up2,   in_channels: 24", "in: up2,   in_channels: 1000000000")
    start = time.perf_counter()
    with pytest.raises(ng.SpecError) as info:
        parse.parse_spec(text, file="big.yaml")
    assert time.perf_counter() - start < 2
    error, message = info.value, str(info.value)
    assert error.node == "conv3" and error.line == 17 and message.startswith("big.yaml:17: ")
    assert "conv3.weight of shape (1000000000, 24, 3, 3)" in message
    assert f"alone needs {size_text(1000000000 * 24 * 9 * 4)}" in message and "available" in message


def test_parameters_that_fit_the_file_but_not_the_program_are_refused_before_allocation(monkeypatch):
    """Loading counts float32 parameters; a Program needs them and their gradients in its
    dtype, and says so before drawing a single parameter."""
    spec = parse.parse_spec(SEED, file="seed.yaml")
    numel = sum(p.numel() for p in ng.compile(spec, (1, 3, 8, 8)).params.values())
    monkeypatch.setattr(program, "available_bytes", lambda device: 2 * 8 * numel - 1)
    monkeypatch.setattr(program, "initial_params", lambda *a, **k: pytest.fail("allocated"))
    with pytest.raises(ng.SpecError) as info:
        ng.Program(spec, dtype=torch.float64)
    assert "parameters and their gradients in torch.float64" in str(info.value)
    assert info.value.node == "conv2" and info.value.line == 14  # one of the 24x24 convs


def test_a_batch_that_cannot_fit_is_refused_before_lowering_or_allocating(monkeypatch):
    """Before: lowering built a tile list as long as the batch (MemoryError after half
    a minute, or the OOM killer)."""
    spec = parse.parse_spec(SEED, file="seed.yaml")
    monkeypatch.setattr(plans, "lower", lambda *a, **k: pytest.fail("lowered"))
    start = time.perf_counter()
    with pytest.raises(ng.SpecError) as info:
        ng.compile(spec, (10**12, 3, 32, 32))
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert message.startswith("seed.yaml:12: node 'conv1': the train plan for noisy (1000000000000, 3, 32, 32)")
    assert f"value conv1 of shape (1000000000000, 24, 16, 16) alone needs {size_text(10**12 * 24 * 256 * 4)}" in message


def test_a_plan_whose_buffers_cannot_fit_is_refused_before_the_executor(monkeypatch):
    spec = parse.parse_spec(SEED, file="seed.yaml")
    planned = ng.compile(spec, (4, 3, 32, 32)).compilations[0].plan.planned_bytes
    monkeypatch.setattr(plans, "available_bytes", lambda device: planned - 1)
    monkeypatch.setattr(plans, "Executable", lambda *a, **k: pytest.fail("allocated"))
    with pytest.raises(ng.SpecError) as info:
        ng.compile(spec, (4, 3, 32, 32))
    assert f"needs {size_text(planned)} of buffers" in str(info.value)
    assert f"more than the {size_text(planned - 1)} available" in str(info.value)
    assert info.value.line is not None and info.value.node in {n.name for n in spec.nodes}
