"""Graph rewrites: each gives the same loss, gradients and outputs as the plain graph,
and the torch.nn oracle agrees with the rewritten program step by step."""

from __future__ import annotations

import attrs
import pytest
import torch

import n2ngraph as ng
from n2ngraph.compiler import rewrite
from n2ngraph.compiler.lower import lower
from n2ngraph.kernels.base import Kernel
from n2ngraph.kernels.table import GPU_TILE
from n2ngraph.compiler.graph import forward_graph
from n2ngraph.ops.upsample_conv import UpsampleConv2d

from helpers import ROOT
from torch_reference import TorchNet

SPECS = {name: ng.load_spec(ROOT / "specs" / f"{name}.yaml") for name in ("noise2noise", "skipnet")}


@pytest.fixture
def always_fuse(monkeypatch):
    """Fuses whatever the size (the default threshold leaves small test maps alone)."""
    monkeypatch.setattr(rewrite, "FUSE_MIN_ELEMENTS", 0)


def _ops(graph) -> dict[str, str]:
    return {v: node.op.name for v, node in graph.nodes.items() if node.kind == "op"}


def _tiles(kernel: Kernel) -> set[int]:
    """The tiles a kernel and the kernels it is made of run in."""
    fields = attrs.asdict(kernel, recurse=False)
    own = {fields["tile"]} if "tile" in fields else set()
    return own.union(*(_tiles(f) for f in fields.values() if isinstance(f, Kernel)))


def test_every_upsample_conv_pair_of_the_seed_net_fuses(always_fuse):
    spec = SPECS["noise2noise"]
    plain = forward_graph(spec, {"noisy": (2, 3, 16, 16), "target": (2, 3, 16, 16)}, ["loss"])
    fused = rewrite.rewrite(plain)
    assert fused.fused == (("up1", "conv3"), ("up2", "conv4"))
    ops = _ops(fused)
    assert "up1" not in ops and "up2" not in ops
    assert ops["conv3"] == ops["conv4"] == "upsample_conv2d"
    assert dict(fused["conv3"].args) == {"x": "relu2", "weight": "conv3.weight",
                                                  "bias": "conv3.bias"}
    assert ("relu2", "conv3") in fused.dag.edges and fused["conv3"].shape == (2, 24, 8, 8)
    assert _ops(plain)["up1"] == "upsample_nearest"  # the input graph is untouched


def test_small_maps_stay_unfused():
    spec = SPECS["noise2noise"]
    plain = forward_graph(spec, {"noisy": (1, 3, 16, 16), "target": (1, 3, 16, 16)}, ["loss"])
    assert rewrite.rewrite(plain).fused == ()


FANNED_OUT = """
name: fanned
inputs: {x: {channels: 2}}
nodes:
  up:   {op: upsample_nearest, in: x, scale: 2}
  conv: {op: conv2d, in: up, in_channels: 2, out_channels: 3, kernel: 3, padding: 1}
  side: {op: conv2d, in: up, in_channels: 2, out_channels: 3, kernel: 3, padding: 1}
  sum:  {op: add, in: [conv, side]}
output: sum
"""

UNFUSABLE = """
name: wide
inputs: {x: {channels: 2}}
nodes:
  up:   {op: upsample_nearest, in: x, scale: 2}
  conv: {op: conv2d, in: up, in_channels: 2, out_channels: 3, kernel: 5, padding: 2}
  up3:  {op: upsample_nearest, in: conv, scale: 3}
  out:  {op: conv2d, in: up3, in_channels: 3, out_channels: 3, kernel: 3, padding: 1}
output: out
"""


SAME = """
name: same
inputs: {x: {channels: 2}}
nodes:
  up:   {op: upsample_nearest, in: x, scale: 2}
  conv: {op: conv2d, in: up, in_channels: 2, out_channels: 4, kernel: [3, 3], padding: same}
output: conv
"""


@pytest.mark.parametrize("text", [FANNED_OUT, UNFUSABLE,
                                  SAME.replace("kernel: [3, 3], padding: same", "kernel: [3, 1], padding: [1, 0]"),
                                  SAME.replace("padding: same", "padding: same, groups: 2"),
                                  SAME.replace("padding: same", "padding: [1, 0]")],
                         ids=["fan-out", "other-shapes", "3x1", "groups", "rectangular-padding"])
def test_pairs_that_do_not_fit_are_left_alone(text, always_fuse):
    spec = ng.parse_spec(text)
    graph = forward_graph(spec, {"x": (1, 2, 6, 6)}, [spec.output])
    assert rewrite.rewrite(graph).fused == ()


