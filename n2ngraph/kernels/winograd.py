"""conv2d by Winograd F(4x4, 3x3): 3x3 stride-1 convs with 4x fewer multiplies.

    forward      U = G g G^T (36, O, C);  V = B^T d B (36, C, tiles);  M = U @ V (36 bmm);
                 y = A^T M A + bias, cropped to the output
    grad weight  Gy = A gy A^T (36, O, tiles);  dU = Gy @ V^T;  gW = G^T dU G
    grad input   the mirror conv's forward (kernel flipped and transposed), by Winograd too

The products are torch GEMMs; the data transforms are the generated C loops of
``codegen/winograd.py`` (one pass each), or, where no C compiler is found, on another
device, or for another dtype, the same transforms as tensor ops (``TensorTransforms``:
a few passes each, same results to float rounding). Both are tested against float64
direct convolutions. The transforms trade exactness for speed: in float32 the result
differs from a direct conv by about 1e-6 of its scale (docs/performance.md).
"""

from __future__ import annotations

import ctypes
import functools
import math

import attrs
import torch

from ..codegen import library
from ..codegen.build import ELEMENT_TYPES, INDEX, POINTER, SCALAR, THREADS, functions
from ..codegen import winograd as wg
from ..ops.activations import LeakyRelu
from ..ops.base import constant, in_order
from ..ops.conv2d import Conv2d
from . import conv
from .base import Kernel

POINTS = wg.IN * wg.IN  # 36 products per tile


def applies(c: Conv2d) -> bool:
    """Whether F(4x4, 3x3) computes ``c``: a 3x3 kernel, stride 1, no dilation, one
    group, and padding the mirror conv takes (alike on both sides, at most 2), so that
    the input gradient is one too."""
    return (c.kernel == (wg.TAPS, wg.TAPS) and c.stride == (1, 1) and c.dilation == (1, 1)
            and conv.mirrorable(c))


def _pads(c: Conv2d) -> tuple[int, int]:
    top, _, left, _ = c.pads()
    return top, left


def tiles(out_shape) -> tuple[int, int]:
    """Rows and columns of 4x4 output tiles covering the output."""
    return math.ceil(out_shape[2] / wg.OUT), math.ceil(out_shape[3] / wg.OUT)


def _kron(left, right, dtype, device) -> torch.Tensor:
    as_tensor = lambda m: torch.tensor([[float(v) for v in row] for row in m], dtype=torch.float64)
    return torch.kron(as_tensor(left), as_tensor(right)).to(device=device, dtype=dtype)


def _matrix(name: str, left, right, like: torch.Tensor) -> torch.Tensor:
    """kron(left, right) as a constant of ``like``'s dtype and device: a 2-D transform
    of every tile as one GEMM, its rows the outputs, its columns the inputs."""
    return constant(f"winograd {name}", lambda: _kron(left, right, torch.float64, "cpu"),
                    device=like.device, dtype=like.dtype)


# ---- the data transforms: generated C, or tensor ops -------------------------------

def build() -> None:
    """Builds (or loads from the disk cache) the generated transforms, or raises
    ``CodegenError`` saying why not."""
    _generated()


@functools.cache
def _generated():
    """The three transforms' C functions, built once per machine (cached on disk)."""
    return functions(library("winograd", wg.source()), {
        "wino_input": [POINTER, POINTER] + [INDEX] * 12 + [THREADS],
        "wino_output": [POINTER, POINTER, POINTER] + [INDEX] * 10 + [ctypes.c_int, SCALAR, THREADS],
        "wino_grad_output": [POINTER, POINTER] + [INDEX] * 10 + [THREADS]})


def generated_for(tensor: torch.Tensor) -> bool:
    """Whether the generated transforms can run on ``tensor``: CPU, float32 or float64."""
    return tensor.device.type == "cpu" and tensor.dtype in ELEMENT_TYPES


