"""The kernel table: which kernel computes each computation of an op that has several.

``compiler/lower.py`` asks ``kernel_for`` for every computed node of a graph. An op not
listed in ``CHOOSERS`` runs its own methods (``OpKernel``). To add a way of computing a
conv: write its kernels in a module of this package, add a row to ``CONV2D_SIDES``, and
a rule to ``AUTO_SIDE`` if ``unfold: auto`` should ever pick it.

With ``codegen`` (the default, on a CPU with a C compiler), a conv that Winograd
F(4x4, 3x3) computes and that is wide enough (``WINOGRAD_MIN_CHANNELS``) runs by
Winograd, its transforms generated C (``winograd.py``), and leaky ReLU and max pooling
run as one generated loop each (``pointwise.py``); ``--no-codegen`` gives exactly the
tensor-op kernels.
"""

from __future__ import annotations

import functools

import attrs
import torch

from ..ops import Op
from ..ops.activations import LeakyRelu
from ..ops.conv2d import Conv2d
from ..ops.conv_transpose import ConvTranspose2d
from ..ops.upsample_conv import UpsampleConv2d
from ..codegen import compiler
from . import conv, conv_transpose, pointwise, upsample_conv, winograd
from .base import Kernel, OpKernel

#  unfold      forward                grad_weight                grad_x, where gy has no mirror conv
CONV2D_SIDES = {
    "input":  (conv.InputSideForward,  conv.InputSideGradWeight,  conv.Col2imGradX),
    "output": (conv.OutputSideForward, conv.OutputSideGradWeight, conv.OutputSideGradX),
    "none":   (conv.ShiftedForward,    conv.ShiftedGradWeight,    conv.Col2imGradX),
}
"""Each side's kernels. With stride 1, one group and the padding within the kernel's
reach and alike on both sides, the input and no-unfold sides compute grad_x as the
mirror conv's forward on the same side (``conv.mirrorable``). Only the input side runs
a strided or grouped conv."""

TAP_MIN_CHANNELS = 32
"""``auto`` skips the unfold where both channel counts reach this: each tap's GEMM
(C-long dot products, O outputs) is then still fast enough that saving the im2col copy
wins (docs/performance.md, "Why the tuning constants are what they are")."""

AUTO_SIDE = (  # unfold: auto takes the first side whose rule holds
    ("input", lambda c: c.stride != (1, 1) or c.groups != 1),
    ("none", lambda c: min(c.in_channels, c.out_channels) >= TAP_MIN_CHANNELS),
    ("output", lambda c: 2 * c.out_channels <= c.in_channels),  # the conv narrows
    ("input", lambda c: True),
)

WINOGRAD_MIN_CHANNELS = 16
"""``unfold: auto`` runs a 3x3 stride-1 conv by Winograd where both channel counts reach
this. With 32 or more, each of its kernels took 0.5-0.8x the time of the best GEMM
kernel; with 3 on one side, 1.1-1.6x: the 36 products are then too thin to pay for the
transforms (docs/performance.md, "Generated kernels"; ``tools/bench_convs``)."""

GPU_TILE = 2**30
"""A conv's tile on a GPU: more pixels than any batch holds, so one tile. The CPU tiles
(about a thousand pixels, sized for its cache) would turn one GEMM into hundreds of tiny
ones, each a launch that leaves the GPU mostly idle."""


def side(c: Conv2d) -> str:
    """The side a conv's GEMMs unfold: its hint, or ``AUTO_SIDE``'s choice."""
    return c.unfold if c.unfold != "auto" else next(s for s, holds in AUTO_SIDE if holds(c))


def _made(kernel_class, c: Conv2d, tile: int, **extra) -> Kernel:
    """A conv kernel for ``c``, given the tile where it runs in tiles (the output side
    does not: its one GEMM is over the whole batch)."""
    tiled = "tile" in attrs.fields_dict(kernel_class)
    return kernel_class(c, tile, **extra) if tiled else kernel_class(c, **extra)


def _tile(hint: int, on_gpu: bool) -> int:
    """Pixels per GEMM tile: the spec's hint on a CPU (0: the kernel's default)."""
    return GPU_TILE if on_gpu else hint


def by_winograd(c: Conv2d) -> bool:
    """Whether ``unfold: auto`` runs conv ``c`` by Winograd, where generated code runs."""
    return (c.unfold == "auto" and winograd.applies(c)
            and min(c.in_channels, c.out_channels) >= WINOGRAD_MIN_CHANNELS)


def conv2d_kernel(c: Conv2d, method: str, on_gpu: bool = False, codegen: bool = False) -> Kernel:
    """The kernel for ``method`` of conv ``c``: Winograd's where ``codegen`` allows and
    ``by_winograd`` holds, else its side's row of ``CONV2D_SIDES``."""
    if codegen and not on_gpu and by_winograd(c):
        return _winograd(c, method)
    return _conv2d(c, method, _tile(c.tile, on_gpu))


def _winograd(c: Conv2d, method: str) -> Kernel:
    winograd.build()  # here, while the plan is made: a compile error comes before any step
    if method == "forward":
        return winograd.WinogradForward(c)
    if method == "grad_weight":
        return winograd.WinogradGradWeight(c)
    if method == "grad_x":  # applies() keeps the padding within the mirror's reach
        return conv.MirrorGradX(c, winograd.WinogradForward(conv.mirror_of(c, "auto")))
    return _bias_grad(c, method)


