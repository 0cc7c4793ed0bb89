"""conv2d: 2-D cross-correlation, PyTorch's weight layout (out, in, kh, kw).

Every kernel is one GEMM plus strided copies or adds; ``nn.functional.unfold`` is not
used, so nothing allocates. The GEMM wants its small dimension as large as possible
(an [M, K] x [K, N] product runs 20x slower when M is 3 than when it is 24), so each
kernel can unfold either side of the convolution:

input side (classic im2col): the input's k*k shifted windows are copied into a column
matrix ``col`` (C*k*k, N*Ho*Wo), then

    forward      y^T  = W(O, C*k*k) @ col            (+ bias, fused into addmm)
    grad weight  gW   = gy^T(O, N*Ho*Wo) @ col^T
    grad input   stride 1: the mirror conv's forward over gy (kernel flipped, transposed);
                 else gcol = W^T @ gy^T, then col2im: k*k strided adds into a padded buffer

output side (stride 1 only): one GEMM over the unshifted input or output gradient
computes every tap at once, and the k*k shifts move to the small side:

    forward      Z = W(k*k*O, C) @ x^T(C, N*H*W), then y = bias + sum over taps of Z
                 shifted by the tap: k*k adds of O-channel maps
    grad input   gx^T = W(C, O*k*k) @ gycol, gycol the k*k shifted copies of gy
                 (a correlation of gy with the flipped kernel: no col2im)
    grad weight  gW^T = x^T(C, N*H*W) @ gycol^T

no unfold (stride 1 only): the zero-padded input is laid out channel-major and flat,
``xt`` (C, N*Hp*Wp), so that tap (a, b) of output pixel q reads ``xt[:, q + a*d*Wp + b*d]``:
every tap is a plain GEMM on a shifted column window of ``xt``, with no copy at all. The
output is computed on the padded grid's rows (Wp columns each, the last Wp - Wo of them
thrown away), in tiles of about ``TAP_TILE_COLUMNS`` pixels:

    forward      y^T  = sum over taps  W_tap(O, C) @ xt[:, shifted window]
    grad weight  gW_tap = gy^T(O, pixels) @ xt[:, shifted window]^T, gy^T zero off the grid
    grad input   the mirror conv's forward, on this side too

The ``unfold`` attribute picks a side: ``input``, ``output`` (stride 1), ``none`` (stride
1), or ``auto``, which for stride 1 takes no unfold where the per-tap GEMMs are wide
enough (C and O >= ``TAP_MIN_CHANNELS``: the U-Net's 32- to 96-channel convs, where the
im2col copy cost a third of the input side's time), else the output side where the conv
at least halves the channels (2*O <= C, like the seed net's 24 -> 3 output conv, whose
three kernels it takes from 33 + 39 + 24 ms down to 2 + 2 + 3 ms at batch 64), else the
input side, where the tiles below keep the column matrix in cache. With stride 1 the
input gradient is itself a tiled forward: that of the mirror conv, the kernel flipped
and transposed.

``x^T``, ``y^T``, ``gy^T`` are channel-major (C, N*H*W), the layout the GEMMs want; the
NCHW tensors the rest of the graph uses are one strided copy away.

The input side runs in tiles of about ``TILE_COLUMNS`` output pixels (whole samples,
or blocks of rows of one sample): each tile's columns are copied, multiplied and
scattered while they are still in cache, and the workspaces hold one tile, not the
whole batch, which also keeps a 512x512 photo's plan small.
"""

from __future__ import annotations

import functools

import attrs
import torch

from ..errors import SpecError
from .base import VJP, Op, Shape, attribute, check_rank, constant, in_order, register