class GeneratedTransforms:
    """The transforms as calls into the generated library, bound to data pointers."""

    @staticmethod
    def workspace(role: str, shape, out_shape) -> dict:
        return {}

    @staticmethod
    def input(x, v, pads, tile_grid, ws):
        fn = _generated()["wino_input", x.dtype]
        args = (x.data_ptr(), v.data_ptr(), *x.shape, *x.stride(), *pads, *tile_grid)
        return [lambda: fn(*args, torch.get_num_threads())]

    @staticmethod
    def output(m, y, bias, tile_grid, ws, slope=None):
        fn = _generated()["wino_output", y.dtype]
        args = (m.data_ptr(), y.data_ptr(), None if bias is None else bias.data_ptr(),
                *y.shape, *y.stride(), *tile_grid, slope is not None, slope or 0.0)
        return [lambda: fn(*args, torch.get_num_threads())]

    @staticmethod
    def grad_output(gy, g, tile_grid, ws):
        fn = _generated()["wino_grad_output", gy.dtype]
        args = (gy.data_ptr(), g.data_ptr(), *gy.shape, *gy.stride(), *tile_grid)
        return [lambda: fn(*args, torch.get_num_threads())]


class TensorTransforms:
    """The same transforms as tensor ops: tiles gathered by strided copies into padded
    workspaces, each 2-D transform one GEMM with a Kronecker product of the matrices."""

    @staticmethod
    def workspace(role: str, shape, out_shape) -> dict:
        n, c = shape[:2]
        th, tw = tiles(out_shape)
        if role == "input":
            return {"wpad": (n, c, wg.OUT * th + 2, wg.OUT * tw + 2), "wtiles": (POINTS, c * n * th * tw)}
        scaled = {"scaled": tuple(out_shape)} if role == "output" else {}  # for an epilogue
        return {"wpad": (n, c, wg.OUT * th, wg.OUT * tw), "wtiles": (wg.OUT ** 2, c * n * th * tw), **scaled}

    @staticmethod
    def input(x, v, pads, tile_grid, ws):
        (n, c, h, w), (th, tw), (top, left) = x.shape, tile_grid, pads
        pad, gathered = ws["wpad"], ws["wtiles"]
        sn, sc, sh, sw = pad.stride()
        windows = pad.as_strided((wg.IN, wg.IN, c, n, th, tw),
                                 (sh, sw, sc, sn, wg.OUT * sh, wg.OUT * sw))
        inside = pad[:, :, top:top + h, left:left + w]
        return [pad.zero_, functools.partial(inside.copy_, x),
                functools.partial(gathered.view(windows.shape).copy_, windows),
                functools.partial(torch.mm, _matrix("BT x BT", wg.BT, wg.BT, x), gathered,
                                  out=v.view(POINTS, -1))]

    @staticmethod
    def output(m, y, bias, tile_grid, ws, slope=None):
        (n, o, ho, wo), (th, tw) = y.shape, tile_grid
        pad, small = ws["wpad"], ws["wtiles"]
        blocks = small.view(wg.OUT, wg.OUT, o, n, th, tw).permute(3, 2, 4, 0, 5, 1)
        calls = [functools.partial(torch.mm, _matrix("AT x AT", wg.AT, wg.AT, y), m.view(POINTS, -1),
                                   out=small),
                 functools.partial(pad.view(n, o, th, wg.OUT, tw, wg.OUT).copy_, blocks),
                 functools.partial(y.copy_, pad[:, :, :ho, :wo])]
        if bias is not None:
            calls.append(functools.partial(y.add_, bias.view(1, -1, 1, 1)))
        if slope is not None:  # the leaky ReLU's own kernel, over y in place
            calls.append(LeakyRelu(negative_slope=slope).prepare("forward", y, {"scaled": ws["scaled"]}, x=y))
        return calls

    @staticmethod
    def grad_output(gy, g, tile_grid, ws):
        (n, o, ho, wo), (th, tw) = gy.shape, tile_grid
        pad, small = ws["wpad"], ws["wtiles"]
        blocks = pad.view(n, o, th, wg.OUT, tw, wg.OUT).permute(3, 5, 1, 0, 2, 4)
        a = wg.transpose(wg.AT)
        return [pad.zero_, functools.partial(pad[:, :, :ho, :wo].copy_, gy),
                functools.partial(small.view(blocks.shape).copy_, blocks),
                functools.partial(torch.mm, _matrix("A x A", a, a, gy), small, out=g.view(POINTS, -1))]


def _transforms(generated: bool, tensor: torch.Tensor):
    """The generated transforms, or the tensor-op ones; a plan chooses generated ones only
    for CPU tensors of float32 or float64 (``table.py``), so anything else is a bug."""
    if not generated:
        return TensorTransforms
    if not generated_for(tensor):
        raise ValueError(f"the generated Winograd transforms run on CPU float32 and float64, "
                         f"not {tensor.dtype} on {tensor.device}")
    return GeneratedTransforms


