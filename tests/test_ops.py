"""Every op kernel against PyTorch and against finite differences.

Kernels run through ``op_harness`` the way the executor runs them (NaN-filled outputs
and workspaces, offset views with guard cells, arguments checked untouched). Adding an
op means adding a row to ``CASES``: its instance, its input shapes and a torch oracle.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

import attrs
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import n2ngraph as ng
from n2ngraph.ops import OPS, VJP, Accumulate, Seed
from n2ngraph.ops.activations import LeakyRelu, Relu, Sigmoid, Tanh
from n2ngraph.ops.arithmetic import Add, Sub
from n2ngraph.ops.conv2d import Conv2d
from n2ngraph.ops.conv_transpose import ConvTranspose2d
from n2ngraph.ops.losses import L1, MSE
from n2ngraph.ops.pool import AvgPool2d, MaxPool2d
from n2ngraph.ops.tensor import Concat, Crop, Pad
from n2ngraph.ops.upsample import UpsampleNearest
from n2ngraph.ops.upsample_conv import UpsampleConv2d
from n2ngraph.kernels import conv as conv_kernels
from n2ngraph.kernels import kernel_for, layout
from n2ngraph.kernels import upsample_conv as upsample_conv_kernels
from n2ngraph.kernels.table import CONV2D_SIDES
from op_harness import finite_difference, node_shapes, roles, run_forward, run_vjp
from torch_reference import Pad as TorchPad

F64 = dict(rtol=1e-12, atol=1e-12)
F32 = dict(rtol=1e-5, atol=1e-5)
FD = dict(rtol=1e-6, atol=1e-7)
HYPOTHESIS = settings(max_examples=30, deadline=None)
# torch's own 'same' with an even kernel pads a copy of the input, and says so each time
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")


# ---- oracles --------------------------------------------------------------------------

def conv_oracle(op, x, weight, bias=None):
    return F.conv2d(x, weight, bias, stride=op.stride, padding=op.padding, dilation=op.dilation,
                    groups=op.groups)


def conv_transpose_oracle(op, x, weight, bias=None):
    return F.conv_transpose2d(x, weight, bias, stride=op.stride, padding=op.padding,
                              output_padding=op.output_padding, dilation=op.dilation,
                              groups=getattr(op, "groups", 1))


def upsample_oracle(op, x):
    return F.interpolate(x, scale_factor=op.scale, mode="nearest")


def upsample_conv_oracle(op, x, weight, bias=None):
    return conv_oracle(op.conv, F.interpolate(x, scale_factor=2, mode="nearest"), weight, bias)


def sum_oracle(op, **terms):
    return functools.reduce(torch.add, (terms[r] for r in op.inputs))


def torch_pool(cls, x, kernel, stride=None, padding=0):
    pool = {MaxPool2d: F.max_pool2d, AvgPool2d: F.avg_pool2d}[cls]
    return pool(x, kernel, stride, padding)


def pool_oracle(op, x):
    return torch_pool(type(op), x, op.kernel, op.stride, op.padding)


def leaky_relu_oracle(op, x):
    return F.leaky_relu(x, op.negative_slope)


def pad_oracle(op, x):
    return TorchPad(op.multiple, op.mode)(x)


def crop_oracle(op, x, like):
    """``0 * like.sum()`` keeps like in torch's graph, so autograd gives its (zero)
    gradient instead of refusing an unused input."""
    return x[:, :, :like.shape[2], :like.shape[3]] + 0 * like.sum()


# ---- the table ------------------------------------------------------------------------

def randn(shape, dtype, gen):
    return torch.randn(shape, dtype=torch.float64, generator=gen).to(dtype)


def away_from_zero(shape, dtype, gen):
    """Values with |x| >= 0.01 (so relu's kink is never within a finite-difference step)."""
    x = torch.randn(shape, dtype=torch.float64, generator=gen)
    return (torch.sign(x) * (x.abs() + 0.01)).to(dtype)


def wide(shape, dtype, gen):
    return (3 * torch.randn(shape, dtype=torch.float64, generator=gen)).to(dtype)


def tied(shape, dtype, gen):
    """Whole numbers 0..2: most pooling windows hold their maximum more than once."""
    return torch.randint(0, 3, shape, generator=gen).to(dtype)


@dataclass(frozen=True)
class Case:
    id: str
    op: ng.ops.Op
    shapes: dict  # input role -> shape; parameter shapes come from op.params()
    oracle: Callable
    exact: bool = False  # forward must be bit-identical to the oracle
    draw: dict = field(default_factory=dict)  # role -> generator, default randn

    def tensors(self, dtype=torch.float64, seed=0) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        shapes = {**self.shapes, **self.op.params()}
        return {role: self.draw.get(role, randn)(shapes[role], dtype, gen) for role in roles(self.op)}


CASES = [
    Case("conv2d-k3-pad1", Conv2d(2, 3, 3, padding=1), {"x": (2, 2, 5, 5)}, conv_oracle),
    Case("conv2d-k2-stride2-dil2-nobias", Conv2d(2, 3, 2, stride=2, dilation=2, bias=False),
         {"x": (2, 2, 7, 6)}, conv_oracle),
    Case("conv2d-k3-stride3-pad2", Conv2d(1, 2, 3, stride=3, padding=2), {"x": (2, 1, 5, 7)},
         conv_oracle),
    Case("conv2d-k1", Conv2d(3, 2, 1), {"x": (1, 3, 4, 3)}, conv_oracle),
    # each side forced, on shapes where auto would pick the other one for some kernel
    Case("conv2d-k3-pad1-input", Conv2d(3, 2, 3, padding=1, unfold="input"),
         {"x": (2, 3, 5, 4)}, conv_oracle),
    Case("conv2d-k3-pad1-output", Conv2d(2, 3, 3, padding=1, unfold="output"),
         {"x": (2, 2, 5, 4)}, conv_oracle),
    Case("conv2d-k3-pad2-dil2-output", Conv2d(3, 2, 3, padding=2, dilation=2, unfold="output"),
         {"x": (1, 3, 6, 5)}, conv_oracle),
    Case("conv2d-k2-pad3-output", Conv2d(2, 2, 2, padding=3, unfold="output"),
         {"x": (1, 2, 3, 2)}, conv_oracle),
    Case("conv2d-k3-pad1-none", Conv2d(3, 2, 3, padding=1, unfold="none"),
         {"x": (3, 3, 5, 4)}, conv_oracle),
    Case("conv2d-k3-pad2-dil2-none-nobias",
         Conv2d(2, 3, 3, padding=2, dilation=2, bias=False, unfold="none"),
         {"x": (2, 2, 6, 5)}, conv_oracle),
    Case("conv2d-k2-pad0-none", Conv2d(2, 2, 2, unfold="none"), {"x": (2, 2, 4, 3)}, conv_oracle),
    # padding beyond the kernel's reach: no mirror conv, the input gradient is col2im
    Case("conv2d-k2-pad3-none", Conv2d(2, 2, 2, padding=3, unfold="none"),
         {"x": (1, 2, 3, 2)}, conv_oracle),
    Case("convT-k3-stride2-pad1-outpad1", ConvTranspose2d(2, 3, 3, stride=2, padding=1,
         output_padding=1), {"x": (2, 2, 4, 3)}, conv_transpose_oracle),
    Case("convT-k2-stride2-nobias", ConvTranspose2d(3, 2, 2, stride=2, bias=False),
         {"x": (1, 3, 3, 4)}, conv_transpose_oracle),
    Case("convT-k3-dil2-pad2", ConvTranspose2d(2, 2, 3, padding=2, dilation=2),
         {"x": (2, 2, 4, 5)}, conv_transpose_oracle),
    # output_padding >= stride (allowed below the dilation): trailing rows only the bias reaches
    Case("convT-k2-dil3-outpad2", ConvTranspose2d(1, 2, 2, dilation=3, output_padding=2),
         {"x": (2, 1, 3, 2)}, conv_transpose_oracle),
    # sizes as pairs (h, w), padding 'same', groups: every side that takes the form
    *(Case(f"conv2d-k2x3-pad1x0-{side}", Conv2d(2, 3, (2, 3), padding=(1, 0), unfold=side),
           {"x": (2, 2, 4, 5)}, conv_oracle) for side in ("input", "output", "none")),
    Case("conv2d-k3x1-stride1x2-pad0x1", Conv2d(2, 2, (3, 1), stride=(1, 2), padding=(0, 1)),
         {"x": (2, 2, 5, 6)}, conv_oracle),
    Case("conv2d-k1x3-stride2x1-dil1x2-nobias",
         Conv2d(3, 2, (1, 3), stride=(2, 1), dilation=(1, 2), bias=False), {"x": (1, 3, 5, 7)},
         conv_oracle),
    *(Case(f"conv2d-k2x3-dil2x1-pad2x1-{side}",
           Conv2d(2, 3, (2, 3), padding=(2, 1), dilation=(2, 1), unfold=side), {"x": (2, 2, 4, 3)},
           conv_oracle) for side in ("input", "output", "none")),
    *(Case(f"conv2d-same-k{name}-{side}", Conv2d(2, 3, k, padding="same", unfold=side),
           {"x": (2, 2, 5, 4)}, conv_oracle)
      for name, k in (("3", 3), ("4", 4), ("2x3", (2, 3))) for side in ("input", "output", "none")),
    Case("conv2d-same-k4-dil2", Conv2d(2, 2, 4, padding="same", dilation=2), {"x": (1, 2, 5, 6)},
         conv_oracle),
    Case("conv2d-valid-k2x3", Conv2d(2, 2, (2, 3), padding="valid"), {"x": (1, 2, 4, 5)},
         conv_oracle),
    Case("conv2d-groups2-k3-pad1", Conv2d(4, 6, 3, padding=1, groups=2), {"x": (2, 4, 3, 4)},
         conv_oracle),
    Case("conv2d-groups2-k2x3-stride2-nobias", Conv2d(4, 2, (2, 3), stride=2, groups=2,
         bias=False), {"x": (2, 4, 5, 6)}, conv_oracle),
    Case("conv2d-depthwise-k3-same", Conv2d(3, 6, 3, padding="same", groups=3),
         {"x": (2, 3, 4, 3)}, conv_oracle),
    Case("conv2d-depthwise-k4-same-dil2", Conv2d(2, 2, 4, padding="same", dilation=(2, 1),
         groups=2), {"x": (1, 2, 6, 5)}, conv_oracle),
    Case("convT-k2x3-stride2x1-pad1x0-outpad1x0", ConvTranspose2d(2, 3, (2, 3), stride=(2, 1),
         padding=(1, 0), output_padding=(1, 0)), {"x": (2, 2, 3, 4)}, conv_transpose_oracle),
    Case("convT-k3x2-dil1x2-outpad0x1-nobias", ConvTranspose2d(2, 2, (3, 2), dilation=(1, 2),
         output_padding=(0, 1), bias=False), {"x": (1, 2, 3, 3)}, conv_transpose_oracle),
    Case("convT-groups2-k3-stride2-pad1-outpad1", ConvTranspose2d(4, 2, 3, stride=2, padding=1,
         output_padding=1, groups=2), {"x": (2, 4, 3, 3)}, conv_transpose_oracle),
    Case("convT-depthwise-k2x3", ConvTranspose2d(3, 3, (2, 3), groups=3), {"x": (1, 3, 3, 2)},
         conv_transpose_oracle),
    Case("upsample_conv2d", UpsampleConv2d(Conv2d(3, 2, 3, padding=1)), {"x": (2, 3, 3, 4)},
         upsample_conv_oracle),
    Case("upsample_conv2d-pairs-same", UpsampleConv2d(Conv2d(2, 3, (3, 3), padding="same",
         stride=(1, 1), dilation=(1, 1))), {"x": (2, 2, 2, 3)}, upsample_conv_oracle),
    Case("upsample_conv2d-input-nobias",
         UpsampleConv2d(Conv2d(2, 3, 3, padding=1, bias=False, unfold="input")),
         {"x": (1, 2, 2, 3)}, upsample_conv_oracle),
    Case("upsample_conv2d-output", UpsampleConv2d(Conv2d(2, 3, 3, padding=1, unfold="output")),
         {"x": (2, 2, 3, 1)}, upsample_conv_oracle),
    Case("upsample_conv2d-none", UpsampleConv2d(Conv2d(2, 3, 3, padding=1, unfold="none")),
         {"x": (2, 2, 3, 2)}, upsample_conv_oracle),
    Case("upsample-x1", UpsampleNearest(1), {"x": (1, 2, 3, 2)}, upsample_oracle, exact=True),
    Case("upsample-x2", UpsampleNearest(2), {"x": (2, 3, 3, 4)}, upsample_oracle, exact=True),
    Case("upsample-x3", UpsampleNearest(3), {"x": (1, 2, 2, 3)}, upsample_oracle, exact=True),
    Case("relu", Relu(), {"x": (2, 3, 4, 5)}, lambda op, x: torch.relu(x), exact=True,
         draw={"x": away_from_zero}),
    Case("sigmoid", Sigmoid(), {"x": (2, 3, 4, 5)}, lambda op, x: torch.sigmoid(x), exact=True,
         draw={"x": wide}),
    Case("mse", MSE(), {"prediction": (2, 3, 4, 4), "target": (2, 3, 4, 4)},
         lambda op, prediction, target: F.mse_loss(prediction, target)),
    Case("add", Add(), {"a": (2, 3, 4), "b": (2, 3, 4)}, lambda op, a, b: a + b, exact=True),
    Case("sub", Sub(), {"a": (2, 3, 4, 5), "b": (2, 3, 4, 5)}, lambda op, a, b: a - b, exact=True),
    Case("accumulate-2", Accumulate(count=2), {"t0": (2, 3, 4), "t1": (2, 3, 4)}, sum_oracle,
         exact=True),
    Case("accumulate-3", Accumulate(count=3), {f"t{i}": (3, 5) for i in range(3)}, sum_oracle,
         exact=True),
    Case("leaky_relu", LeakyRelu(), {"x": (2, 3, 4, 5)}, leaky_relu_oracle, exact=True,
         draw={"x": away_from_zero}),
    Case("leaky_relu-0.2", LeakyRelu(0.2), {"x": (2, 3, 4, 5)}, leaky_relu_oracle, exact=True,
         draw={"x": away_from_zero}),
    Case("leaky_relu-1.5", LeakyRelu(1.5), {"x": (1, 2, 3, 4)}, leaky_relu_oracle, exact=True,
         draw={"x": away_from_zero}),
    Case("tanh", Tanh(), {"x": (2, 3, 4, 5)}, lambda op, x: torch.tanh(x), exact=True,
         draw={"x": wide}),
    Case("concat", Concat(), {"a": (2, 3, 4, 5), "b": (2, 2, 4, 5)},
         lambda op, a, b: torch.cat((a, b), dim=1), exact=True),
    Case("maxpool2d-k2-odd", MaxPool2d(2), {"x": (2, 3, 6, 5)}, pool_oracle, exact=True),
    Case("maxpool2d-k3-stride1-pad1", MaxPool2d(3, stride=1, padding=1), {"x": (1, 2, 5, 4)},
         pool_oracle, exact=True),
    Case("maxpool2d-k3-stride2", MaxPool2d(3, stride=2), {"x": (2, 2, 7, 6)}, pool_oracle,
         exact=True),
    Case("avgpool2d-k2-odd", AvgPool2d(2), {"x": (2, 3, 5, 4)}, pool_oracle, exact=True),
    Case("avgpool2d-k3-stride2-pad1", AvgPool2d(3, stride=2, padding=1), {"x": (1, 2, 7, 5)},
         pool_oracle, exact=True),
    Case("avgpool2d-k2-stride1", AvgPool2d(2, stride=1), {"x": (1, 2, 4, 3)}, pool_oracle,
         exact=True),
    Case("l1", L1(), {"prediction": (2, 3, 4, 4), "target": (2, 3, 4, 4)},
         lambda op, prediction, target: F.l1_loss(prediction, target)),
    Case("pad-4", Pad(4), {"x": (2, 3, 5, 6)}, pad_oracle, exact=True),
    Case("pad-2-already", Pad(2), {"x": (1, 2, 4, 6)}, pad_oracle, exact=True),
    Case("pad-3-height-only", Pad(3), {"x": (1, 2, 4, 6)}, pad_oracle, exact=True),
    Case("pad-4-reflect", Pad(4, mode="reflect"), {"x": (2, 3, 5, 6)}, pad_oracle, exact=True),
    Case("pad-8-reflect-longer-than-image", Pad(8, mode="reflect"), {"x": (1, 2, 3, 2)},
         pad_oracle, exact=True),
    Case("pad-8-reflect-one-row", Pad(8, mode="reflect"), {"x": (1, 1, 1, 5)}, pad_oracle,
         exact=True),
    Case("pad-2-reflect-already", Pad(2, mode="reflect"), {"x": (1, 2, 4, 6)}, pad_oracle,
         exact=True),
    Case("crop", Crop(), {"x": (2, 3, 8, 8), "like": (2, 1, 5, 6)}, crop_oracle, exact=True),
    Case("crop-same-size", Crop(), {"x": (1, 2, 4, 3), "like": (1, 3, 4, 3)}, crop_oracle,
         exact=True),
]
BY_ID = {case.id: case for case in CASES}

VJP_CASES = [pytest.param(case, role, id=f"{case.id}-{role}")
             for case in CASES for role in case.op.vjps if role in roles(case.op)]
FORWARD_INPLACE = [pytest.param(case, id=case.id) for case in CASES if case.op.inplace]
VJP_INPLACE = [p for p in VJP_CASES if p.values[0].op.vjps[p.values[1]].inplace]
ids = [case.id for case in CASES]


def oracle_grads(case_op, oracle, tensors, gout, wrt):
    leaves = {r: t.detach().clone().requires_grad_(True) for r, t in tensors.items()}
    y = oracle(case_op, **leaves)
    return dict(zip(wrt, torch.autograd.grad(y, [leaves[r] for r in wrt], gout)))


def random_like_out(op, tensors, seed=1):
    gen = torch.Generator().manual_seed(seed)
    shape = node_shapes(op, tensors)["out"]
    dtype = next(iter(tensors.values())).dtype
    return torch.randn(shape, dtype=torch.float64, generator=gen).to(dtype)


# ---- the contract itself --------------------------------------------------------------

def test_every_registered_op_has_a_row():
    covered = {case.op.name for case in CASES}
    assert set(OPS) <= covered, f"add a row to CASES for: {sorted(set(OPS) - covered)}"


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_the_op_declares_a_consistent_contract(case):
    op = case.op
    assert attrs.has(type(op))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        setattr(op, attrs.fields(type(op))[0].name if attrs.fields(type(op)) else "x", None)
    if op.inplace is not None:
        assert op.inplace in op.inputs
    every = set(roles(op))
    for role, rule in op.vjps.items():
        assert isinstance(rule, VJP)
        assert callable(getattr(op, rule.kernel))
        assert set(rule.needs) <= every | {"out", "gout"}
        assert rule.inplace is None or rule.inplace in rule.needs
    if op.name in OPS:  # a spec may use it: each of its tensors needs a gradient rule
        assert every <= set(op.vjps)


# ---- 1. forward against torch ---------------------------------------------------------

@pytest.mark.parametrize("reference", [False, True], ids=["planned", "reference"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_forward(case, dtype, reference):
    """The kernel a plan runs, and the op's own reference kernel, against torch."""
    tensors = case.tensors(dtype)
    expected = case.oracle(case.op, **tensors)
    got = run_forward(case.op, tensors, reference=reference)
    assert got.shape == expected.shape and got.dtype == dtype
    if case.exact:
        assert torch.equal(got, expected)
    else:
        torch.testing.assert_close(got, expected, **(F64 if dtype == torch.float64 else F32))


# ---- 2. VJPs against torch.autograd ---------------------------------------------------

@pytest.mark.parametrize("reference", [False, True], ids=["planned", "reference"])
@pytest.mark.parametrize(("case", "role"), VJP_CASES)
def test_vjp_matches_autograd_float64(case, role, reference):
    tensors = case.tensors(torch.float64)
    gout = random_like_out(case.op, tensors)
    expected = oracle_grads(case.op, case.oracle, tensors, gout, [role])[role]
    torch.testing.assert_close(run_vjp(case.op, role, tensors, gout, reference=reference),
                               expected, **F64)


@pytest.mark.parametrize(("case", "role"), VJP_CASES)
def test_vjp_matches_autograd_float32(case, role):
    tensors = case.tensors(torch.float32)
    gout = random_like_out(case.op, tensors)
    expected = oracle_grads(case.op, case.oracle, tensors, gout, [role])[role]
    torch.testing.assert_close(run_vjp(case.op, role, tensors, gout), expected, **F32)


def test_relu_gradient_at_zero_follows_pytorch():
    """At x == 0 (either sign) the gradient is 0, as torch.relu's backward has it."""
    x = torch.tensor([[-1.0, -0.0, 0.0, 2.0], [0.0, 3.0, -0.0, -2.0]], dtype=torch.float64)
    gout = torch.arange(1.0, 9.0, dtype=torch.float64).view(2, 4)
    expected = oracle_grads(Relu(), BY_ID["relu"].oracle, {"x": x}, gout, ["x"])["x"]
    assert torch.equal(run_vjp(Relu(), "x", {"x": x}, gout), expected)


@pytest.mark.parametrize("slope", [0.01, 0.2, 0.0, 1.0, 1.5])
def test_leaky_relu_gradient_at_zero_follows_pytorch(slope):
    """At x == 0 (either sign) the gradient is the slope, as torch's leaky_relu backward
    has it; the forward keeps the sign of zero as torch does."""
    op = LeakyRelu(slope)
    x = torch.tensor([[-1.0, -0.0, 0.0, 2.0], [0.0, 3.0, -0.0, -2.0]], dtype=torch.float64)
    gout = torch.arange(1.0, 9.0, dtype=torch.float64).view(2, 4)
    y = run_forward(op, {"x": x})
    assert torch.equal(y, leaky_relu_oracle(op, x))
    assert torch.equal(torch.signbit(y), torch.signbit(leaky_relu_oracle(op, x)))
    expected = oracle_grads(op, leaky_relu_oracle, {"x": x}, gout, ["x"])["x"]
    assert torch.equal(run_vjp(op, "x", {"x": x}, gout), expected)


def test_l1_gradient_is_zero_where_prediction_equals_target():
    prediction = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 5.0]], dtype=torch.float64)
    target = torch.tensor([[1.0, 0.0, 3.0], [0.0, 1.0, 4.0]], dtype=torch.float64)
    tensors = {"prediction": prediction, "target": target}
    gout = torch.tensor(1.5, dtype=torch.float64)
    expected = oracle_grads(L1(), BY_ID["l1"].oracle, tensors, gout, ["prediction", "target"])
    for role in ("prediction", "target"):
        got = run_vjp(L1(), role, tensors, gout)
        assert torch.equal(got, expected[role])
        assert torch.equal(got == 0, prediction == target)


