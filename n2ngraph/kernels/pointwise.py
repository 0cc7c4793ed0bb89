"""Generated one-pass kernels for leaky ReLU, max pooling and nearest upsampling
(``codegen/pointwise.py``).

The ops' own kernels (``ops/activations.py``, ``ops/pool.py``, ``ops/upsample.py``) are
tensor-op passes: leaky ReLU's forward a product and a maximum, its backward three ops;
max pooling k*k strided passes forward and several per tap backward; upsampling a
strided copy per phase. Here each is one C loop with no scratch tensor. Leaky ReLU and
max pooling give torch's results bit for bit (tested; the ops' own kernels too, except
that their pool gradient sums overlapping windows tap by tap, not window by window as
torch does, and their leaky ReLU gradient for a slope over 1 at NaN); upsampling gives
its op's own bits. The table picks them on a CPU with codegen; the ops' own kernels are
the fallback.
"""

from __future__ import annotations

import functools

import attrs
import torch

from ..codegen import library
from ..codegen.build import ELEMENT_TYPES, INDEX, POINTER, SCALAR, THREADS, functions
from ..codegen import pointwise as source
from ..ops.activations import LeakyRelu
from ..ops.pool import MaxPool2d
from ..ops.upsample import UpsampleNearest
from .base import Kernel

def build(op) -> None:
    """Builds (or loads from the disk cache) the generated kernels of ``op``, or raises
    ``CodegenError`` saying why not."""
    _functions(*_window(op))


def _window(op) -> tuple:
    """What a library is generated for: a max pool's kernel, stride and padding, an
    upsampling's scale; none for leaky ReLU, whose slope is an argument."""
    if isinstance(op, MaxPool2d):
        return ("maxpool", op.kernel, op.stride, op.padding)
    return ("upsample", op.scale) if isinstance(op, UpsampleNearest) else ()


@functools.cache
def _functions(*window):
    if window and window[0] == "maxpool":
        lib = library("maxpool-k{}s{}p{}".format(*window[1:]), source.pool_source(*window[1:]))
        return functions(lib, {"maxpool_forward": [POINTER] * 2 + [INDEX] * 5 + [THREADS],
                               "maxpool_backward": [POINTER] * 4 + [INDEX] * 5 + [THREADS]})
    if window:
        lib = library(f"upsample-s{window[1]}", source.upsample_source(window[1]))
        return functions(lib, {"upsample_forward": [POINTER] * 2 + [INDEX] * 2 + [THREADS],
                               "upsample_backward": [POINTER] * 2 + [INDEX] * 2 + [THREADS]})
    lib = library("pointwise", source.source())
    return functions(lib, {"leaky_forward": [POINTER] * 2 + [INDEX, SCALAR, THREADS],
                           "leaky_backward": [POINTER] * 3 + [INDEX, SCALAR, THREADS]})


def _bound(name: str, op, *tensors: torch.Tensor):
    """The generated function ``name`` of ``op`` for these tensors' dtype, after checking
    that they are what it reads: contiguous CPU float32 or float64 (the executor's are)."""
    dtype = tensors[0].dtype
    if dtype not in ELEMENT_TYPES or any(t.device.type != "cpu" or not t.is_contiguous() or t.dtype != dtype
                                    for t in tensors):
        raise ValueError(f"the generated {name} runs on contiguous CPU float32 or float64 tensors")
    return _functions(*_window(op))[name, dtype]


def _call(fn, *args):
    return lambda: fn(*args, torch.get_num_threads())


@attrs.frozen
class GeneratedLeakyRelu(Kernel):
    op: LeakyRelu
    method: str  # forward or grad_x

    def prepare(self, result, ws, /, **tensors):
        slope = float(self.op.negative_slope)
        if self.method == "forward":
            x = tensors["x"]
            return _call(_bound("leaky_forward", self.op, x, result), x.data_ptr(), result.data_ptr(),
                         result.numel(), slope)
        gout, out = tensors["gout"], tensors["out"]
        return _call(_bound("leaky_backward", self.op, gout, out, result), gout.data_ptr(), out.data_ptr(),
                     result.data_ptr(), result.numel(), slope)


@attrs.frozen
class GeneratedMaxPool(Kernel):
    op: MaxPool2d
    method: str  # forward or grad_x

    def prepare(self, result, ws, /, **tensors):
        x = tensors["x"]
        n, c, h, w = x.shape
        if self.method == "forward":
            ho, wo = result.shape[2:]
            return _call(_bound("maxpool_forward", self.op, x, result), x.data_ptr(), result.data_ptr(),
                         n * c, h, w, ho, wo)
        gout, out = tensors["gout"], tensors["out"]
        ho, wo = out.shape[2:]
        fn = _bound("maxpool_backward", self.op, gout, x, out, result)
        return _call(fn, gout.data_ptr(), x.data_ptr(), out.data_ptr(), result.data_ptr(),
                     n * c, h, w, ho, wo)


@attrs.frozen
class GeneratedUpsample(Kernel):
    op: UpsampleNearest
    method: str  # forward or grad_x

    def prepare(self, result, ws, /, **tensors):
        if self.method == "forward":
            x = tensors["x"]
            n, c, h, w = x.shape
            return _call(_bound("upsample_forward", self.op, x, result), x.data_ptr(), result.data_ptr(),
                         n * c * h, w)
        gout = tensors["gout"]
        n, c, h, w = result.shape
        return _call(_bound("upsample_backward", self.op, gout, result), gout.data_ptr(),
                     result.data_ptr(), n * c * h, w)


GENERATED = {LeakyRelu: GeneratedLeakyRelu, MaxPool2d: GeneratedMaxPool, UpsampleNearest: GeneratedUpsample}
"""The ops with a generated kernel, for every computation they have."""


def generates(op) -> bool:
    """Whether ``op`` has a generated kernel (upsampling by 1 is a copy: it has not)."""
    return type(op) in GENERATED and not (isinstance(op, UpsampleNearest) and op.scale < 2)
