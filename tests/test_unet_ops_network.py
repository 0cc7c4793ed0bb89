"""The U-Net and DnCNN ops (leaky_relu, tanh, maxpool2d, avgpool2d, concat, pad, crop,
l1) in one small network, through the whole compiler: the spec loader (stride
defaulting to the kernel), the memory plan (in-place activations, workspaces), the
executor, the optimizer. The op tests check each kernel alone; this checks they
compose, on odd image sizes (pad, then crop back).
"""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import n2ngraph as ng
from n2ngraph.compiler.parse import parse_spec
from n2ngraph.compiler.spec import OptimizerSpec

from helpers import step_both
from torch_reference import TorchNet

SPEC = """
name: pool_skip_net
inputs:
  noisy:  {channels: 3}
  target: {channels: 3}
nodes:
  padded:   {op: pad, in: noisy, multiple: 2}
  enc:      {op: conv2d, in: padded, in_channels: 3, out_channels: 6, kernel: 3, padding: 1}
  enc_act:  {op: leaky_relu, in: enc, negative_slope: 0.1}
  down:     {op: maxpool2d, in: enc_act, kernel: 2}
  mid:      {op: conv2d, in: down, in_channels: 6, out_channels: 6, kernel: 3, padding: 1}
  mid_act:  {op: leaky_relu, in: mid}
  smooth:   {op: avgpool2d, in: mid_act, kernel: 3, stride: 1, padding: 1}
  up:       {op: upsample_nearest, in: smooth, scale: 2}
  skip:     {op: concat, in: [up, enc_act]}
  dec:      {op: conv2d, in: skip, in_channels: 12, out_channels: 3, kernel: 3, padding: 1}
  dec_act:  {op: tanh, in: dec}
  cropped:  {op: crop, in: [dec_act, noisy]}
  denoised: {op: add, in: [cropped, noisy]}
  loss:     {op: l1, in: [denoised, target]}
output: denoised
loss: loss
train: {crop: 16}
"""
SHAPE = (2, 3, 9, 14)
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


def test_the_spec_uses_every_new_op():
    used = {node.op.name for node in parse_spec(SPEC).nodes}
    assert used >= {"leaky_relu", "tanh", "maxpool2d", "avgpool2d", "concat", "pad", "crop", "l1"}
    assert parse_spec(SPEC).node("down").op.stride == 2  # defaulted to the kernel


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_five_momentum_steps_match_torch(dtype):
    spec = parse_spec(SPEC)
    config = OptimizerSpec(lr=0.05, momentum=0.9)
    prog = ng.compile(spec, SHAPE, dtype=dtype, seed=3, optimizer=config)
    ref = TorchNet(spec).to(dtype)
    ref.load_state_dict(prog.state_dict())
    opt = torch.optim.SGD(ref.parameters(), lr=config.lr, momentum=config.momentum)
    gen = torch.Generator().manual_seed(0)
    tol = TOLERANCE[dtype]
    for step in range(5):
        x = torch.rand(SHAPE, generator=gen, dtype=dtype)
        t = torch.rand(SHAPE, generator=gen, dtype=dtype)
        step_both(prog, ref, opt, x, t, tol, step)
    photo = torch.rand(1, 3, 7, 11, dtype=dtype)  # inference on another shape, trained weights
    with torch.no_grad():
        torch.testing.assert_close(prog.forward(photo), ref(photo), rtol=tol, atol=tol)


def test_steady_state_train_step_allocates_nothing():
    prog = ng.compile(parse_spec(SPEC), SHAPE, optimizer=OptimizerSpec(lr=0.01, momentum=0.9))
    x, t = torch.rand(SHAPE), torch.rand(SHAPE)
    for _ in range(2):
        prog.train_step(x, t)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        prog.train_step(x, t)
    assert [(e.name, e.cpu_memory_usage) for e in prof.events() if e.cpu_memory_usage > 0] == []
