"""Whole networks against torch.nn + autograd + torch.optim.SGD, step by step."""

from __future__ import annotations

import pytest
import torch

import n2ngraph as ng
from n2ngraph.compiler.parse import parse_spec
from n2ngraph.compiler.spec import OptimizerSpec

from helpers import DEVICES, ROOT, assert_params_close, step_both
from torch_reference import TorchNet

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}

OPTIMIZERS = {
    "plain": OptimizerSpec(lr=0.05),
    "momentum": OptimizerSpec(lr=0.02, momentum=0.9, dampening=0.1),
    "nesterov": OptimizerSpec(lr=0.02, momentum=0.8, nesterov=True, weight_decay=1e-3),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS), ids=list(OPTIMIZERS))
@pytest.mark.parametrize("name", ["noise2noise", "skipnet"])
def test_ten_sgd_steps_match_torch(name, optimizer, dtype, device):
    spec = ng.load_spec(ROOT / "specs" / f"{name}.yaml")
    config = OPTIMIZERS[optimizer]
    shape = (4, 3, 16, 16)
    prog = ng.compile(spec, shape, dtype=dtype, device=device, seed=3, optimizer=config)
    ref = TorchNet(spec).to(device=device, dtype=dtype)
    ref.load_state_dict(prog.state_dict())
    opt = torch.optim.SGD(ref.parameters(), lr=config.lr, momentum=config.momentum,
                          dampening=config.dampening, nesterov=config.nesterov,
                          weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(0)
    tol = TOLERANCE[dtype]
    for step in range(10):
        x = torch.rand(shape, generator=gen, dtype=dtype).to(device)
        t = torch.rand(shape, generator=gen, dtype=dtype).to(device)
        step_both(prog, ref, opt, x, t, tol, step)
    assert_params_close(prog, ref, tol)


FORMS = """\
name: forms
inputs:
  noisy:  {channels: 4}
  target: {channels: 4}
nodes:
  wide:   {op: conv2d, in: noisy, in_channels: 4, out_channels: 8, kernel: [2, 3], padding: same}
  act1:   {op: relu, in: wide}
  grouped: {op: conv2d, in: act1, in_channels: 8, out_channels: 8, kernel: [3, 1], stride: [2, 1],
            padding: [1, 0], groups: 2}
  act2:   {op: relu, in: grouped}
  depth:  {op: conv2d, in: act2, in_channels: 8, out_channels: 8, kernel: 4, padding: same,
           dilation: [1, 2], groups: 8}
  act3:   {op: relu, in: depth}
  up:     {op: conv_transpose2d, in: act3, in_channels: 8, out_channels: 4, kernel: [2, 3],
           stride: [2, 1], padding: [0, 1], groups: 2}
  wide2:  {op: conv2d, in: up, in_channels: 4, out_channels: 32, kernel: 4, padding: same}
  act4:   {op: relu, in: wide2}
  narrow: {op: conv2d, in: act4, in_channels: 32, out_channels: 32, kernel: [1, 3], padding: [0, 2],
           dilation: [1, 2]}
  head:   {op: conv2d, in: narrow, in_channels: 32, out_channels: 4, kernel: 3, padding: same}
  loss:   {op: mse, in: [head, target]}
output: head
loss: loss
"""


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's, on its side
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_every_conv_form_trains_like_torch(dtype):
    """Sizes as pairs, padding 'same' with odd and even kernels, grouped, depthwise and
    transposed grouped convs, through the spec, the compiler and each side's kernels,
    ten SGD steps with momentum against torch."""
    spec = parse_spec(FORMS)
    config = OPTIMIZERS["momentum"]
    shape = (2, 4, 8, 6)
    prog = ng.compile(spec, shape, dtype=dtype, seed=4, optimizer=config)
    kernels = [type(prog.compilations[0].graph[n].impl).__name__ for n in ("wide2", "narrow", "head")]
    assert kernels == ["InputSideForward", "ShiftedForward", "OutputSideForward"]  # every side
    ref = TorchNet(spec).to(dtype=dtype)
    ref.load_state_dict(prog.state_dict())
    opt = torch.optim.SGD(ref.parameters(), lr=config.lr, momentum=config.momentum,
                          dampening=config.dampening)
    gen = torch.Generator().manual_seed(1)
    tol = TOLERANCE[dtype]
    for step in range(10):
        x, t = (torch.rand(shape, generator=gen, dtype=dtype) for _ in range(2))
        step_both(prog, ref, opt, x, t, tol, step)
    assert_params_close(prog, ref, tol)


def test_grouped_convs_are_initialised_with_torchs_fan_in():
    """torch's default bound 1/sqrt(fan_in) reads weight dim 1: in / groups for a conv,
    out / groups for a transposed conv."""
    params = ng.compile(parse_spec(FORMS), (2, 4, 8, 6), seed=2).params
    for name, fan_in in (("depth", 1 * 4 * 4), ("grouped", 4 * 3), ("up", 2 * 2 * 3)):
        bound = fan_in ** -0.5
        weight = params[f"{name}.weight"]
        assert bound * 0.7 < weight.abs().max() <= bound, name


@pytest.mark.parametrize("name", ["noise2noise", "skipnet"])
def test_inference_on_another_shape_shares_the_trained_parameters(name):
    spec = ng.load_spec(ROOT / "specs" / f"{name}.yaml")
    prog = ng.compile(spec, (2, 3, 16, 16), dtype=torch.float64)
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    prog.train_step(x, x)
    ref = TorchNet(spec).to(torch.float64)
    ref.load_state_dict(prog.state_dict())
    photo = torch.rand(1, 3, 44, 60, dtype=torch.float64)
    with torch.no_grad():
        expected = ref(photo)
    assert torch.allclose(prog.forward(photo), expected, rtol=1e-12, atol=1e-14)
    prog.train_step(x, x)  # training again changes the weights the inference plan reads
    with torch.no_grad():
        ref.load_state_dict(prog.state_dict())
        assert torch.allclose(prog.forward(photo), ref(photo), rtol=1e-12, atol=1e-14)


def test_state_dict_round_trips_into_torch_and_back():
    spec = ng.load_spec(ROOT / "specs" / "noise2noise.yaml")
    prog = ng.compile(spec)
    ref = TorchNet(spec)
    assert list(prog.state_dict()) == list(ref.state_dict())
    fresh = ng.compile(spec, seed=123)
    fresh.load_state_dict(ref.state_dict())
    for k, v in ref.state_dict().items():
        assert torch.equal(fresh.params[k], v)
    with pytest.raises(KeyError, match="missing"):
        fresh.load_state_dict({})
    bad = dict(ref.state_dict(), **{"conv1.bias": torch.zeros(5)})
    with pytest.raises(ValueError, match="conv1.bias"):
        fresh.load_state_dict(bad)


def test_inits_are_seeded_and_follow_their_distributions():
    spec = ng.load_spec(ROOT / "specs" / "noise2noise.yaml")
    a = ng.compile(spec, seed=7).params
    b = ng.compile(spec, seed=7).params
    c = ng.compile(spec, seed=8).params
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])
    bound = 1 / (3 * 9) ** 0.5
    assert a["conv1.weight"].abs().max() <= bound
    assert a["conv1.weight"].abs().max() > 0.8 * bound
    xavier = ng.compile(spec, init="xavier").params
    assert torch.count_nonzero(xavier["conv2.bias"]) == 0
    assert xavier["conv2.weight"].abs().max() <= (6 / (24 * 9 + 24 * 9)) ** 0.5
    kaiming = ng.compile(spec, init="kaiming").params["conv2.weight"]
    assert kaiming.std().item() == pytest.approx((2 / (24 * 9)) ** 0.5, rel=0.1)