def _conv2d(c: Conv2d, method: str, tile: int) -> Kernel:
    unfolds = side(c)
    forward, grad_weight, grad_x = CONV2D_SIDES[unfolds]
    if method == "forward":
        return _made(forward, c, tile)
    if method == "grad_weight":
        keep = {"keep_columns": c.keep_columns} if unfolds == "input" else {}
        return _made(grad_weight, c, tile, **keep)
    if method == "grad_x":
        if unfolds != "output" and conv.mirrorable(c):
            mirror = conv.mirror_of(c, unfolds)
            return conv.MirrorGradX(c, _made(forward, mirror, tile))
        return _made(grad_x, c, tile)
    return _bias_grad(c, method)


def _bias_grad(op: Op, method: str) -> Kernel:
    if method != "grad_bias":
        raise ValueError(f"{op.name} has no computation {method!r}")
    return conv.BiasGrad()


def conv_transpose_kernel(op: ConvTranspose2d, method: str, on_gpu: bool = False,
                          codegen: bool = False) -> Kernel:
    mirror = conv_transpose.mirror_of(op)
    on_the_frame = {"forward": (conv_transpose.TransposeForward, "grad_x"),
                    "grad_x": (conv_transpose.TransposeGradX, "forward"),
                    "grad_weight": (conv_transpose.TransposeGradWeight, "grad_weight")}
    if method not in on_the_frame:
        return _bias_grad(op, method)
    kernel_class, of_mirror = on_the_frame[method]
    return kernel_class(op, _conv2d(mirror, of_mirror, _tile(0, on_gpu)))


def upsample_conv_kernel(op: UpsampleConv2d, method: str, on_gpu: bool = False,
                         codegen: bool = False) -> Kernel:
    phase = upsample_conv.phase_conv(op.conv)
    if method == "grad_bias":
        return conv.BiasGrad()
    if method not in ("forward", "grad_x", "grad_weight"):
        return _bias_grad(op, method)
    if side(phase) == "output":  # the four phases' taps as one GEMM
        return {"forward": upsample_conv.AllPhasesForward, "grad_x": upsample_conv.AllPhasesGradX,
                "grad_weight": upsample_conv.AllPhasesGradWeight}[method](op.conv)
    kernel_class = {"forward": upsample_conv.PhaseForward, "grad_x": upsample_conv.PhaseGradX,
                    "grad_weight": upsample_conv.PhaseGradWeight}[method]
    return kernel_class(op.conv, _conv2d(phase, method, _tile(op.conv.tile, on_gpu)))


@attrs.frozen
class DoneByProducer(Kernel):
    """An elementwise op its producer's kernel already applied (an epilogue): nothing is
    left to compute; where the plan did not put the result over the input, a copy."""

    def prepare(self, result, ws, /, x):
        if result.data_ptr() == x.data_ptr() and result.stride() == x.stride():
            return lambda: None
        return functools.partial(result.copy_, x)

    def describe(self) -> str:
        return "done by its producer"


def epilogue(producer: Kernel, consumer: Op) -> tuple[Kernel, Kernel] | None:
    """The producer's kernel with ``consumer`` applied as it writes its result, and the
    consumer's kernel then, where such a pair exists: a Winograd conv with generated
    transforms followed by a leaky ReLU. None elsewhere."""
    if (isinstance(producer, winograd.WinogradForward) and producer.generated
            and producer.slope is None and isinstance(consumer, LeakyRelu)):
        return attrs.evolve(producer, slope=float(consumer.negative_slope)), DoneByProducer()
    return None


def generated_or_own(op: Op, method: str, on_gpu: bool = False, codegen: bool = False) -> Kernel:
    """The generated one-pass kernel of a memory-bound op where codegen runs, else the
    op's own method (``pointwise.py``)."""
    if codegen and not on_gpu and pointwise.generates(op):
        pointwise.build(op)  # here, while the plan is made: a compile error comes before any step
        return pointwise.GENERATED[type(op)](op, method)
    return OpKernel(op, method)


CHOOSERS = {Conv2d: conv2d_kernel, ConvTranspose2d: conv_transpose_kernel,
            UpsampleConv2d: upsample_conv_kernel,
            **{op: generated_or_own for op in pointwise.GENERATED}}


def kernel_for(op: Op, method: str, device: torch.device | str = "cpu",
               codegen: bool = True) -> Kernel:
    """The kernel computing ``method`` ('forward', 'grad_x', ...) of ``op`` on ``device``;
    generated kernels only with ``codegen`` and where ``codegen_runs`` on the device."""
    choose = CHOOSERS.get(type(op))
    if choose is None:
        return OpKernel(op, method)
    device = torch.device(device)
    return choose(op, method, device.type != "cpu", codegen and codegen_runs(device))


def codegen_runs(device: torch.device | str) -> bool:
    """Whether generated kernels run on ``device``: a CPU, with a C compiler found."""
    return torch.device(device).type == "cpu" and compiler() is not None