SIDES = ("auto", "input", "output", "none")


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
                            doc="which side the GEMMs unfold: input, output, none or auto")
    tile: int = attribute(int, default=0, minimum=0,
                          doc="output pixels per GEMM tile; 0: sized for a CPU's cache")
    keep_columns: bool = attribute(bool, default=True,
                                   doc="keep the forward's column matrix for the weight "
                                       "gradient where one tile holds the batch")

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
        if self.unfold in ("output", "none") and self.stride != 1:
            raise SpecError(f"unfold: {self.unfold} needs stride 1", field="unfold")
        ho, wo = self._out_size(h), self._out_size(w)
        if ho < 1 or wo < 1:
            raise SpecError(f"kernel {self.kernel} (dilation {self.dilation}) does not fit an "
                            f"input of {h}x{w} padded by {self.padding}", field="kernel")
        return (n, self.out_channels, ho, wo)

    def side(self, kernel: str) -> str:
        """The side ``kernel`` unfolds: the attribute, or for ``auto`` the cheaper one.
        Without a mirror conv (padding beyond the kernel's reach) the input gradient of
        the no-unfold side falls back to the input side's col2im."""
        side = self.unfold
        if side == "auto":
            c, o = self.in_channels, self.out_channels
            side = ("input" if self.stride != 1 else "none" if min(c, o) >= TAP_MIN_CHANNELS else
                    "output" if 2 * o <= c else "input")
        if side == "none" and kernel == "grad_x" and not self._mirrored():
            return "input"
        return side

    def keeps_columns(self, x: Shape, out: Shape) -> bool:
        """Whether the weight gradient reads the forward's column matrix instead of
        building its own: both unfold the input side and one tile holds the whole
        batch, so the forward's ``col`` is exactly the matrix the gradient needs."""
        n, _, ho, wo = out
        return (self.keep_columns and self.side("forward") == self.side("grad_weight") == "input"
                and len(_tiles(n, ho, wo, self.tile)) == 1)

    def shares(self, kernel: str, shapes: dict[str, Shape]) -> dict[str, str]:
        if kernel == "grad_weight" and self.keeps_columns(shapes["x"], shapes["out"]):
            return {"col": "forward"}
        return {}

    def workspace(self, kernel: str, shapes: dict[str, Shape]) -> dict[str, Shape]:
        n, c, h, w = shapes["x"]
        _, o, ho, wo = shapes["out"]
        k2 = self.kernel * self.kernel
        if kernel == "grad_bias":
            return {}
        side = self.side(kernel)
        if kernel == "grad_x" and side in ("input", "none") and self._mirrored():
            own = _mirror_of(self, side).workspace("forward", {"x": shapes["out"], "out": shapes["x"]})
            return {"w_flip": (c, o, self.kernel, self.kernel),
                    **{f"mirror_{name}": shape for name, shape in own.items()}}
        if side == "none":
            hp, wp, _, tiles = self._shifts(shapes["x"], shapes["out"])
            columns = max(t[-1] for t in tiles)
            xt = {"xt": (c, n * hp * wp + (self.kernel - 1) * self.dilation)}
            if kernel == "forward":
                return {**xt, "w_taps": (k2, o, c), "yt": (o, columns)}
            return {**xt, "gt": (o, n * hp * wp), "g_taps": (k2, o, c)}
        if side == "output":
            x_t, gycol = (c, n * h * w), (o * k2, n * h * w)
            return {
                "forward": {"x_t": x_t, "w_taps": (k2 * o, c), "taps": (k2 * o, n * h * w)},
                "grad_x": {"gycol": gycol, "w_t": (c, o * k2), "gx_t": x_t},
                "grad_weight": {"gycol": gycol, "x_t": x_t, "gw_t": (c, o * k2)},
            }[kernel]
        columns = max((n1 - n0) * (r1 - r0) * wo for n0, n1, r0, r1 in _tiles(n, ho, wo, self.tile))
        col, spread = (c * k2, columns), (o, columns)
        padded = {"xpad": (n, c, h + 2 * self.padding, w + 2 * self.padding)} if self.padding else {}
        if kernel == "forward":
            return {"col": col, "yt": spread, **padded}
        if kernel == "grad_weight":
            if self.keeps_columns(shapes["x"], shapes["out"]):
                return {"gt": spread}  # and the forward's col
            return {"col": col, "gt": spread, **padded}
        return {"gcol": col, "gt": spread, **padded}

    # ---- kernels: each one prepared once with its buffers, then only tensor ops ----
    def prepare(self, kernel, result, ws, /, **tensors):
        if kernel == "grad_bias":
            return functools.partial(torch.sum, tensors["gout"], dim=(0, 2, 3), out=result)
        return getattr(self, f"_{kernel}_{self.side(kernel)}_side")(result, ws, **tensors)

    def forward(self, out, ws, x, weight, bias=None):
        self.prepare("forward", out, ws, x=x, weight=weight, bias=bias)()

    def grad_weight(self, grad, ws, gout, x):
        self.prepare("grad_weight", grad, ws, gout=gout, x=x)()

    def grad_x(self, grad, ws, gout, weight):
        self.prepare("grad_x", grad, ws, gout=gout, weight=weight)()

    def grad_bias(self, grad, ws, gout):
        self.prepare("grad_bias", grad, ws, gout=gout)()

    # ---- the input side --------------------------------------------------------
    def _forward_input_side(self, out, ws, x, weight, bias=None):
        w2d = weight.view(self.out_channels, -1)
        padded, calls = self._padded(x, ws.get("xpad"))
        tiles = self._tile_views(padded, out.shape, ws["col"], ws["yt"])
        for (n0, n1, r0, r1), col, windows, yt in tiles:
            gemm = (functools.partial(torch.mm, w2d, col, out=yt) if bias is None else
                    functools.partial(torch.addmm, bias.view(-1, 1), w2d, col, out=yt))
            calls += [functools.partial(col.view(windows.shape).copy_, windows), gemm,
                      _from_channel_major(yt, out[n0:n1, :, r0:r1, :])]
        return in_order(*calls)

    def _grad_weight_input_side(self, grad, ws, gout, x):
        g2d = grad.view(self.out_channels, -1)
        if self.keeps_columns(x.shape, gout.shape):  # the forward's col, still intact
            columns = gout.numel() // self.out_channels
            col = ws["col"].view(-1)[:ws["col"].shape[0] * columns].view(-1, columns)
            gt = ws["gt"].view(-1)[:gout.numel()].view(self.out_channels, columns)
            return in_order(_channel_major(gout, gt),
                            functools.partial(torch.mm, gt, col.t(), out=g2d))
        padded, calls = self._padded(x, ws.get("xpad"))
        tiles = self._tile_views(padded, gout.shape, ws["col"], ws["gt"])
        for i, ((n0, n1, r0, r1), col, windows, gt) in enumerate(tiles):
            calls += [functools.partial(col.view(windows.shape).copy_, windows),
                      _channel_major(gout[n0:n1, :, r0:r1, :], gt),
                      functools.partial(torch.mm, gt, col.t(), out=g2d) if i == 0 else
                      functools.partial(g2d.addmm_, gt, col.t())]
        return in_order(*calls)

    def _mirrored(self) -> bool:
        return self.stride == 1 and self.padding <= (self.kernel - 1) * self.dilation

    def _grad_x_input_side(self, grad, ws, gout, weight):
        """Stride 1: the forward of the mirror conv (gy correlated with the kernel
        flipped and transposed), tiled like any forward. Otherwise col2im: each tile's
        columns are added back onto the input positions they came from (k*k strided
        adds into the zero-padded gradient)."""
        if self._mirrored():
            return self._grad_x_mirrored("input", grad, ws, gout, weight)
        gpad = ws.get("xpad")
        target = grad if gpad is None else gpad
        w2d_t = weight.view(self.out_channels, -1).t()
        calls = [target.zero_]
        tiles = self._tile_views(target, gout.shape, ws["gcol"], ws["gt"])
        for (n0, n1, r0, r1), gcol, windows, gt in tiles:
            pieces = gcol.view(windows.shape)
            calls += [_channel_major(gout[n0:n1, :, r0:r1, :], gt),
                      functools.partial(torch.mm, w2d_t, gt, out=gcol)]
            calls += [functools.partial(windows[:, i, j].add_, pieces[:, i, j])
                      for i in range(self.kernel) for j in range(self.kernel)]
        if gpad is not None:
            p = self.padding
            calls.append(functools.partial(grad.copy_,
                                           gpad[:, :, p:p + grad.shape[2], p:p + grad.shape[3]]))
        return in_order(*calls)

    def _grad_x_mirrored(self, side, grad, ws, gout, weight):
        """The forward of the mirror conv on ``side``: gy correlated with the kernel
        flipped and transposed."""
        o, c, k = self.out_channels, self.in_channels, self.kernel
        flip = constant(f"conv2d flip {o} {c} {k}", lambda: _flip_index(o, c, k),
                        device=weight.device)
        own = {name[len("mirror_"):]: t for name, t in ws.items() if name.startswith("mirror_")}
        forward = getattr(_mirror_of(self, side), f"_forward_{side}_side")
        return in_order(functools.partial(torch.index_select, weight.view(-1), 0, flip,
                                        out=ws["w_flip"].view(-1)),
                      forward(grad, own, x=gout, weight=ws["w_flip"]))

    def _padded(self, x, xpad) -> tuple[torch.Tensor, list]:
        """The input as the windows read it, and the calls that zero-pad it, if any."""
        if xpad is None:
            return x, []
        p = self.padding
        return xpad, [xpad.zero_,
                      functools.partial(xpad[:, :, p:p + x.shape[2], p:p + x.shape[3]].copy_, x)]

    def _tile_views(self, padded, out_shape, col, spread):
        """For each tile of the output: the tile (n0, n1, r0, r1), its column matrix
        (C*k*k, columns), its windows in ``padded`` (C, k, k, n, rows, Wo) and its
        channel-major part (O, columns). Both workspaces are used from their start,
        so every tile's matrices are contiguous."""
        n, _, ho, wo = out_shape
        windows = self._windows(padded, ho, wo)
        rows, o = col.shape[0], spread.shape[0]
        for n0, n1, r0, r1 in _tiles(n, ho, wo, self.tile):
            columns = (n1 - n0) * (r1 - r0) * wo
            yield ((n0, n1, r0, r1), col.view(-1)[:rows * columns].view(rows, columns),
                   windows[:, :, :, n0:n1, r0:r1, :], spread.view(-1)[:o * columns].view(o, columns))

    # ---- the output side -------------------------------------------------------
    def _forward_output_side(self, out, ws, x, weight, bias=None):
        x_t, w_taps, taps = ws["x_t"], ws["w_taps"], ws["taps"]
        n, c, h, w = x.shape
        o, k2 = self.out_channels, self.kernel * self.kernel
        each = taps.view(k2, o, n, h, w)
        y = out.transpose(0, 1)  # (O, N, Ho, Wo) view of the NCHW result
        start = (y.zero_ if bias is None else
                 functools.partial(y.copy_, bias.view(o, 1, 1, 1).expand_as(y)))
        shifted_adds = [y[:, :, yr[0]:yr[1], yc[0]:yc[1]].add_
                        for _, (yr, _), (yc, _) in self._taps(h, w, y.shape[2], y.shape[3]) if yr and yc]
        sources = [each[tap, :, :, xr[0]:xr[1], xc[0]:xc[1]]
                   for tap, (yr, xr), (yc, xc) in self._taps(h, w, y.shape[2], y.shape[3]) if yr and yc]
        return in_order(_channel_major(x, x_t),
                      functools.partial(w_taps.view(k2, o, c).copy_,
                                        weight.view(o, c, k2).permute(2, 0, 1)),
                      functools.partial(torch.mm, w_taps, x_t, out=taps),  # every tap, unshifted
                      start, *map(functools.partial, shifted_adds, sources))

    def _grad_x_output_side(self, grad, ws, gout, weight):
        gycol, w_t, gx_t = ws["gycol"], ws["w_t"], ws["gx_t"]
        o, c, k = self.out_channels, self.in_channels, self.kernel
        return in_order(self._gather_gout(gout, gycol, grad.shape),
                      functools.partial(w_t.view(c, o, k * k).copy_,
                                        weight.view(o, c, k * k).transpose(0, 1)),
                      functools.partial(torch.mm, w_t, gycol, out=gx_t),
                      _from_channel_major(gx_t, grad))

    def _grad_weight_output_side(self, grad, ws, gout, x):
        gycol, x_t, gw_t = ws["gycol"], ws["x_t"], ws["gw_t"]
        o, c, k = self.out_channels, self.in_channels, self.kernel
        return in_order(self._gather_gout(gout, gycol, x.shape), _channel_major(x, x_t),
                      functools.partial(torch.mm, x_t, gycol.t(), out=gw_t),  # (C, O*k*k)
                      functools.partial(grad.view(o, c, k * k).copy_,
                                        gw_t.view(c, o, k * k).transpose(0, 1)))

    def _taps(self, h: int, w: int, ho: int, wo: int):
        """For each tap (a, b): the output rows and columns it reaches, and the input
        rows and columns they read (stride 1: output i reads input i + a*d - p)."""
        k, d, p = self.kernel, self.dilation, self.padding
        for a in range(k):
            rows = _overlap(a * d - p, h, ho)
            for b in range(k):
                cols = _overlap(b * d - p, w, wo)
                yield a * k + b, rows, cols

    def _gather_gout(self, gout, gycol, x_shape):
        """gycol[(o, a, b), (n, h, w)] = gy[n, o, h - a*d + p, w - b*d + p], zero where
        that falls outside gy: every input pixel's view of the output gradient."""
        n, o, ho, wo = gout.shape
        h, w = x_shape[2], x_shape[3]
        cols = gycol.view(o, self.kernel * self.kernel, n, h, w)
        gy = gout.transpose(0, 1)
        whole = gycol.numel() < ZERO_WHOLE_BELOW
        calls = [gycol.zero_] if whole else []
        for tap, (yr, xr), (yc, xc) in self._taps(h, w, ho, wo):
            plane = cols[:, tap]
            if not (yr and yc):
                calls.extend([] if whole else [plane.zero_])
                continue
            calls.append(functools.partial(plane[:, :, xr[0]:xr[1], xc[0]:xc[1]].copy_,
                                           gy[:, :, yr[0]:yr[1], yc[0]:yc[1]]))
            calls.extend([] if whole else _zeros_outside(plane, xr, xc))
        return in_order(*calls)

    # ---- no unfold: shifted windows of the flat padded input -------------------
    def _forward_none_side(self, out, ws, x, weight, bias=None):
        xt, w_taps, yt = ws["xt"], ws["w_taps"], ws["yt"]
        o, c, k2 = self.out_channels, self.in_channels, self.kernel * self.kernel
        hp, wp, offsets, tiles = self._shifts(x.shape, out.shape)
        wo = out.shape[3]
        calls = [*flat_padded(x, xt, self.padding),
                 functools.partial(w_taps.copy_, weight.view(o, c, k2).permute(2, 0, 1))]
        for n0, n1, r0, r1, start, columns in tiles:
            y = yt.view(-1)[:o * columns].view(o, columns)
            windows = [xt[:, start + off:start + off + columns] for off in offsets]
            calls.append(functools.partial(torch.mm, w_taps[0], windows[0], out=y) if bias is None
                         else functools.partial(torch.addmm, bias.view(-1, 1), w_taps[0], windows[0],
                                                out=y))
            calls += [functools.partial(y.addmm_, w_taps[t], windows[t]) for t in range(1, k2)]
            grid = y.as_strided((n1 - n0, o, r1 - r0, wo), (hp * wp, columns, wp, 1), y.storage_offset())
            calls.append(functools.partial(out[n0:n1, :, r0:r1, :].copy_, grid))
        return in_order(*calls)

    def _grad_weight_none_side(self, grad, ws, gout, x):
        xt, gt, g_taps = ws["xt"], ws["gt"], ws["g_taps"]
        o, c, k2 = self.out_channels, self.in_channels, self.kernel * self.kernel
        n, _, ho, wo = gout.shape
        hp, wp, offsets, tiles = self._shifts(x.shape, gout.shape)
        grid = gt.view(o, n, hp, wp)  # gy on the padded grid, zero where no output is
        calls = [*flat_padded(x, xt, self.padding),
                 functools.partial(grid[:, :, :ho, :wo].copy_, gout.transpose(0, 1)),
                 *_zeros_outside(grid, (0, ho), (0, wo))]
        for i, (*_, start, columns) in enumerate(tiles):
            g = gt[:, start:start + columns]
            for t, off in enumerate(offsets):
                window = xt[:, start + off:start + off + columns].t()
                calls.append(functools.partial(torch.mm, g, window, out=g_taps[t]) if i == 0 else
                             functools.partial(g_taps[t].addmm_, g, window))
        calls.append(functools.partial(grad.view(o, c, k2).copy_, g_taps.permute(1, 2, 0)))
        return in_order(*calls)

    def _grad_x_none_side(self, grad, ws, gout, weight):
        return self._grad_x_mirrored("none", grad, ws, gout, weight)

    def _shifts(self, x_shape, out_shape):
        """The padded map's (Hp, Wp); each tap's offset in the flat padded map; and the
        tiles (n0, n1, r0, r1, start, columns): the flat pixels [start, start + columns)
        of the padded grid that cover those output rows (all rows of each sample but
        the last one's below Ho)."""
        n, _, h, w = x_shape
        ho = out_shape[2]
        k, d, p = self.kernel, self.dilation, self.padding
        hp, wp = h + 2 * p, w + 2 * p
        offsets = [a * d * wp + b * d for a in range(k) for b in range(k)]
        tiles = [(n0, n1, r0, r1, (n0 * hp + r0) * wp, ((n1 - n0 - 1) * hp + r1 - r0) * wp)
                 for n0, n1, r0, r1 in _tiles(n, ho, wp, self.tile or TAP_TILE_COLUMNS)]
        return hp, wp, offsets, tiles


    # ---- the input side's windows ----------------------------------------------
    def _windows(self, padded: torch.Tensor, ho: int, wo: int) -> torch.Tensor:
        """A strided view (C, k, k, N, Ho, Wo) of every input window; no copy."""
        n, c = padded.shape[:2]
        sn, sc, sh, sw = padded.stride()
        k, d, s = self.kernel, self.dilation, self.stride
        return padded.as_strided((c, k, k, n, ho, wo), (sc, sh * d, sw * d, sn, sh * s, sw * s),
                                 padded.storage_offset())


