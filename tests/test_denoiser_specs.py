"""The shipped denoiser specs, U-Net and DnCNN, against torch.nn + autograd + torch.optim:
a few steps of each spec's own recipe (Adam) on small odd-sized crops, then inference
on another odd size with the trained weights. Odd sizes are the point: the U-Net pads
to a multiple of 8 and crops back; DnCNN keeps every size as it is."""

from __future__ import annotations

import pytest
import torch

import n2ngraph as ng

from helpers import ROOT, assert_params_close, step_both
from torch_reference import TorchNet, torch_optimizer

# float32 rounding grows with depth (18 convolutions in the U-Net's longest path), and
# Adam's first steps move every weight by about lr whatever the gradient's size, so
# last-bit differences reach the next gradients; float64 is the tight check.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}
SPECS = ["unet", "dncnn"]


def _spec(name: str) -> ng.Spec:
    return ng.load_spec(ROOT / "specs" / f"{name}.yaml")


def test_the_specs_are_what_they_claim():
    unet, dncnn = _spec("unet"), _spec("dncnn")
    ops = {name: {n.op.name for n in s.nodes} for name, s in (("unet", unet), ("dncnn", dncnn))}
    assert {"pad", "maxpool2d", "upsample_nearest", "concat", "leaky_relu", "crop"} <= ops["unet"]
    assert unet.node("padded").op.multiple == 8
    assert unet.node("padded").op.mode == "reflect"  # photo-like borders, not black ones
    assert sum(n.op.name == "maxpool2d" for n in unet.nodes) == 3  # 8 = 2 ** 3
    assert unet.node(unet.output).op.name == "crop"  # linear output: no activation at the end
    assert dncnn.node(dncnn.output).op.name == "sub"
    assert dncnn.node(dncnn.output).inputs == ("noisy", "noise")  # input minus predicted noise
    for spec in (unet, dncnn):
        assert spec.train.optimizer.name == "adam" and spec.train.augment
        assert spec.train.init == "kaiming"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", SPECS)
def test_adam_steps_on_odd_crops_match_torch(name, dtype):
    """Four Adam steps in step with torch. In float32 without generated kernels: Adam's
    first update is about lr times the sign of each gradient, so a gradient that is
    nearly zero, rounded otherwise by Winograd's (correct) transforms, sends its weight
    elsewhere, and the runs part; test_first_float32_step_by_winograd_matches_torch
    holds the Winograd float32 gradients to torch's instead."""
    spec = _spec(name)
    shape = (2, 3, 13, 10)
    prog = ng.compile(spec, shape, dtype=dtype, seed=1,  # the recipe's optimizer and init
                      codegen=dtype == torch.float64)
    ref = TorchNet(spec).to(dtype)
    ref.load_state_dict(prog.state_dict())
    opt = torch_optimizer(ref.parameters(), spec.train.optimizer)
    gen = torch.Generator().manual_seed(0)
    tol = TOLERANCE[dtype]
    for step in range(4):
        x = torch.rand(shape, generator=gen, dtype=dtype)
        t = torch.rand(shape, generator=gen, dtype=dtype)
        step_both(prog, ref, opt, x, t, tol, step)
    assert_params_close(prog, ref, tol)
    photo = torch.rand(1, 3, 21, 17, generator=gen, dtype=dtype)
    result = prog.forward(photo)
    assert result.shape == photo.shape
    with torch.no_grad():
        torch.testing.assert_close(result, ref(photo), rtol=tol, atol=tol)


@pytest.mark.parametrize("name", SPECS)
def test_first_float32_step_by_winograd_matches_torch(name):
    """The loss and every gradient of one float32 step, with the 32-channel convs run by
    Winograd (codegen, where a C compiler is), within 1e-5 of torch's."""
    spec = _spec(name)
    shape = (2, 3, 13, 10)
    prog = ng.compile(spec, shape, seed=1)
    ref = TorchNet(spec)
    ref.load_state_dict(prog.state_dict())
    opt = torch_optimizer(ref.parameters(), spec.train.optimizer)
    gen = torch.Generator().manual_seed(0)
    x, t = torch.rand(shape, generator=gen), torch.rand(shape, generator=gen)
    step_both(prog, ref, opt, x, t, 1e-5, 0)


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("size", [(1, 1), (7, 9), (8, 16), (30, 17)])
def test_inference_returns_the_input_size(name, size):
    spec = _spec(name)
    prog = ng.compile(spec, (1, 3, 8, 8), seed=0)
    photo = torch.rand(1, 3, *size)
    assert prog.forward(photo).shape == photo.shape
