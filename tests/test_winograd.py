"""Winograd F(4x4, 3x3) convolution: forward, input and weight gradients against
float64 direct convolutions (torch's, with autograd), through the generated C
transforms and through their tensor-op fallback; where the kernel table chooses it."""

from __future__ import annotations

import pytest
import torch
from helpers import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

import n2ngraph as ng
from n2ngraph.codegen import build
from n2ngraph.kernels import conv, table, winograd
from n2ngraph.kernels.table import kernel_for
from n2ngraph.ops.conv2d import Conv2d

F = torch.nn.functional
GENERATED = [False] + ([True] if build.compiler() is not None else [])


def _workspace(kernel, shapes, dtype):
    return {name: torch.empty(shape, dtype=dtype) for name, shape in kernel.workspace(shapes).items()}


def _three(conv_op: Conv2d, generated: bool, x, weight, bias, gout):
    """y, gW and gx by the Winograd kernels, in the dtype of the arguments."""
    shapes = {"x": x.shape, "out": gout.shape}
    forward = winograd.WinogradForward(conv_op, generated)
    grad_weight = winograd.WinogradGradWeight(conv_op, generated)
    grad_x = conv.MirrorGradX(conv_op, winograd.WinogradForward(conv.mirror_of(conv_op, "auto"), generated))
    y, gw, gx = torch.empty_like(gout), torch.empty_like(weight), torch.empty_like(x)
    forward.run(y, _workspace(forward, shapes, x.dtype), x=x, weight=weight, bias=bias)
    grad_weight.run(gw, _workspace(grad_weight, shapes, x.dtype), gout=gout, x=x)
    grad_x.run(gx, _workspace(grad_x, shapes, x.dtype), gout=gout, weight=weight)
    return y, gw, gx


def _oracle(x, weight, bias, gout, padding):
    x, weight = x.double().requires_grad_(), weight.double().requires_grad_()
    y = F.conv2d(x, weight, None if bias is None else bias.double(), padding=padding)
    y.backward(gout.double())
    return y.detach(), weight.grad, x.grad


def _case(n, c, o, h, w, padding, seed, dtype=torch.float64, with_bias=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, dtype=dtype)
    weight = torch.randn(o, c, 3, 3, generator=gen, dtype=dtype)
    bias = torch.randn(o, generator=gen, dtype=dtype) if with_bias else None
    ph, pw = padding if isinstance(padding, tuple) else (padding, padding)
    ho, wo = h + 2 * ph - 2, w + 2 * pw - 2
    gout = torch.randn(n, o, ho, wo, generator=gen, dtype=dtype)
    return x, weight, bias, gout


@st.composite
def shapes(draw):
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))  # (rows, columns)
    h, w = (draw(st.integers(max(1, 3 - 2 * p), 14)) for p in padding)
    return (draw(st.integers(1, 3)), draw(st.integers(1, 7)), draw(st.integers(1, 7)), h, w, padding)


