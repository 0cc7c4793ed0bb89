"""The generated one-pass leaky ReLU and max-pool kernels give torch's results bit for
bit (NaN, signed zeros and ties included), and the table runs them only with codegen."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from n2ngraph.codegen import build
from n2ngraph.kernels import OpKernel, kernel_for, pointwise
from n2ngraph.ops.activations import LeakyRelu
from n2ngraph.ops.pool import MaxPool2d

F = torch.nn.functional
pytestmark = pytest.mark.skipif(build.compiler() is None, reason="no C compiler on this machine")
DTYPES = [torch.float32, torch.float64]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int64)


def _input(shape, seed, dtype, specials: bool) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=dtype).round(decimals=1)  # rounding makes ties
    if specials and x.numel() > 3:
        flat = x.view(-1)
        flat[0], flat[1], flat[2] = float("nan"), -0.0, 0.0
    return x


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=4), seed=st.integers(0, 2**31 - 1),
       slope=st.sampled_from([0.0, 0.01, 0.1, 1.0, 2.5]))
def test_leaky_relu_is_torchs_bit_for_bit(dtype, shape, seed, slope):
    x = _input(shape, seed, dtype, specials=True)
    op = LeakyRelu(negative_slope=slope)
    y, gx = torch.empty_like(x), torch.empty_like(x)
    pointwise.GeneratedLeakyRelu(op, "forward").run(y, {}, x=x)
    reference = x.clone().requires_grad_()
    want = F.leaky_relu(reference, slope)
    gout = _input(shape, seed + 1, dtype, specials=False)
    want.backward(gout)
    pointwise.GeneratedLeakyRelu(op, "grad_x").run(gx, {}, gout=gout, out=y)
    assert torch.equal(_bits(y), _bits(want.detach()))
    assert torch.equal(_bits(gx), _bits(reference.grad))


def test_leaky_relu_runs_in_place():
    x = torch.randn(3, 70000)
    want = F.leaky_relu(x, 0.1)
    op = LeakyRelu(negative_slope=0.1)
    pointwise.GeneratedLeakyRelu(op, "forward").run(x, {}, x=x)  # the plan's in-place case
    assert torch.equal(x, want)


@st.composite
def pools(draw):
    kernel = draw(st.integers(1, 4))
    stride = draw(st.integers(1, 4))
    padding = draw(st.integers(0, kernel // 2))
    h, w = (draw(st.integers(max(1, kernel - 2 * padding), 12)) for _ in range(2))
    return MaxPool2d(kernel=kernel, stride=stride, padding=padding), (draw(st.integers(1, 3)),
                                                                      draw(st.integers(1, 5)), h, w)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(max_examples=40, deadline=None)
@given(case=pools(), seed=st.integers(0, 2**31 - 1), specials=st.booleans())
def test_max_pool_is_torchs_bit_for_bit(dtype, case, seed, specials):
    """Overlapping windows, padding, ties (each window's gradient to its first maximum in
    row-major order) and, forward, NaN and signed zeros."""
    op, shape = case
    x = _input(shape, seed, dtype, specials)
    out_shape = op.infer(x.shape)
    y = torch.empty(out_shape, dtype=dtype)
    pointwise.GeneratedMaxPool(op, "forward").run(y, {}, x=x)
    want = F.max_pool2d(x, op.kernel, op.stride, op.padding)
    assert torch.equal(_bits(y), _bits(want))
    if specials:
        return  # a NaN window's gradient goes nowhere here (ops/pool.py says why)
    reference = x.clone().requires_grad_()
    gout = _input(out_shape, seed + 1, dtype, specials=False)
    F.max_pool2d(reference, op.kernel, op.stride, op.padding).backward(gout)
    gx = torch.empty_like(x)
    pointwise.GeneratedMaxPool(op, "grad_x").run(gx, {}, gout=gout, x=x, out=y)
    assert torch.equal(_bits(gx), _bits(reference.grad))


def test_the_table_runs_them_only_with_codegen_on_a_cpu():
    from n2ngraph.ops.upsample import UpsampleNearest

    for op in (LeakyRelu(negative_slope=0.1), MaxPool2d(kernel=2), UpsampleNearest(scale=2)):
        for method in ("forward", "grad_x"):
            assert isinstance(kernel_for(op, method), tuple(pointwise.GENERATED.values()))
            assert isinstance(kernel_for(op, method, codegen=False), OpKernel)
            assert isinstance(kernel_for(op, method, "meta"), OpKernel)


def test_a_strided_tensor_is_refused_not_misread():
    x = torch.randn(4, 6).t()
    with pytest.raises(ValueError, match="contiguous"):
        pointwise.GeneratedLeakyRelu(LeakyRelu(), "forward").run(torch.empty(6, 4), {}, x=x)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale", [2, 3])
def test_upsampling_gives_the_ops_own_bits(dtype, scale):
    """Forward: the pixels repeated; backward: each block's rows summed, then its
    columns, as ops/upsample.py sums them, so codegen and --no-codegen agree bit for bit
    (and both match torch's gradient to rounding)."""
    from n2ngraph.ops.upsample import UpsampleNearest

    op = UpsampleNearest(scale=scale)
    x = _input((2, 3, 5, 7), 0, dtype, specials=False)
    out_shape = op.infer(x.shape)
    y, want = torch.empty(out_shape, dtype=dtype), torch.empty(out_shape, dtype=dtype)
    pointwise.GeneratedUpsample(op, "forward").run(y, {}, x=x)
    OpKernel(op, "forward").run(want, {}, x=x)
    assert torch.equal(y, want) and torch.equal(y, F.interpolate(x, scale_factor=scale, mode="nearest"))
    gout = torch.randn(out_shape, dtype=dtype)
    gx, gx_own = torch.empty_like(x), torch.empty_like(x)
    pointwise.GeneratedUpsample(op, "grad_x").run(gx, {}, gout=gout)
    shapes = {"x": x.shape, "out": out_shape}
    ws = {name: torch.empty(shape, dtype=dtype) for name, shape in op.workspace("grad_x", shapes).items()}
    OpKernel(op, "grad_x").run(gx_own, ws, gout=gout)
    assert torch.equal(gx, gx_own)
    reference = x.clone().requires_grad_()
    F.interpolate(reference, scale_factor=scale, mode="nearest").backward(gout)
    torch.testing.assert_close(gx, reference.grad)
    assert not pointwise.generates(UpsampleNearest(scale=1))
