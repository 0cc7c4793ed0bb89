"""conv2d: 2-D cross-correlation, PyTorch's weight layout (out, in, kh, kw).

Every kernel is one GEMM plus strided copies or adds; ``nn.functional.unfold`` is not
used, so nothing allocates. The GEMM wants its small dimension as large as possible
(an [M, K] x [K, N] product runs 20x slower when M is 3 than when it is 24), so each
kernel can unfold either side of the convolution:

input side (classic im2col): the input's k*k shifted windows are copied into a column
matrix ``col`` (C*k*k, N*Ho*Wo), then

    forward      y^T  = W(O, C*k*k) @ col            (+ bias, fused into addmm)
    grad weight  gW   = gy^T(O, N*Ho*Wo) @ col^T
    grad input   gcol = W^T @ gy^T, then col2im: k*k strided adds into a padded buffer

output side (stride 1 only): one GEMM over the unshifted input or output gradient
computes every tap at once, and the k*k shifts move to the small side:

    forward      Z = W(k*k*O, C) @ x^T(C, N*H*W), then y = bias + sum over taps of Z
                 shifted by the tap: k*k adds of O-channel maps
    grad input   gx^T = W(C, O*k*k) @ gycol, gycol the k*k shifted copies of gy
                 (a correlation of gy with the flipped kernel: no col2im)
    grad weight  gW^T = x^T(C, N*H*W) @ gycol^T

The ``unfold`` attribute picks a side: ``input``, ``output`` (stride 1), or ``auto``,
which resolves per kernel from the channel counts (stride 1 only): the forward unfolds
the output side when the conv narrows (O < C), the VJPs when it does not widen (O <= C:
gathering O*k*k rows of gy then costs no more than the C*k*k rows col2im adds back).
Measured on the seed net's 24->3 output conv at batch 64, the output side takes its
three kernels from 33 + 39 + 24 ms down to 2 + 2 + 3 ms; for 24->24 the sides tie.

``x^T``, ``y^T``, ``gy^T`` are channel-major (C, N*H*W), the layout the GEMMs want; the
NCHW tensors the rest of the graph uses are one strided copy away.
"""

from __future__ import annotations

import attrs
import torch

from ..errors import SpecError
from .base import VJP, Op, Shape, attribute, check_rank, register

SIDES = ("auto", "input", "output")