@pytest.mark.parametrize("low", [1.0, float("-inf")], ids=["ones", "minus-inf"])
@pytest.mark.parametrize("op", [MaxPool2d(2, stride=1), MaxPool2d(3, stride=2, padding=1),
                                MaxPool2d(2)], ids=lambda op: op.describe())
def test_maxpool_ties_go_where_pytorch_sends_them(op, low):
    """A window holding its maximum several times sends the whole gradient to one cell,
    the first real one in row-major order, as torch's kernel picks (padding never
    takes it, even from a window of -inf)."""
    x = torch.full((1, 1, 5, 6), low, dtype=torch.float64)  # every window is tied
    x[0, 0, 2:, 3:] = 2.0
    gout = torch.arange(1.0, 1.0 + math.prod(op.infer(x=x.shape)), dtype=torch.float64)
    gout = gout.view(op.infer(x=x.shape))
    expected = oracle_grads(op, pool_oracle, {"x": x}, gout, ["x"])["x"]
    got = run_vjp(op, "x", {"x": x}, gout)
    assert torch.equal(got, expected)


def test_sigmoid_saturates_without_nan():
    x = torch.tensor([-800.0, -40.0, 0.0, 40.0, 800.0], dtype=torch.float64)
    gout = torch.ones_like(x)
    y = run_forward(Sigmoid(), {"x": x})
    assert torch.equal(y, torch.sigmoid(x))
    expected = oracle_grads(Sigmoid(), BY_ID["sigmoid"].oracle, {"x": x}, gout, ["x"])["x"]
    got = run_vjp(Sigmoid(), "x", {"x": x}, gout)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, **F64)