def test_a_3x3_same_conv_written_as_pairs_fuses_and_computes_the_same(always_fuse):
    spec = ng.parse_spec(SAME)
    graph = forward_graph(spec, {"x": (1, 2, 6, 6)}, [spec.output])
    assert rewrite.rewrite(graph).fused == (("up", "conv"),)
    x = torch.rand(2, 2, 5, 7, dtype=torch.float64)
    plain, fused = (ng.Program(spec, dtype=torch.float64, seed=1, rewrite=r) for r in (False, True))
    torch.testing.assert_close(fused.forward(x), plain.forward(x), rtol=1e-12, atol=1e-12)
    assert any(isinstance(n.op, UpsampleConv2d) for n in fused.compilations[0].graph.nodes.values())


@pytest.mark.parametrize("name", list(SPECS))
def test_rewritten_program_trains_exactly_like_the_plain_one(name, always_fuse):
    spec = SPECS[name]
    shape = (3, 3, 12, 16)
    config = ng.compiler.spec.OptimizerSpec(lr=0.05, momentum=0.9)
    plain = ng.compile(spec, shape, dtype=torch.float64, seed=5, optimizer=config, rewrite=False)
    fused = ng.compile(spec, shape, dtype=torch.float64, seed=5, optimizer=config)
    graph = fused.compiled("train", fused.input_shapes(shape)).graph
    assert graph.fused, "nothing was fused: the test would compare a graph with itself"
    ref = TorchNet(spec).to(torch.float64)
    ref.load_state_dict(plain.state_dict())
    opt = torch.optim.SGD(ref.parameters(), lr=config.lr, momentum=config.momentum)
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        x, t = (torch.rand(shape, generator=gen, dtype=torch.float64) for _ in range(2))
        a, b = plain.train_step(x, t), fused.train_step(x, t)
        opt.zero_grad()
        expected = ref.objective(x, t)
        expected.backward()
        opt.step()
        assert a == pytest.approx(b, rel=1e-12) and b == pytest.approx(expected.item(), rel=1e-12)
        for key, p in ref.named_parameters():
            torch.testing.assert_close(fused.grads[key], plain.grads[key], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(fused.params[key], p.detach(), rtol=1e-10, atol=1e-12)
    photo = torch.rand(1, 3, 20, 28, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(fused.forward(photo), plain.forward(photo), rtol=1e-12, atol=1e-12)
    inference = fused.compiled("infer", {"noisy": (1, 3, 20, 28)}).graph
    assert any(isinstance(node.op, UpsampleConv2d) for node in inference.nodes.values())


def test_compile_without_rewrites_keeps_the_spec_graph():
    spec = SPECS["noise2noise"]
    shape = (64, 3, 32, 32)
    plain = ng.compile(spec, shape, rewrite=False)
    assert "up1" in plain.compiled("train", plain.input_shapes(shape)).graph
    fused = ng.compile(spec, shape)
    assert "up1" not in fused.compiled("train", fused.input_shapes(shape)).graph


@pytest.mark.parametrize("name,shape", [("noise2noise", (5, 3, 36, 36)), ("unet", (3, 3, 40, 48))])
def test_untiled_gpu_schedules_train_like_the_cpu_ones(name, shape, monkeypatch, always_fuse):
    """The kernels lower.py chooses for a GPU, run here on the CPU: every conv in one tile
    instead of cache-sized ones (the default tiles split these batches into several),
    same numbers."""
    spec = ng.load_spec(ROOT / "specs" / f"{name}.yaml")
    config = ng.compiler.spec.OptimizerSpec(lr=0.01, momentum=0.9)
    tiled = ng.compile(spec, shape, dtype=torch.float64, seed=5, optimizer=config)
    for_gpu = lambda graph, device, codegen: lower(graph, torch.device("cuda"), codegen)  # noqa: E731
    monkeypatch.setattr(ng.runtime.plans, "lower", for_gpu)
    whole = ng.compile(spec, shape, dtype=torch.float64, seed=5, optimizer=config)
    graph = whole.compiled("train", whole.input_shapes(shape)).graph
    tiles = {tile for node in graph.nodes.values() if node.op is not None and "conv" in node.op.name
             for tile in _tiles(node.impl)}
    assert tiles == {GPU_TILE}
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        x, t = (torch.rand(shape, generator=gen, dtype=torch.float64) for _ in range(2))
        assert whole.train_step(x, t) == pytest.approx(tiled.train_step(x, t), rel=1e-12)
        for key, g in tiled.grads.items():
            torch.testing.assert_close(whole.grads[key], g, rtol=1e-10, atol=1e-12)
    photo = torch.rand(1, 3, 72, 40, generator=gen, dtype=torch.float64)
    denoised = whole.forward(photo)
    assert denoised.isfinite().all()
    torch.testing.assert_close(denoised, tiled.forward(photo), rtol=1e-12, atol=1e-12)