@pytest.mark.parametrize("generated", GENERATED, ids=["tensor-ops", "generated"][:len(GENERATED)])
@settings(max_examples=40, deadline=None)
@given(shape=shapes(), seed=st.integers(0, 2**31 - 1), with_bias=st.booleans())
def test_winograd_matches_direct_convolution_in_float64(generated, shape, seed, with_bias):
    """Odd sizes (tiles cut by the output's edge), 1-7 channels (none a multiple of a
    vector width), every padding the mirror conv can take, rows and columns apart, with
    and without bias."""
    n, c, o, h, w, padding = shape
    x, weight, bias, gout = _case(*shape, seed, with_bias=with_bias)
    got = _three(Conv2d(c, o, 3, padding=padding, bias=with_bias), generated, x, weight, bias, gout)
    for mine, want in zip(got, _oracle(x, weight, bias, gout, padding)):
        torch.testing.assert_close(mine, want, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("generated", GENERATED, ids=["tensor-ops", "generated"][:len(GENERATED)])
def test_float32_error_against_float64_is_a_few_ulps_of_the_scale(generated, one_thread):
    """The transforms multiply by up to 8 and 1/24: in float32 the result departs from
    the float64 direct conv by a few 1e-6 of its largest value (measured 1-4e-6), the
    bound docs/performance.md states; the weight gradient sums over every tile."""
    x, weight, bias, gout = _case(2, 64, 64, 30, 29, 1, seed=3, dtype=torch.float32)
    got = _three(Conv2d(64, 64, 3, padding=1), generated, x, weight, bias, gout)
    for mine, want in zip(got, _oracle(x, weight, bias, gout, 1)):
        assert ((mine.double() - want).abs().max() / want.abs().max()).item() < 1e-5


@pytest.mark.skipif(build.compiler() is None, reason="no C compiler on this machine")
def test_generated_transforms_read_any_strided_view(one_thread):
    """A channels-last input, and one sliced out of a larger tensor: the generated loops
    read through the strides they are given."""
    x, weight, bias, gout = _case(2, 5, 4, 9, 11, 1, seed=1)
    base = torch.randn(2, 8, 12, 13, dtype=torch.float64)
    base[:, 2:7, 1:10, 1:12] = x
    views = [x.to(memory_format=torch.channels_last), base[:, 2:7, 1:10, 1:12]]
    want = _three(Conv2d(5, 4, 3, padding=1), True, x, weight, bias, gout)
    for view in views:
        assert not view.is_contiguous()
        got = _three(Conv2d(5, 4, 3, padding=1), True, view, weight, bias,
                     gout.to(memory_format=torch.channels_last))
        for mine, reference in zip(got, want):
            torch.testing.assert_close(mine, reference, rtol=1e-13, atol=1e-13)


def test_padding_same_is_winograd_too():
    """A 3x3 ``padding: same`` conv pads one zero each side: the same conv as padding 1."""
    x, weight, bias, gout = _case(2, 3, 4, 7, 6, 1, seed=4)
    got = _three(Conv2d(3, 4, 3, padding="same"), True in GENERATED, x, weight, bias, gout)
    for mine, want in zip(got, _oracle(x, weight, bias, gout, 1)):
        torch.testing.assert_close(mine, want, rtol=1e-11, atol=1e-11)
    assert winograd.applies(Conv2d(32, 32, 3, padding="same"))


def test_the_table_chooses_winograd_for_wide_3x3_stride_1_convs_only(monkeypatch):
    monkeypatch.setattr(table, "compiler", build.compiler)
    wide = Conv2d(32, 32, 3, padding=1)
    chosen = kernel_for(wide, "forward")
    others = [Conv2d(32, 32, 3, padding=1, stride=2), Conv2d(32, 32, 3, padding=1, dilation=2),
              Conv2d(3, 32, 3, padding=1), Conv2d(32, 3, 3, padding=1), Conv2d(32, 32, 5, padding=2),
              Conv2d(32, 32, 3, padding=1, unfold="none"), Conv2d(32, 32, 3, padding=1, groups=2),
              Conv2d(32, 32, (3, 1), padding=1), Conv2d(32, 32, 3, padding=3)]
    if build.compiler() is None:
        assert not isinstance(chosen, winograd.WinogradForward)
        return
    assert isinstance(chosen, winograd.WinogradForward)
    assert isinstance(kernel_for(wide, "grad_weight"), winograd.WinogradGradWeight)
    assert isinstance(kernel_for(wide, "grad_x").forward, winograd.WinogradForward)
    assert not isinstance(kernel_for(wide, "forward", codegen=False), winograd.WinogradForward)
    assert not isinstance(kernel_for(wide, "forward", "meta"), winograd.WinogradForward)
    for other in others:
        assert not isinstance(kernel_for(other, "forward"), winograd.WinogradForward), other


@pytest.mark.skipif(build.compiler() is None, reason="no C compiler on this machine")
def test_the_unet_trains_alike_with_and_without_generated_kernels(one_thread):
    """Every 3x3 conv of the U-Net but the first and last runs by Winograd with codegen:
    in float64 the losses, gradients and parameters follow the GEMM kernels' to 1e-10."""
    spec = ng.load_spec(ROOT / "specs" / "unet.yaml")
    shape = (2, 3, 24, 40)
    programs = [ng.compile(spec, shape, dtype=torch.float64, seed=1, codegen=on) for on in (True, False)]
    graph = programs[0].compiled("train", programs[0].input_shapes(shape)).graph
    assert sum(isinstance(node.impl, winograd.WinogradForward) for node in graph.nodes.values()) == 10
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        x, t = (torch.rand(shape, generator=gen, dtype=torch.float64) for _ in range(2))
        losses = [p.train_step(x, t) for p in programs]
        assert losses[0] == pytest.approx(losses[1], rel=1e-12)
        for key, grad in programs[1].grads.items():
            torch.testing.assert_close(programs[0].grads[key], grad, rtol=1e-10, atol=1e-12)
    photo = torch.rand(1, 3, 37, 29, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(programs[0].forward(photo), programs[1].forward(photo), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("generated", GENERATED, ids=["tensor-ops", "generated"][:len(GENERATED)])
def test_rows_wider_than_a_block_of_tiles(generated, one_thread):
    """A row of more tiles than the generated loops take at once (codegen/winograd.BLOCK),
    cut at an odd place, with padding on the left: the blocks join up exactly."""
    from n2ngraph.codegen.winograd import BLOCK

    width = 4 * BLOCK + 4 * 3 + 1
    x, weight, bias, gout = _case(1, 2, 3, 5, width, (1, 2), seed=7)
    got = _three(Conv2d(2, 3, 3, padding=(1, 2)), generated, x, weight, bias, gout)
    for mine, want in zip(got, _oracle(x, weight, bias, gout, (1, 2))):
        torch.testing.assert_close(mine, want, rtol=1e-11, atol=1e-11)


@pytest.mark.skipif(build.compiler() is None, reason="no C compiler on this machine")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_the_leaky_relu_epilogue_gives_the_same_bits(dtype, monkeypatch, one_thread):
    """A leaky ReLU that alone reads a Winograd conv is applied by the conv's output
    transform (compiler/lower.fuse_epilogues): the U-Net's losses, gradients and
    inference are the same bits as with the ReLU run on its own."""
    from n2ngraph.compiler import lower

    spec = ng.load_spec(ROOT / "specs" / "unet.yaml")
    shape = (2, 3, 20, 28)
    fused = ng.compile(spec, shape, dtype=dtype, seed=1)
    graph = fused.compiled("train", fused.input_shapes(shape)).graph
    assert sum(node.impl is not None and node.impl.describe() == "WinogradForward + leaky_relu"
               for node in graph.nodes.values()) == 10
    monkeypatch.setattr(lower, "fuse_epilogues", lambda g: g)
    apart = ng.compile(spec, shape, dtype=dtype, seed=1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        x, t = (torch.rand(shape, generator=gen, dtype=dtype) for _ in range(2))
        assert fused.train_step(x, t) == apart.train_step(x, t)
        for key, grad in apart.grads.items():
            assert torch.equal(fused.grads[key], grad), key
    photo = torch.rand(1, 3, 33, 41, generator=gen, dtype=dtype)
    assert torch.equal(fused.forward(photo), apart.forward(photo))


def test_epilogues_fuse_only_a_winograd_conv_and_the_leaky_relu_alone_reading_it():
    from n2ngraph.kernels import table
    from n2ngraph.ops.activations import LeakyRelu, Relu

    conv_op = Conv2d(32, 32, 3, padding=1)
    wide = winograd.WinogradForward(conv_op)
    fused, done = table.epilogue(wide, LeakyRelu(negative_slope=0.2))
    assert fused.slope == 0.2 and isinstance(done, table.DoneByProducer)
    assert table.epilogue(wide, Relu()) is None
    assert table.epilogue(winograd.WinogradForward(conv_op, generated=False), LeakyRelu()) is None
    assert table.epilogue(fused, LeakyRelu()) is None  # one epilogue
    assert table.epilogue(kernel_for(conv_op, "forward", codegen=False), LeakyRelu()) is None
    x = torch.randn(3, 4)
    apart = torch.empty(3, 4)
    done.run(apart, {}, x=x)  # not in place: a copy
    assert torch.equal(apart, x)
