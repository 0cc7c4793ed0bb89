"""conv2d: 2-D cross-correlation, PyTorch's weight layout (out, in, kh, kw).

Schedule (im2col, our own, without ``unfold`` so that nothing allocates):
the input is zero-padded into a workspace, its k*k shifted windows are copied into a
column matrix ``col`` of shape (C*k*k, N*Ho*Wo), and one GEMM gives every output:

    forward      y^T  = W(O, C*k*k) @ col            (+ bias, fused into addmm)
    grad weight  gW   = gy^T(O, N*Ho*Wo) @ col^T
    grad input   gcol = W^T @ gy^T, then col2im: k*k strided adds into a padded buffer
    grad bias    gb   = sum of gy over batch and space

``gy^T`` and ``y^T`` are (O, N*Ho*Wo): channel-major, so the GEMM sees long rows; the
NCHW tensors the rest of the graph uses are one strided copy away.
"""

from __future__ import annotations

import attrs
import torch

from ..errors import SpecError
from .base import VJP, Op, Shape, attribute, check_rank, register


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
        ho, wo = self._out_size(h), self._out_size(w)
        if ho < 1 or wo < 1:
            raise SpecError(f"kernel {self.kernel} (dilation {self.dilation}) does not fit an "
                            f"input of {h}x{w} padded by {self.padding}", field="kernel")
        return (n, self.out_channels, ho, wo)

    def workspace(self, kernel: str, shapes: dict[str, Shape]) -> dict[str, Shape]:
        n, c, h, w = shapes["x"]
        _, o, ho, wo = shapes["out"]
        col = (c * self.kernel * self.kernel, n * ho * wo)
        spread = (o, n * ho * wo)
        padded = {"xpad": (n, c, h + 2 * self.padding, w + 2 * self.padding)} if self.padding else {}
        if kernel == "forward":
            return {"col": col, "yt": spread, **padded}
        if kernel == "grad_weight":
            return {"col": col, "gt": spread, **padded}
        if kernel == "grad_x":
            return {"gcol": col, "gt": spread, **padded}
        return {}

    # ---- kernels ---------------------------------------------------------------
    def forward(self, out, ws, x, weight, bias=None):
        col, yt = ws["col"], ws["yt"]
        self._im2col(x, col, ws.get("xpad"))
        w2d = weight.view(self.out_channels, -1)
        if bias is None:
            torch.mm(w2d, col, out=yt)
        else:
            torch.addmm(bias.view(-1, 1), w2d, col, out=yt)
        n, o, ho, wo = out.shape
        out.view(n, o, ho * wo).copy_(yt.view(o, n, ho * wo).transpose(0, 1))

    def grad_weight(self, grad, ws, gout, x):
        col, gt = ws["col"], ws["gt"]
        self._im2col(x, col, ws.get("xpad"))
        self._channel_major(gout, gt)
        torch.mm(gt, col.t(), out=grad.view(self.out_channels, -1))

    def grad_x(self, grad, ws, gout, weight):
        gcol, gt = ws["gcol"], ws["gt"]
        self._channel_major(gout, gt)
        torch.mm(weight.view(self.out_channels, -1).t(), gt, out=gcol)
        self._col2im(gcol, grad, ws.get("xpad"), gout.shape)

    def grad_bias(self, grad, ws, gout):
        torch.sum(gout, dim=(0, 2, 3), out=grad)

    # ---- layout helpers --------------------------------------------------------
    @staticmethod
    def _channel_major(t: torch.Tensor, into: torch.Tensor) -> None:
        """(N, C, H, W) -> (C, N*H*W), the layout the GEMMs want."""
        n, c, h, w = t.shape
        into.view(c, n, h * w).copy_(t.view(n, c, h * w).transpose(0, 1))

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