# ---- the kernels ------------------------------------------------------------------

@attrs.frozen
class WinogradForward(Kernel):
    """y = conv(x, weight) + bias. ``generated``: the C transforms where they can run.
    ``slope``: the leaky ReLU that reads y applied in the output transform too
    (``table.epilogues``), so that its own pass has nothing left to do."""

    conv: Conv2d
    generated: bool = True
    slope: float | None = None

    def describe(self) -> str:
        return "WinogradForward" + ("" if self.slope is None else " + leaky_relu")

    def workspace(self, shapes):
        c, o, t = _sizes(self.conv, shapes)
        own = {"U": (POINTS, o, c), "V": (POINTS, c, t), "M": (POINTS, o, t)}
        found = _with_fallback(self.generated, own, shapes, "output")
        return found if self.slope is not None else {k: v for k, v in found.items() if k != "out_scaled"}

    def prepare(self, out, ws, /, x, weight, bias=None):
        o, c = self.conv.out_channels, self.conv.in_channels
        u, v, m = ws["U"], ws["V"], ws["M"]
        grid, pads = tiles(out.shape), _pads(self.conv)
        transforms = _transforms(self.generated, x)
        return in_order(
            functools.partial(torch.mm, _matrix("G x G", wg.G, wg.G, weight),
                              weight.view(o * c, wg.TAPS ** 2).t(), out=u.view(POINTS, o * c)),
            *transforms.input(x, v, pads, grid, _unprefixed("in_", ws)),
            functools.partial(torch.bmm, u, v, out=m),
            *transforms.output(m, out, bias, grid, _unprefixed("out_", ws), self.slope))


@attrs.frozen
class WinogradGradWeight(Kernel):
    """gW = G^T (sum over tiles of (A gy A^T) * (B^T x B)) G, the sum one bmm. The input's
    transform V is made again here rather than kept from the forward: kept, it would
    hold 2.25x each wide conv's input from forward to backward (about 150 MiB more for
    the U-Net at batch 16), to save one memory-bound pass."""

    conv: Conv2d
    generated: bool = True

    def workspace(self, shapes):
        c, o, t = _sizes(self.conv, shapes)
        own = {"V": (POINTS, c, t), "Gy": (POINTS, o, t), "dU": (POINTS, o, c)}
        return _with_fallback(self.generated, own, shapes, "grad_output")

    def prepare(self, grad, ws, /, gout, x):
        o, c = self.conv.out_channels, self.conv.in_channels
        v, g, du = ws["V"], ws["Gy"], ws["dU"]
        grid, pads = tiles(gout.shape), _pads(self.conv)
        transforms = _transforms(self.generated, x)
        return in_order(
            *transforms.input(x, v, pads, grid, _unprefixed("in_", ws)),
            *transforms.grad_output(gout, g, grid, _unprefixed("gy_", ws)),
            functools.partial(torch.bmm, g, v.transpose(1, 2), out=du),
            # gW (O*C, 9) = dU^T (O*C, 36) @ kron(G, G) (36, 9): G^T dU G for every (o, c)
            functools.partial(torch.mm, du.view(POINTS, o * c).t(), _matrix("G x G", wg.G, wg.G, grad),
                              out=grad.view(o * c, wg.TAPS ** 2)))


def _sizes(c: Conv2d, shapes) -> tuple[int, int, int]:
    """Input and output channels, and the number of tiles, of a conv over ``shapes``."""
    n = shapes["x"][0]
    th, tw = tiles(shapes["out"])
    return c.in_channels, c.out_channels, n * th * tw


_PREFIXES = {"input": "in_", "output": "out_", "grad_output": "gy_"}


def _with_fallback(generated: bool, own: dict, shapes, second: str) -> dict:
    """``own`` workspaces, and where the transforms are tensor ops, theirs: the input's
    and the ``second`` transform's (``output`` or ``grad_output``), named apart."""
    if generated:
        return own
    fallback = {role: TensorTransforms.workspace(role, shapes["x" if role == "input" else "out"],
                                                 shapes["out"]) for role in ("input", second)}
    return {**own, **{_PREFIXES[role] + name: shape for role, found in fallback.items()
                      for name, shape in found.items()}}


def _unprefixed(prefix: str, ws: dict) -> dict:
    return {name[len(prefix):]: t for name, t in ws.items() if name.startswith(prefix)}