# ---- 3. VJPs against finite differences -----------------------------------------------

@pytest.mark.parametrize(("case", "role"), VJP_CASES)
def test_vjp_matches_finite_differences(case, role):
    tensors = case.tensors(torch.float64, seed=7)
    gout = random_like_out(case.op, tensors, seed=8)
    numeric = finite_difference(case.op, tensors, role, gout, eps=1e-6)
    torch.testing.assert_close(run_vjp(case.op, role, tensors, gout), numeric, **FD)


# ---- 4. drawn configurations ----------------------------------------------------------

def sizes(low: int, high: int):
    """A size as a spec or a caller may write it: an int, or a pair (h, w)."""
    return st.one_of(st.integers(low, high), st.tuples(st.integers(low, high), st.integers(low, high)))


@st.composite
def conv_configs(draw, every_side=False):
    """A conv2d in every form (sizes as ints or pairs, padding 'same' and 'valid',
    groups), a side its hint may name, and an input shape. ``every_side``: only
    convs that every side computes (stride 1, one group)."""
    stride = draw(st.sampled_from([1, (1, 1)]) if every_side else sizes(1, 3))
    padding = draw(st.one_of(sizes(0, 2), st.sampled_from(["valid"] + ["same"] * (stride in (1, (1, 1))))))
    groups = 1 if every_side else draw(st.sampled_from([1, 1, 2, 3]))
    op = Conv2d(in_channels=groups * draw(st.integers(1, 2 if groups > 1 else 4)),
                out_channels=groups * draw(st.integers(1, 2 if groups > 1 else 4)),
                kernel=draw(sizes(1, 4)), stride=stride, padding=padding,
                dilation=draw(sizes(1, 3)), groups=groups, bias=draw(st.booleans()))
    plain = op.stride == (1, 1) and op.groups == 1
    sides = ["auto", "input"] + (["output", "none"] if plain else [])
    op = attrs.evolve(op, unfold=draw(st.sampled_from(sides)))
    x = (draw(st.integers(1, 3)), op.in_channels, draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    return op, x


def _infer_or_error(op, x):
    try:
        return op.infer(x=x, **op.params()), None
    except ng.SpecError as e:
        return None, e


@HYPOTHESIS
@given(conv_configs())
def test_conv2d_infer_agrees_with_torch_on_every_configuration(config):
    """infer gives torch's output shape, or a SpecError on 'kernel' exactly where torch
    refuses because the output would be empty."""
    op, x_shape = config
    shape, error = _infer_or_error(op, x_shape)
    x = torch.zeros(x_shape)
    weight = torch.zeros(op.params()["weight"])
    if error is not None:
        assert error.field == "kernel"
        with pytest.raises(RuntimeError):
            conv_oracle(op, x, weight)
    else:
        assert tuple(shape) == tuple(conv_oracle(op, x, weight).shape)


def _check_conv_against_autograd(op, x_shape, seed, reference=False):
    """Forward and every VJP of ``op`` (a plan's kernels, or with ``reference`` the op's
    own) on random float64 tensors against torch."""
    shape, error = _infer_or_error(op, x_shape)
    assume(error is None)
    gen = torch.Generator().manual_seed(seed)
    tensors = {role: torch.randn(s, dtype=torch.float64, generator=gen)
               for role, s in {"x": x_shape, **op.params()}.items()}
    gout = torch.randn(shape, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(run_forward(op, tensors, reference=reference),
                               conv_oracle(op, **tensors), **F64)
    wrt = list(tensors)
    expected = oracle_grads(op, conv_oracle, tensors, gout, wrt)
    for role in wrt:
        torch.testing.assert_close(run_vjp(op, role, tensors, gout, reference=reference),
                                   expected[role], **F64,
                                   msg=lambda m, role=role: f"{op} grad {role}: {m}")


@HYPOTHESIS
@given(conv_configs(), st.integers(0, 2**31 - 1))
def test_conv2d_drawn_forward_and_vjps_match_autograd(config, seed):
    _check_conv_against_autograd(*config, seed)
    _check_conv_against_autograd(*config, seed, reference=True)


@HYPOTHESIS
@given(st.integers(1, 4), st.integers(1, 2), st.integers(1, 3), st.integers(1, 6),
       st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_upsample_drawn_forward_and_vjp_match_torch(scale, n, c, h, w, seed):
    op = UpsampleNearest(scale)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, c, h, w), dtype=torch.float64, generator=gen)
    assert op.infer(x=(n, c, h, w)) == (n, c, h * scale, w * scale)
    assert torch.equal(run_forward(op, {"x": x}), upsample_oracle(op, x))
    gout = torch.randn((n, c, h * scale, w * scale), dtype=torch.float64, generator=gen)
    expected = oracle_grads(op, upsample_oracle, {"x": x}, gout, ["x"])["x"]
    torch.testing.assert_close(run_vjp(op, "x", {"x": x}, gout), expected, **F64)


@st.composite
def pool_configs(draw):
    """A pool class, its attributes (stride left out half the time) and an input shape;
    the attributes may be ones torch refuses."""
    cls = draw(st.sampled_from([MaxPool2d, AvgPool2d]))
    kwargs = {"kernel": draw(st.integers(1, 4)), "padding": draw(st.integers(0, 2))}
    stride = draw(st.none() | st.integers(1, 3))
    if stride is not None:
        kwargs["stride"] = stride
    x = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 9)),
         draw(st.integers(1, 9)))
    return cls, kwargs, x