def _channel_major(t: torch.Tensor, into: torch.Tensor):
    """(N, C, H, W), any strides -> (C, N*H*W), the layout the GEMMs want."""
    n, c, h, w = t.shape
    return functools.partial(into.view(c, n, h, w).copy_, t.transpose(0, 1))


def _from_channel_major(t: torch.Tensor, into: torch.Tensor):
    """(C, N*H*W) -> (N, C, H, W), any strides."""
    n, c, h, w = into.shape
    return functools.partial(into.copy_, t.view(c, n, h, w).transpose(0, 1))


@functools.lru_cache(maxsize=None)
def _mirror_of(conv: Conv2d, side: str = "input") -> Conv2d:
    """For stride 1: the conv whose forward, with the kernel flipped and transposed,
    maps the output gradient to the input gradient, unfolding ``side``."""
    reach = (conv.kernel - 1) * conv.dilation
    return Conv2d(conv.out_channels, conv.in_channels, conv.kernel, padding=reach - conv.padding,
                  dilation=conv.dilation, bias=False, unfold=side, tile=conv.tile,
                  keep_columns=False)


def _flip_index(o: int, c: int, k: int) -> torch.Tensor:
    """Positions in the (O, C, k, k) kernel of the (C, O, k, k) flipped one's values."""
    return torch.arange(o * c * k * k).view(o, c, k, k).transpose(0, 1).flip(2, 3).reshape(-1)