@register
@attrs.frozen
class Conv2d(Op):
    name = "conv2d"
    inputs = ("x",)
    vjps = {
        "x": VJP("grad_x", needs=("gout", "weight")),
        "weight": VJP("grad_weight", needs=("gout", "x")),
        "bias": VJP("grad_bias", needs=("gout",)),
    }

    in_channels: int = attribute(int, minimum=1, doc="channels of the input")
    out_channels: int = attribute(int, minimum=1, doc="channels of the output")
    kernel: int = attribute(int, minimum=1, doc="square kernel size")
    stride: int = attribute(int, default=1, minimum=1)
    padding: int = attribute(int, default=0, minimum=0, doc="zeros on each side")
    dilation: int = attribute(int, default=1, minimum=1)
    bias: bool = attribute(bool, default=True)
    unfold: str = attribute(str, default="auto", choices=SIDES,
                            doc="which side the GEMMs unfold: input, output or auto")

    # ---- shapes ----------------------------------------------------------------
    def params(self) -> dict[str, Shape]:
        shapes = {"weight": (self.out_channels, self.in_channels, self.kernel, self.kernel)}
        if self.bias:
            shapes["bias"] = (self.out_channels,)
        return shapes

    def fans(self) -> tuple[int, int]:
        area = self.kernel * self.kernel
        return self.in_channels * area, self.out_channels * area

    def _out_size(self, size: int) -> int:
        reach = self.dilation * (self.kernel - 1) + 1
        return (size + 2 * self.padding - reach) // self.stride + 1

    def infer(self, x: Shape, **params: Shape) -> Shape:
        check_rank(x, 4, "conv2d input (N, C, H, W)")
        n, c, h, w = x
        if c != self.in_channels:
            raise SpecError(f"input has {c} channels, the node declares {self.in_channels}",
                            field="in_channels")
        if self.unfold == "output" and self.stride != 1:
            raise SpecError("unfold: output needs stride 1", field="unfold")
        ho, wo = self._out_size(h), self._out_size(w)
        if ho < 1 or wo < 1:
            raise SpecError(f"kernel {self.kernel} (dilation {self.dilation}) does not fit an "
                            f"input of {h}x{w} padded by {self.padding}", field="kernel")
        return (n, self.out_channels, ho, wo)

    def side(self, kernel: str) -> str:
        """The side ``kernel`` unfolds: the attribute, or for ``auto`` the cheaper one."""
        if self.unfold != "auto":
            return self.unfold
        if self.stride != 1:
            return "input"
        if kernel == "forward":
            return "output" if self.out_channels < self.in_channels else "input"
        return "output" if self.out_channels <= self.in_channels else "input"

    def workspace(self, kernel: str, shapes: dict[str, Shape]) -> dict[str, Shape]:
        n, c, h, w = shapes["x"]
        _, o, ho, wo = shapes["out"]
        k2 = self.kernel * self.kernel
        if kernel == "grad_bias":
            return {}
        if self.side(kernel) == "output":
            x_t, gycol = (c, n * h * w), (o * k2, n * h * w)
            return {
                "forward": {"x_t": x_t, "w_taps": (k2 * o, c), "taps": (k2 * o, n * h * w)},
                "grad_x": {"gycol": gycol, "w_t": (c, o * k2), "gx_t": x_t},
                "grad_weight": {"gycol": gycol, "x_t": x_t, "gw_t": (c, o * k2)},
            }[kernel]
        col, spread = (c * k2, n * ho * wo), (o, n * ho * wo)
        padded = {"xpad": (n, c, h + 2 * self.padding, w + 2 * self.padding)} if self.padding else {}
        if kernel == "forward":
            return {"col": col, "yt": spread, **padded}
        if kernel == "grad_weight":
            return {"col": col, "gt": spread, **padded}
        return {"gcol": col, "gt": spread, **padded}

    # ---- kernels ---------------------------------------------------------------
    def forward(self, out, ws, x, weight, bias=None):
        if self.side("forward") == "output":
            return self._forward_output_side(out, ws, x, weight, bias)
        col, yt = ws["col"], ws["yt"]
        self._im2col(x, col, ws.get("xpad"))
        w2d = weight.view(self.out_channels, -1)
        if bias is None:
            torch.mm(w2d, col, out=yt)
        else:
            torch.addmm(bias.view(-1, 1), w2d, col, out=yt)
        self._from_channel_major(yt, out)

    def grad_weight(self, grad, ws, gout, x):
        if self.side("grad_weight") == "output":
            gycol, x_t, gw_t = ws["gycol"], ws["x_t"], ws["gw_t"]
            self._gather_gout(gout, gycol, x.shape)
            self._channel_major(x, x_t)
            torch.mm(x_t, gycol.t(), out=gw_t)  # (C, O*k*k)
            o, c, k = self.out_channels, self.in_channels, self.kernel
            grad.view(o, c, k * k).copy_(gw_t.view(c, o, k * k).transpose(0, 1))
            return
        col, gt = ws["col"], ws["gt"]
        self._im2col(x, col, ws.get("xpad"))
        self._channel_major(gout, gt)
        torch.mm(gt, col.t(), out=grad.view(self.out_channels, -1))

    def grad_x(self, grad, ws, gout, weight):
        if self.side("grad_x") == "output":
            gycol, w_t, gx_t = ws["gycol"], ws["w_t"], ws["gx_t"]
            self._gather_gout(gout, gycol, grad.shape)
            o, c, k = self.out_channels, self.in_channels, self.kernel
            w_t.view(c, o, k * k).copy_(weight.view(o, c, k * k).transpose(0, 1))
            torch.mm(w_t, gycol, out=gx_t)
            self._from_channel_major(gx_t, grad)
            return
        gcol, gt = ws["gcol"], ws["gt"]
        self._channel_major(gout, gt)
        torch.mm(weight.view(self.out_channels, -1).t(), gt, out=gcol)
        self._col2im(gcol, grad, ws.get("xpad"), gout.shape)

    def grad_bias(self, grad, ws, gout):
        torch.sum(gout, dim=(0, 2, 3), out=grad)

    # ---- the output side -------------------------------------------------------
    def _taps(self, h: int, w: int, ho: int, wo: int):
        """For each tap (a, b): the output rows and columns it reaches, and the input
        rows and columns they read (stride 1: output i reads input i + a*d - p)."""
        k, d, p = self.kernel, self.dilation, self.padding
        for a in range(k):
            rows = _overlap(a * d - p, h, ho)
            for b in range(k):
                cols = _overlap(b * d - p, w, wo)
                yield a * k + b, rows, cols

    def _forward_output_side(self, out, ws, x, weight, bias):
        x_t, w_taps, taps = ws["x_t"], ws["w_taps"], ws["taps"]
        n, c, h, w = x.shape
        o, k2 = self.out_channels, self.kernel * self.kernel
        self._channel_major(x, x_t)
        w_taps.view(k2, o, c).copy_(weight.view(o, c, k2).permute(2, 0, 1))
        torch.mm(w_taps, x_t, out=taps)  # every tap's contribution, unshifted
        each = taps.view(k2, o, n, h, w)
        y = out.transpose(0, 1)  # (O, N, Ho, Wo) view of the NCHW result
        if bias is None:
            y.zero_()
        else:
            y.copy_(bias.view(o, 1, 1, 1).expand_as(y))
        for tap, (yr, xr), (yc, xc) in self._taps(h, w, y.shape[2], y.shape[3]):
            if yr and yc:
                y[:, :, yr[0]:yr[1], yc[0]:yc[1]].add_(each[tap, :, :, xr[0]:xr[1], xc[0]:xc[1]])

    def _gather_gout(self, gout, gycol, x_shape):
        """gycol[(o, a, b), (n, h, w)] = gy[n, o, h - a*d + p, w - b*d + p], zero where
        that falls outside gy: every input pixel's view of the output gradient."""
        n, o, ho, wo = gout.shape
        h, w = x_shape[2], x_shape[3]
        k2 = self.kernel * self.kernel
        cols = gycol.view(o, k2, n, h, w)
        gy = gout.transpose(0, 1)
        for tap, (yr, xr), (yc, xc) in self._taps(h, w, ho, wo):
            plane = cols[:, tap]
            if not (yr and yc):
                plane.zero_()
                continue
            plane[:, :, xr[0]:xr[1], xc[0]:xc[1]].copy_(gy[:, :, yr[0]:yr[1], yc[0]:yc[1]])
            _zero_outside(plane, xr, xc)

    # ---- layout helpers --------------------------------------------------------
    @staticmethod
    def _channel_major(t: torch.Tensor, into: torch.Tensor) -> None:
        """(N, C, H, W), any strides -> (C, N*H*W), the layout the GEMMs want."""
        n, c, h, w = t.shape
        into.view(c, n, h, w).copy_(t.transpose(0, 1))

    @staticmethod
    def _from_channel_major(t: torch.Tensor, into: torch.Tensor) -> None:
        """(C, N*H*W) -> (N, C, H, W), any strides."""
        n, c, h, w = into.shape
        into.copy_(t.view(c, n, h, w).transpose(0, 1))

    def _windows(self, padded: torch.Tensor, ho: int, wo: int) -> torch.Tensor:
        """A strided view (C, k, k, N, Ho, Wo) of every input window; no copy."""
        n, c = padded.shape[:2]
        sn, sc, sh, sw = padded.stride()
        k, d, s = self.kernel, self.dilation, self.stride
        return padded.as_strided((c, k, k, n, ho, wo), (sc, sh * d, sw * d, sn, sh * s, sw * s),
                                 padded.storage_offset())

    def _pad_into(self, x: torch.Tensor, xpad: torch.Tensor | None) -> torch.Tensor:
        if xpad is None:
            return x
        p = self.padding
        xpad.zero_()
        xpad[:, :, p:p + x.shape[2], p:p + x.shape[3]].copy_(x)
        return xpad

    def _im2col(self, x, col, xpad):
        ho, wo = self._out_size(x.shape[2]), self._out_size(x.shape[3])
        windows = self._windows(self._pad_into(x, xpad), ho, wo)
        col.view(windows.shape).copy_(windows)

    def _col2im(self, gcol, grad, gpad, gout_shape):
        """Adds every column back onto the input position it was copied from."""
        n, _, ho, wo = gout_shape
        target = grad if gpad is None else gpad
        target.zero_()
        k = self.kernel
        windows = self._windows(target, ho, wo)
        pieces = gcol.view(windows.shape)
        for i in range(k):
            for j in range(k):
                windows[:, i, j].add_(pieces[:, i, j])
        if gpad is not None:
            p = self.padding
            grad.copy_(gpad[:, :, p:p + grad.shape[2], p:p + grad.shape[3]])


def _overlap(shift: int, size: int, out_size: int):
    """Output positions i in [0, out_size) whose input i + shift lies in [0, size), as
    ((i0, i1), (i0 + shift, i1 + shift)); None when there are none."""
    i0, i1 = max(0, -shift), min(out_size, size - shift)
    if i0 >= i1:
        return None, None
    return (i0, i1), (i0 + shift, i1 + shift)


def _zero_outside(plane: torch.Tensor, rows, cols) -> None:
    """Zeroes what lies outside rows x cols in the last two dimensions of ``plane``."""
    h, w = plane.shape[-2:]
    if rows[0] > 0:
        plane[..., :rows[0], :].zero_()
    if rows[1] < h:
        plane[..., rows[1]:, :].zero_()
    if cols[0] > 0:
        plane[..., rows[0]:rows[1], :cols[0]].zero_()
    if cols[1] < w:
        plane[..., rows[0]:rows[1], cols[1]:].zero_()