@HYPOTHESIS
@given(pool_configs())
def test_pool_attributes_and_infer_agree_with_torch_on_every_configuration(config):
    """A pool is refused (SpecError on 'padding' when built, on 'kernel' by infer)
    exactly where torch refuses it, and otherwise infers torch's output shape."""
    cls, kwargs, x_shape = config
    x = torch.zeros(x_shape)
    try:
        op = cls(**kwargs)
        shape, error = _infer_or_error(op, x_shape)
    except ng.SpecError as e:
        assert e.field == "padding"
        shape, error = None, e
    if error is not None:
        assert error.field in ("padding", "kernel")
        with pytest.raises(RuntimeError):
            torch_pool(cls, x, **kwargs)
    else:
        assert tuple(shape) == tuple(torch_pool(cls, x, **kwargs).shape)


@HYPOTHESIS
@given(pool_configs(), st.booleans(), st.integers(0, 2**31 - 1))
def test_pool_drawn_forward_and_vjp_match_torch(config, ties, seed):
    """Over drawn kernels, strides, paddings and odd sizes; with ``ties``, on whole
    numbers 0..2, where max-pool windows hold their maximum several times."""
    cls, kwargs, x_shape = config
    assume(kwargs["padding"] <= kwargs["kernel"] // 2)
    op = cls(**kwargs)
    shape, error = _infer_or_error(op, x_shape)
    assume(error is None)
    gen = torch.Generator().manual_seed(seed)
    x = (tied if ties else randn)(x_shape, torch.float64, gen)
    gout = torch.randn(shape, dtype=torch.float64, generator=gen)
    assert torch.equal(run_forward(op, {"x": x}), pool_oracle(op, x))  # same sums, same order
    expected = oracle_grads(op, pool_oracle, {"x": x}, gout, ["x"])["x"]
    torch.testing.assert_close(run_vjp(op, "x", {"x": x}, gout), expected, **F64,
                               msg=lambda m: f"{op} grad x: {m}")


@st.composite
def conv_transpose_configs(draw):
    """Attributes (not yet an op: some are refused), sizes as ints or pairs, and an
    input shape."""
    groups = draw(st.sampled_from([1, 1, 2]))
    attributes = dict(in_channels=groups * draw(st.integers(1, 3)),
                      out_channels=groups * draw(st.integers(1, 3)),
                      kernel=draw(sizes(1, 4)), stride=draw(sizes(1, 3)),
                      padding=draw(sizes(0, 3)), output_padding=draw(sizes(0, 2)),
                      dilation=draw(sizes(1, 3)), groups=groups, bias=draw(st.booleans()))
    x = (draw(st.integers(1, 2)), attributes["in_channels"], draw(st.integers(1, 6)),
         draw(st.integers(1, 6)))
    return attributes, x


@HYPOTHESIS
@given(conv_transpose_configs())
def test_conv_transpose2d_refuses_exactly_what_torch_refuses(config):
    """The op is refused on 'output_padding', or infer on 'padding', exactly where torch
    refuses the configuration; otherwise infer gives torch's output shape."""
    attributes, x_shape = config
    k = attributes["kernel"]
    weight = torch.zeros(attributes["in_channels"], attributes["out_channels"] // attributes["groups"],
                         *(k if isinstance(k, tuple) else (k, k)))
    try:
        expected = conv_transpose_oracle(SimpleNamespace(**attributes), torch.zeros(x_shape),
                                         weight).shape
    except RuntimeError:
        expected = None
    if expected is not None and 0 in expected:
        expected = None  # torch gives an empty output where Ho or Wo is 0; n2ngraph refuses it
    try:
        op = ConvTranspose2d(**attributes)
    except ng.SpecError as e:
        assert e.field == "output_padding" and expected is None
        return
    shape, error = _infer_or_error(op, x_shape)
    if error is not None:
        assert error.field == "padding" and expected is None
    else:
        assert tuple(shape) == tuple(expected)


@HYPOTHESIS
@given(conv_transpose_configs(), st.integers(0, 2**31 - 1))
def test_conv_transpose2d_drawn_forward_and_vjps_match_autograd(config, seed):
    attributes, x_shape = config
    try:
        op = ConvTranspose2d(**attributes)
    except ng.SpecError:  # output_padding too large: the test above checks the refusal
        assume(False)
    shape, error = _infer_or_error(op, x_shape)
    assume(error is None)
    gen = torch.Generator().manual_seed(seed)
    tensors = {role: torch.randn(s, dtype=torch.float64, generator=gen)
               for role, s in {"x": x_shape, **op.params()}.items()}
    gout = torch.randn(shape, dtype=torch.float64, generator=gen)
    expected = oracle_grads(op, conv_transpose_oracle, tensors, gout, list(tensors))
    for reference in (False, True):  # a plan's kernels, and the op's own
        torch.testing.assert_close(run_forward(op, tensors, reference=reference),
                                   conv_transpose_oracle(op, **tensors), **F64)
        for role in tensors:
            torch.testing.assert_close(run_vjp(op, role, tensors, gout, reference=reference),
                                       expected[role], **F64,
                                       msg=lambda m, role=role: f"{op} grad {role}: {m}")


# ---- 5. in place ----------------------------------------------------------------------

@pytest.mark.parametrize("case", FORWARD_INPLACE)
def test_forward_may_overwrite_its_inplace_input(case):
    tensors = case.tensors(torch.float64)
    assert torch.equal(run_forward(case.op, tensors, alias=True), run_forward(case.op, tensors))


@pytest.mark.parametrize(("case", "role"), VJP_INPLACE)
def test_vjp_may_overwrite_its_inplace_need(case, role):
    tensors = case.tensors(torch.float64)
    gout = random_like_out(case.op, tensors)
    apart = run_vjp(case.op, role, tensors, gout)
    assert torch.equal(run_vjp(case.op, role, tensors, gout, alias=True), apart)


def test_inplace_tables_are_not_empty():
    """Guards the parametrisation above against silently testing nothing."""
    assert {p.values[0].op.name for p in FORWARD_INPLACE} >= {"relu", "sigmoid", "add", "accumulate",
                                                            "leaky_relu", "tanh"}
    assert {p.values[0].op.name for p in VJP_INPLACE} >= {"relu", "sigmoid", "add", "leaky_relu",
                                                        "tanh"}


# ---- 6. shape and attribute errors ----------------------------------------------------

def _spec_error(fn, *args, **kwargs) -> ng.SpecError:
    with pytest.raises(ng.SpecError) as info:
        fn(*args, **kwargs)
    return info.value


def test_conv2d_wrong_channel_count():
    op = Conv2d(3, 8, 3)
    error = _spec_error(op.infer, x=(1, 4, 8, 8), **op.params())
    assert error.field == "in_channels"
    assert "4" in str(error) and "3" in str(error)


def test_conv2d_kernel_larger_than_padded_input():
    op = Conv2d(1, 1, 3, dilation=2, padding=1)  # reach 5 > 2 + 2
    assert _spec_error(op.infer, x=(1, 1, 2, 9), **op.params()).field == "kernel"
    assert op.infer(x=(1, 1, 3, 3), **op.params()) == (1, 1, 1, 1)


@pytest.mark.parametrize("op", [Conv2d(1, 1, 1), UpsampleNearest(2), MaxPool2d(1), AvgPool2d(1),
                                Pad(2)], ids=lambda op: op.name)
@pytest.mark.parametrize("shape", [(1, 1, 4), (1, 1, 4, 4, 1)], ids=["rank3", "rank5"])
def test_spatial_ops_want_rank_4(op, shape):
    assert _spec_error(op.infer, x=shape, **op.params()).field == "in"


@pytest.mark.parametrize("op", [MSE(), Add(), L1()], ids=lambda op: op.name)
def test_binary_ops_want_equal_shapes(op):
    a, b = op.inputs
    assert _spec_error(op.infer, **{a: (1, 3, 4, 4), b: (1, 3, 4, 5)}).field == "in"
    assert _spec_error(op.infer, **{a: (2, 3), b: (3, 2)}).field == "in"


@pytest.mark.parametrize(("a", "b"), [((1, 3, 4, 4), (2, 3, 4, 4)), ((1, 3, 4, 4), (1, 3, 5, 4)),
                                    ((1, 3, 4, 4), (1, 3, 4, 3)), ((1, 3, 4), (1, 3, 4)),
                                    ((1, 3, 4, 4), (1, 3, 4, 4, 1))], ids=str)
def test_concat_wants_equal_batch_height_and_width(a, b):
    assert _spec_error(Concat().infer, a=a, b=b).field == "in"
    assert Concat().infer(a=(2, 3, 4, 5), b=(2, 1, 4, 5)) == (2, 4, 4, 5)


@pytest.mark.parametrize(("x", "like"), [((1, 3, 4, 4), (2, 3, 4, 4)), ((1, 3, 4, 4), (1, 3, 5, 4)),
                                       ((1, 3, 4, 4), (1, 3, 4, 5)), ((1, 3, 4), (1, 3, 4, 4)),
                                       ((1, 3, 4, 4), (1, 3, 4))], ids=str)
def test_crop_wants_a_smaller_like_of_the_same_batch(x, like):
    assert _spec_error(Crop().infer, x=x, like=like).field == "in"


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
@pytest.mark.parametrize("multiple", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("size", [1, 2, 5, 8, 13])
def test_pad_then_crop_restores_any_size(multiple, size, mode):
    x = torch.randn(1, 2, size, size + 1, dtype=torch.float64)
    padded = run_forward(Pad(multiple, mode=mode), {"x": x})
    assert padded.shape[2] % multiple == 0 and padded.shape[3] % multiple == 0
    assert padded.shape[2] - size < multiple and padded.shape[3] - size - 1 < multiple
    assert torch.equal(run_forward(Crop(), {"x": padded, "like": x}), x)


def test_mse_is_a_scalar():
    assert MSE().infer(prediction=(2, 3, 4, 4), target=(2, 3, 4, 4)) == ()


CONV = dict(in_channels=2, out_channels=3, kernel=3)
BAD_ATTRIBUTES = [
    (Conv2d, {**CONV, "kernel": 0}, "kernel"),
    (Conv2d, {**CONV, "kernel": "3"}, "kernel"),
    (Conv2d, {**CONV, "kernel": 3.0}, "kernel"),
    (Conv2d, {**CONV, "stride": -1}, "stride"),
    (Conv2d, {**CONV, "stride": 0}, "stride"),
    (Conv2d, {**CONV, "padding": -1}, "padding"),
    (Conv2d, {**CONV, "dilation": 0}, "dilation"),
    (Conv2d, {**CONV, "bias": 1}, "bias"),
    (Conv2d, {**CONV, "bias": "yes"}, "bias"),
    (Conv2d, {**CONV, "in_channels": 0}, "in_channels"),
    (Conv2d, {**CONV, "in_channels": True}, "in_channels"),
    (Conv2d, {**CONV, "out_channels": None}, "out_channels"),
    (Conv2d, {**CONV, "unfold": "sideways"}, "unfold"),
    (Conv2d, {**CONV, "unfold": 1}, "unfold"),
    (Conv2d, {**CONV, "kernel": [3, 3, 3]}, "kernel"),
    (Conv2d, {**CONV, "kernel": (3, 0)}, "kernel"),
    (Conv2d, {**CONV, "kernel": [3, True]}, "kernel"),
    (Conv2d, {**CONV, "kernel": [3, 2.0]}, "kernel"),
    (Conv2d, {**CONV, "stride": (1, -2)}, "stride"),
    (Conv2d, {**CONV, "stride": "2"}, "stride"),
    (Conv2d, {**CONV, "padding": (-1, 0)}, "padding"),
    (Conv2d, {**CONV, "padding": "full"}, "padding"),
    (Conv2d, {**CONV, "padding": [1]}, "padding"),
    (Conv2d, {**CONV, "padding": "same", "stride": (1, 2)}, "padding"),
    (Conv2d, {**CONV, "dilation": (0, 1)}, "dilation"),
    (Conv2d, {**CONV, "groups": 0}, "groups"),
    (Conv2d, {**CONV, "groups": 2}, "groups"),  # 3 output channels
    (Conv2d, {**CONV, "in_channels": 4, "groups": 3}, "groups"),
    (ConvTranspose2d, {**CONV, "stride": (2, 1), "output_padding": (1, 1)}, "output_padding"),
    (ConvTranspose2d, {**CONV, "padding": "same"}, "padding"),
    (ConvTranspose2d, {**CONV, "groups": 2}, "groups"),
    (ConvTranspose2d, {**CONV, "output_padding": -1}, "output_padding"),
    (ConvTranspose2d, {**CONV, "stride": 2, "output_padding": 2}, "output_padding"),
    (ConvTranspose2d, {**CONV, "kernel": 0}, "kernel"),
    (UpsampleNearest, {"scale": 0}, "scale"),
    (UpsampleNearest, {"scale": 2.0}, "scale"),
    (UpsampleNearest, {"scale": False}, "scale"),
    (Pad, {"multiple": 0}, "multiple"),
    (Pad, {"multiple": 2.0}, "multiple"),
    (Pad, {"multiple": 2, "mode": "edge"}, "mode"),
    (LeakyRelu, {"negative_slope": -0.1}, "negative_slope"),
    (LeakyRelu, {"negative_slope": "0.1"}, "negative_slope"),
    (LeakyRelu, {"negative_slope": True}, "negative_slope"),
    *((cls, kwargs, field_name) for cls in (MaxPool2d, AvgPool2d) for kwargs, field_name in [
        ({"kernel": 0}, "kernel"),
        ({"kernel": 2.0}, "kernel"),
        ({"kernel": 2, "stride": 0}, "stride"),
        ({"kernel": 2, "stride": None}, "stride"),
        ({"kernel": 2, "padding": -1}, "padding"),
        ({"kernel": 3, "padding": 2}, "padding"),  # torch: at most half the kernel
        ({"kernel": 1, "padding": 1}, "padding"),
    ]),
]


@pytest.mark.parametrize(("cls", "kwargs", "field_name"), BAD_ATTRIBUTES,
                         ids=[f"{c.name}-{f}={kw[f]!r}" for c, kw, f in BAD_ATTRIBUTES])
def test_bad_attribute_names_its_field(cls, kwargs, field_name):
    error = _spec_error(cls, **kwargs)
    assert error.field == field_name
    assert f"field '{field_name}'" in str(error)


def test_pool_and_leaky_relu_defaults_follow_torch():
    assert LeakyRelu().negative_slope == 0.01
    for cls in (MaxPool2d, AvgPool2d):
        assert (cls(3).stride, cls(3).padding) == (3, 0)  # stride defaults to the kernel
        assert cls(3, stride=1).stride == 1 and cls(3) == cls(3, stride=3)
        assert cls(3, padding=1).infer(x=(1, 2, 7, 8)) == (1, 2, 3, 3)


def test_good_attributes_and_defaults():
    op = Conv2d(**CONV)
    assert (op.kernel, op.stride, op.padding, op.dilation, op.groups, op.bias) == \
        ((3, 3), (1, 1), (0, 0), (1, 1), 1, True)
    assert op.params() == {"weight": (3, 2, 3, 3), "bias": (3,)}
    assert Conv2d(**CONV, bias=False).params() == {"weight": (3, 2, 3, 3)}
    assert op.fans() == (18, 27)
    assert op == Conv2d(**CONV) and hash(op) == hash(Conv2d(**CONV))


def test_sizes_are_stored_as_pairs_whatever_form_they_were_given_in():
    """An int k is (k, k), a list is a tuple, 'valid' is no padding: one op, one hash,
    one description, however a spec or a caller wrote it."""
    written = [Conv2d(2, 4, 3, stride=1, padding=1, dilation=1),
               Conv2d(2, 4, [3, 3], stride=(1, 1), padding=[1, 1], dilation=(1, 1))]
    assert written[0] == written[1] and hash(written[0]) == hash(written[1])
    assert (written[0].kernel, written[0].padding) == ((3, 3), (1, 1))
    assert Conv2d(2, 4, 3, padding="valid") == Conv2d(2, 4, 3)
    assert Conv2d(2, 4, 3, padding="same").padding == "same"
    rect = Conv2d(2, 4, (2, 3), stride=(1, 2), padding=(0, 1), groups=2)
    assert rect.params() == {"weight": (4, 1, 2, 3), "bias": (4,)}
    assert rect.fans() == (6, 24)  # torch's: weight dims 1 and 0 times the area
    assert rect.describe() == ("conv2d in_channels=2 out_channels=4 kernel=2x3 stride=1x2 "
                               "padding=0x1 groups=2")
    assert Conv2d(3, 24, (3, 3), stride=[2, 2], padding=1).describe() == \
        "conv2d in_channels=3 out_channels=24 kernel=3 stride=2 padding=1"  # as the spec writes it
    assert UpsampleConv2d(Conv2d(2, 2, 3, padding="same")).describe() == \
        "upsample_conv2d in_channels=2 out_channels=2 kernel=3 padding=same"
    tconv = ConvTranspose2d(4, 6, (3, 2), stride=2, output_padding=(1, 0), groups=2)
    assert (tconv.stride, tconv.output_padding) == ((2, 2), (1, 0))
    assert tconv.params()["weight"] == (4, 3, 3, 2) and tconv.fans() == (18, 24)


@pytest.mark.parametrize(("kernel", "dilation", "pads"), [
    (3, 1, (1, 1, 1, 1)), (4, 1, (1, 2, 1, 2)), ((2, 3), 1, (0, 1, 1, 1)), (4, (2, 1), (3, 3, 1, 2)),
    (1, 3, (0, 0, 0, 0))])
def test_same_padding_puts_the_odd_zero_at_the_end_as_torch_does(kernel, dilation, pads):
    op = Conv2d(1, 1, kernel, padding="same", dilation=dilation)
    assert op.pads() == pads
    x = torch.randn(1, 1, 6, 7, dtype=torch.float64)
    w = torch.randn(op.params()["weight"], dtype=torch.float64)
    top, bottom, left, right = pads
    explicit = torch.zeros(1, 1, 6 + top + bottom, 7 + left + right, dtype=torch.float64)
    explicit[:, :, top:top + 6, left:left + 7] = x
    expected = F.conv2d(explicit, w, dilation=dilation)
    assert expected.shape == x.shape
    torch.testing.assert_close(F.conv2d(x, w, padding="same", dilation=dilation), expected, **F64)
    torch.testing.assert_close(run_forward(op, {"x": x, "weight": w, "bias": torch.zeros(1,
                               dtype=torch.float64)}), expected, **F64)


# ---- 7. compiler-internal ops ---------------------------------------------------------

@pytest.mark.parametrize("count", [2, 3, 5])
def test_accumulate_sums_its_terms_in_order(count):
    op = Accumulate(count=count)
    assert op.inputs == tuple(f"t{i}" for i in range(count))
    gen = torch.Generator().manual_seed(count)
    terms = {f"t{i}": torch.randn(2, 3, 4, dtype=torch.float64, generator=gen) for i in range(count)}
    assert op.infer(**{r: t.shape for r, t in terms.items()}) == (2, 3, 4)
    expected = sum_oracle(op, **terms)
    assert torch.equal(run_forward(op, terms), expected)
    assert torch.equal(run_forward(op, terms, alias=True), expected)  # out IS t0


@pytest.mark.parametrize("shape", [(), (1,), (2, 3)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_seed_fills_ones(shape, dtype):
    op = Seed(shape=shape)
    assert op.inputs == () and op.infer() == shape
    got = run_forward(op, {}, dtype=dtype)
    assert got.shape == shape and got.dtype == dtype
    assert torch.equal(got, torch.ones(shape, dtype=dtype))


@pytest.mark.parametrize("side", ["output", "none"])
def test_conv2d_output_and_no_unfold_need_stride_1(side):
    op = Conv2d(2, 2, 3, stride=2, unfold=side)
    assert _spec_error(op.infer, x=(1, 2, 8, 8), **op.params()).field == "unfold"


def _unfolds(op: Conv2d, method: str) -> str:
    """The side a CPU plan's kernel for ``method`` of ``op`` unfolds ('input' for col2im,
    the forward's side for the input gradient computed as the mirror conv's forward),
    among the GEMM kernels (test_winograd.py tests where generated ones take over)."""
    chosen = kernel_for(op, method, codegen=False)
    if isinstance(chosen, conv_kernels.MirrorGradX):
        chosen = chosen.forward
    return next(side for side, row in CONV2D_SIDES.items() if type(chosen) in row)


def _as_one(op: UpsampleConv2d, method: str) -> bool:
    """Whether a plan runs the four phases of ``op``'s ``method`` as one GEMM."""
    return isinstance(kernel_for(op, method), (upsample_conv_kernels.AllPhasesForward,
                                               upsample_conv_kernels.AllPhasesGradX,
                                               upsample_conv_kernels.AllPhasesGradWeight))


def test_conv2d_auto_unfolds_the_output_side_where_the_conv_narrows():
    narrowing, square, widening = (Conv2d(24, 3, 3, padding=1), Conv2d(24, 24, 3, padding=1),
                                   Conv2d(3, 24, 3, padding=1))
    kernels = ("forward", "grad_x", "grad_weight")
    assert {_unfolds(narrowing, k) for k in kernels} == {"output"}
    assert {_unfolds(square, k) for k in kernels} == {_unfolds(widening, k) for k in kernels} == {"input"}
    assert _unfolds(Conv2d(64, 3, 3, padding=1), "forward") == "output"
    strided = Conv2d(24, 3, 3, stride=2, padding=1)
    assert {_unfolds(strided, k) for k in kernels} == {"input"}
    forced = Conv2d(24, 3, 3, padding=1, unfold="input")
    assert _unfolds(forced, "forward") == _unfolds(forced, "grad_x") == "input"


def test_conv2d_auto_skips_the_unfold_where_both_sides_are_wide():
    kernels = ("forward", "grad_x", "grad_weight")
    for wide in (Conv2d(67, 64, 3, padding=1), Conv2d(64, 32, 3, padding=1),
                 Conv2d(32, 32, 3, padding=1)):
        assert {_unfolds(wide, k) for k in kernels} == {"none"}
    assert _unfolds(Conv2d(32, 32, 3, stride=2, padding=1), "forward") == "input"
    assert _unfolds(Conv2d(3, 32, 3, padding=1), "forward") == "input"
    beyond = Conv2d(32, 32, 2, padding=3)  # padding beyond the reach: no mirror conv
    assert (_unfolds(beyond, "forward"), _unfolds(beyond, "grad_x")) == ("none", "input")


def test_conv2d_auto_runs_strided_and_grouped_convs_on_the_input_side():
    """Only the input side's kernels take a stride or groups; the other sides' hints
    are refused for them with a SpecError on 'unfold'."""
    kernels = ("forward", "grad_x", "grad_weight")
    for op in (Conv2d(32, 32, 3, padding=1, groups=2), Conv2d(32, 32, 3, padding=1, groups=32),
               Conv2d(64, 32, (3, 1), stride=(1, 2)), Conv2d(24, 3, 3, stride=(2, 1))):
        assert {_unfolds(op, k) for k in kernels} == {"input"}, op
        assert not isinstance(kernel_for(op, "grad_x"), conv_kernels.MirrorGradX)
    for side in ("output", "none"):
        grouped = Conv2d(4, 4, 3, groups=2, unfold=side)
        assert _spec_error(grouped.infer, x=(1, 4, 8, 8)).field == "unfold"


def test_conv2d_mirrors_only_padding_alike_on_both_sides():
    """'same' with an odd kernel pads alike on both sides: the input gradient is the
    mirror conv's forward, as for padding 1. With an even kernel one side has a zero
    more, which the mirror's padding could not say: col2im (or the output side)."""
    for wide in (Conv2d(32, 32, 3, padding="same"), Conv2d(32, 32, (3, 5), padding="same")):
        assert isinstance(kernel_for(wide, "grad_x"), conv_kernels.MirrorGradX)
        explicit = attrs.evolve(wide, padding=wide.pads()[::2])  # (top, left)
        assert kernel_for(wide, "grad_x").forward == kernel_for(explicit, "grad_x").forward
    uneven = Conv2d(32, 32, 4, padding="same")
    assert (_unfolds(uneven, "forward"), _unfolds(uneven, "grad_x")) == ("none", "input")
    assert isinstance(kernel_for(attrs.evolve(uneven, unfold="output"), "grad_x"),
                      conv_kernels.OutputSideGradX)


def test_upsample_conv2d_shares_one_gemm_across_phases_on_the_output_side():
    """The op table's 'upsample_conv2d-output' case checks the shared kernels against
    torch and finite differences; this checks that they are the ones it runs."""
    kernels = ("forward", "grad_x", "grad_weight")
    assert all(_as_one(UpsampleConv2d(Conv2d(2, 3, 3, padding=1, unfold="output")), k) for k in kernels)
    assert all(_as_one(UpsampleConv2d(Conv2d(24, 3, 3, padding=1)), k) for k in kernels)  # seed net
    assert not any(_as_one(UpsampleConv2d(Conv2d(24, 24, 3, padding=1)), k) for k in kernels)


@pytest.mark.parametrize("conv", [Conv2d(2, 2, 5, padding=2), Conv2d(2, 2, 3, padding=1, stride=2),
                                  Conv2d(2, 2, 3), Conv2d(2, 2, 3, padding=1, dilation=2),
                                  Conv2d(2, 2, (3, 1), padding=(1, 0)), Conv2d(2, 2, 3, padding=(1, 0)),
                                  Conv2d(2, 2, 3, padding=1, stride=(1, 2)),
                                  Conv2d(2, 2, 3, padding="same", dilation=(1, 2)),
                                  Conv2d(2, 2, 3, padding=1, groups=2)],
                         ids=["k5", "stride2", "pad0", "dil2", "k3x1", "pad1x0", "stride1x2",
                              "same-dil1x2", "groups2"])
def test_upsample_conv2d_fuses_only_the_3x3_same_conv(conv):
    assert _spec_error(UpsampleConv2d, conv).field == "conv"
    assert UpsampleConv2d(Conv2d(2, 2, (3, 3), padding="same")).conv.pads() == (1, 1, 1, 1)


@HYPOTHESIS
@given(conv_configs(), st.integers(1, 12), st.integers(0, 2**31 - 1))
def test_conv2d_in_small_tiles_matches_autograd(config, tile_columns, seed):
    """The input side's tiles (whole samples, or row blocks of one sample, the last one
    short) give the same numbers as torch whatever the tile size."""
    from unittest import mock

    op, x_shape = config
    with mock.patch.object(conv_kernels, "TILE_COLUMNS", tile_columns):
        _check_conv_against_autograd(attrs.evolve(op, unfold="input"), x_shape, seed)
    # the same tiles asked for by the op's own ``tile`` hint
    _check_conv_against_autograd(attrs.evolve(op, unfold="input", tile=tile_columns), x_shape, seed)
    if op.stride == (1, 1) and op.groups == 1:
        _check_conv_against_autograd(attrs.evolve(op, unfold="none", tile=tile_columns), x_shape, seed)


@HYPOTHESIS
@given(conv_configs(every_side=True), st.sampled_from([0, 2**62]), st.integers(0, 2**31 - 1))
def test_conv2d_output_side_zeroes_whole_or_in_strips_alike(config, below, seed):
    """The output side's gathered gradient, zeroed whole before the taps are copied in
    or only where no tap writes, gives torch's numbers either way."""
    from unittest import mock

    op, x_shape = config
    with mock.patch.object(layout, "ZERO_WHOLE_BELOW", below):
        _check_conv_against_autograd(attrs.evolve(op, unfold="output"), x_shape, seed)


@HYPOTHESIS
@given(conv_configs(every_side=True), st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_conv2d_without_unfold_in_small_tiles_matches_autograd(config, tile_columns, seed):
    """The no-unfold side's tiles (whole samples of the padded grid, or row blocks of
    one sample) give the same numbers as torch whatever the tile size."""
    from unittest import mock

    op, x_shape = config
    with mock.patch.object(conv_kernels, "TAP_TILE_COLUMNS", tile_columns):
        _check_conv_against_autograd(attrs.evolve(op, unfold="none"), x_shape, seed)


@pytest.mark.parametrize(("n", "ho", "wo", "columns"), [(5, 3, 3, 20), (2, 7, 3, 7), (1, 1, 1, 4)])
def test_conv2d_tiles_cover_the_output_once(n, ho, wo, columns):
    tiles = layout.tiles(n, ho, wo, columns)
    covered = torch.zeros(n, ho, dtype=torch.int64)
    for n0, n1, r0, r1 in tiles:
        covered[n0:n1, r0:r1] += 1
    assert torch.equal(covered, torch.ones(n, ho, dtype=torch.int64))