TILE_COLUMNS = 1024
"""Output columns (pixels) per tile of the input side's GEMMs. A tile's column matrix,
C*k*k rows by this many columns, stays in cache between its copy and its GEMM: on a
U-Net conv (67 -> 64 channels, 16 x 64 x 64 pixels, one thread) the forward took 133 ms
untiled (56 ms of it the im2col copy) and 56 ms in tiles of 1,024 columns."""


ZERO_WHOLE_BELOW = 2**17
"""A workspace only partly written by copies (the output side's gathered gradient
(O*k*k, N*H*W), a zero-padded input) is zeroed whole, once, before them when it holds
fewer values than this; larger, only the strips that no copy writes are zeroed. On
small batches the number of tensor ops, not the bytes, sets the pace: at batch 4 the
seed net's 24 -> 3 conv gathers in 10 calls instead of 21, for each of its two
gradients. Its training step on one thread, whole against
strips, in one process (three runs): batch 4 8-20% faster, batch 8 8-18%; on two
threads within the noise."""

TAP_TILE_COLUMNS = 2048
"""Padded-grid pixels per tile of the no-unfold side: its nine GEMMs reread one tile
of ``xt`` (C rows) and accumulate into one of ``yt`` (O rows), both kept in cache."""

TAP_MIN_CHANNELS = 32
"""``auto`` skips the unfold where both channel counts reach this: each tap's GEMM, with
C-long dot products (K = C instead of C*k*k) and O outputs, is then still fast enough
that saving the im2col copy wins. Measured per conv (forward + both gradients, one
thread, batch 4, the input side's time -> no unfold's): U-Net 67 -> 64 at 64x64
45.0 -> 37.6 ms, 96 -> 64 at 32x32 16.6 -> 12.0, 64 -> 32 at 64x64 25.4 -> 19.8 (the
output side: 29.7), 32 -> 32 at 64x64 12.4 -> 10.8; at 24 channels (the seed net, 16x16)
the weight gradient's 24 x 24 GEMMs lose and the two sides tie."""


def _tiles(n: int, ho: int, wo: int, columns: int | None = None) -> list[tuple[int, int, int, int]]:
    """(n0, n1, r0, r1): whole samples while a sample has fewer than ``columns``
    (0 or None: TILE_COLUMNS) pixels, else blocks of output rows within one sample."""
    columns = columns or TILE_COLUMNS
    if ho * wo < columns:
        step = columns // (ho * wo)
        return [(i, min(i + step, n), 0, ho) for i in range(0, n, step)]
    rows = max(1, columns // wo)
    return [(i, i + 1, r, min(r + rows, ho)) for i in range(n) for r in range(0, ho, rows)]


def _overlap(shift: int, size: int, out_size: int):
    """Output positions i in [0, out_size) whose input i + shift lies in [0, size), as
    ((i0, i1), (i0 + shift, i1 + shift)); None when there are none."""
    i0, i1 = max(0, -shift), min(out_size, size - shift)
    if i0 >= i1:
        return None, None
    return (i0, i1), (i0 + shift, i1 + shift)


def flat_padded(x: torch.Tensor, xt: torch.Tensor, padding: int) -> list:
    """Calls that write x (N, C, H, W), zero-padded by ``padding``, into the flat
    channel-major ``xt`` (C, N*Hp*Wp, then any columns past the last sample, which the
    last taps of a no-unfold conv read beyond it: zeros). A small ``xt`` is zeroed whole
    before the copy, a large one only where the copy does not write (ZERO_WHOLE_BELOW
    says why)."""
    n, c, h, w = x.shape
    p = padding
    hp, wp = h + 2 * p, w + 2 * p
    grid = xt[:, :n * hp * wp].view(c, n, hp, wp)
    copy = functools.partial(grid[:, :, p:p + h, p:p + w].copy_, x.transpose(0, 1))
    if xt.numel() < ZERO_WHOLE_BELOW:
        return [xt.zero_, copy]
    tail = xt[:, n * hp * wp:]
    return [copy, *_zeros_outside(grid, (p, p + h), (p, p + w)),
            *([tail.zero_] if tail.shape[1] else [])]


def _zeros_outside(plane: torch.Tensor, rows, cols) -> list:
    """Calls zeroing what lies outside rows x cols in the last two dimensions of ``plane``."""
    h, w = plane.shape[-2:]
    strips = []
    if rows[0] > 0:
        strips.append(plane[..., :rows[0], :])
    if rows[1] < h:
        strips.append(plane[..., rows[1]:, :])
    if cols[0] > 0:
        strips.append(plane[..., rows[0]:rows[1], :cols[0]])
    if cols[1] < w:
        strips.append(plane[..., rows[0]:rows[1], cols[1]:])
    return [strip.zero_ for strip in strips]
