"""conv2d's kernels: three ways to run a convolution as GEMMs plus strided copies.

The GEMM wants its small dimension as large as possible (an [M, K] x [K, N] product
runs far slower when M is 3 than when it is 24), so a conv can unfold either side, or
neither. ``table.py`` picks one per conv (``unfold: auto``), or takes the spec's hint.

**input side** (classic im2col, any stride): the input's k*k shifted windows are copied
into a column matrix ``col`` (C*k*k, pixels), in tiles of about ``TILE_COLUMNS`` output
pixels, each copied, multiplied and scattered while it is still in cache:

    forward      y^T = W(O, C*k*k) @ col            (+ bias, fused into addmm)
    grad weight  gW  = gy^T(O, pixels) @ col^T
    grad input   gcol = W^T @ gy^T, then col2im: k*k strided adds into a padded buffer

**output side** (stride 1): one GEMM over the unshifted input or output gradient
computes every tap at once, and the k*k shifts move to the small side:

    forward      Z = W(k*k*O, C) @ x^T(C, N*H*W); y = bias + sum over taps of Z shifted
    grad input   gx^T = W(C, O*k*k) @ gycol, gycol the k*k shifted copies of gy
    grad weight  gW^T = x^T(C, N*H*W) @ gycol^T

**shifted windows** (no unfold, stride 1): the zero-padded input laid out channel-major
and flat, ``xt`` (C, N*Hp*Wp), so that tap (a, b) of output pixel q reads
``xt[:, q + a*d*Wp + b*d]``: every tap is a GEMM on a shifted column window of ``xt``,
with no copy, over tiles of about ``TAP_TILE_COLUMNS`` pixels of the padded grid.

With stride 1 the input gradient is itself a forward: that of the *mirror* conv (the
kernel flipped and transposed) over gy, run by this same table (``MirrorGradX``).
``x^T``, ``y^T``, ``gy^T`` are channel-major (C, N*H*W); the NCHW tensors the rest of
the graph uses are one strided copy away (``layout.py``).
"""

from __future__ import annotations

import functools

import attrs
import torch

from ..ops.base import constant, in_order
from ..ops.conv2d import Conv2d
from . import layout
from .base import Kernel
from .layout import channel_major, flat_padded, from_channel_major, overlap, zeros_outside

TILE_COLUMNS = 1024
"""Output pixels per tile of the input side: a tile's column matrix (C*k*k rows by this
many columns) stays in cache between its copy and its GEMM."""

TAP_TILE_COLUMNS = 2048
"""Padded-grid pixels per tile of the shifted windows: the k*k GEMMs reread one tile of
``xt`` (C rows) and accumulate into one of ``yt`` (O rows), both kept in cache."""


def _tiles(n: int, ho: int, wo: int, tile: int) -> list[tuple[int, int, int, int]]:
    return layout.tiles(n, ho, wo, tile or TILE_COLUMNS)


# ---- the input side ---------------------------------------------------------------

def _windows(conv: Conv2d, padded: torch.Tensor, ho: int, wo: int) -> torch.Tensor:
    """A strided view (C, k, k, N, Ho, Wo) of every input window; no copy."""
    n, c = padded.shape[:2]
    sn, sc, sh, sw = padded.stride()
    k, d, s = conv.kernel, conv.dilation, conv.stride
    return padded.as_strided((c, k, k, n, ho, wo), (sc, sh * d, sw * d, sn, sh * s, sw * s),
                             padded.storage_offset())


def _tile_views(conv: Conv2d, tile: int, padded, out_shape, col, spread):
    """For each tile of the output: the tile (n0, n1, r0, r1), its column matrix
    (C*k*k, columns), its windows in ``padded`` (C, k, k, n, rows, Wo) and its
    channel-major part (O, columns), both workspaces used from their start."""
    n, _, ho, wo = out_shape
    windows = _windows(conv, padded, ho, wo)
    rows, o = col.shape[0], spread.shape[0]
    for n0, n1, r0, r1 in _tiles(n, ho, wo, tile):
        columns = (n1 - n0) * (r1 - r0) * wo
        yield ((n0, n1, r0, r1), col.view(-1)[:rows * columns].view(rows, columns),
               windows[:, :, :, n0:n1, r0:r1, :], spread.view(-1)[:o * columns].view(o, columns))


def _input_side_workspace(conv: Conv2d, tile: int, shapes, col: str, spread: str) -> dict:
    """The column matrix of one tile, its channel-major result, and a padded input."""
    n, c, h, w = shapes["x"]
    _, o, ho, wo = shapes["out"]
    columns = max((n1 - n0) * (r1 - r0) * wo for n0, n1, r0, r1 in _tiles(n, ho, wo, tile))
    padded = {"xpad": (n, c, h + 2 * conv.padding, w + 2 * conv.padding)} if conv.padding else {}
    return {col: (c * conv.kernel ** 2, columns), spread: (o, columns), **padded}


@attrs.frozen
class InputSideForward(Kernel):
    conv: Conv2d
    tile: int = 0

    def workspace(self, shapes):
        return _input_side_workspace(self.conv, self.tile, shapes, "col", "yt")

    def prepare(self, out, ws, /, x, weight, bias=None):
        w2d = weight.view(self.conv.out_channels, -1)
        source, calls = layout.padded(x, ws.get("xpad"), self.conv.padding)
        for (n0, n1, r0, r1), col, windows, yt in _tile_views(self.conv, self.tile, source,
                                                               out.shape, ws["col"], ws["yt"]):
            gemm = (functools.partial(torch.mm, w2d, col, out=yt) if bias is None else
                    functools.partial(torch.addmm, bias.view(-1, 1), w2d, col, out=yt))
            calls += [functools.partial(col.view(windows.shape).copy_, windows), gemm,
                      from_channel_major(yt, out[n0:n1, :, r0:r1, :])]
        return in_order(*calls)


@attrs.frozen
class InputSideGradWeight(Kernel):
    """gW = gy^T @ col^T, tile by tile; where the forward also unfolds the input side
    and one tile holds the whole batch (``keep_columns``), its ``col`` is exactly the
    matrix needed, and is read instead of built again."""

    conv: Conv2d
    tile: int = 0
    keep_columns: bool = False

    def _keeps(self, shapes) -> bool:
        n, _, ho, wo = shapes["out"]
        return self.keep_columns and len(_tiles(n, ho, wo, self.tile)) == 1

    def shares(self, shapes):
        return {"col": "forward"} if self._keeps(shapes) else {}

    def workspace(self, shapes):
        own = _input_side_workspace(self.conv, self.tile, shapes, "col", "gt")
        return {"gt": own["gt"]} if self._keeps(shapes) else own  # and the forward's col

    def prepare(self, grad, ws, /, gout, x):
        o = self.conv.out_channels
        g2d = grad.view(o, -1)
        if self._keeps({"out": gout.shape}):  # the forward's col, still intact
            columns = gout.numel() // o
            col = ws["col"].view(-1)[:ws["col"].shape[0] * columns].view(-1, columns)
            gt = ws["gt"].view(-1)[:gout.numel()].view(o, columns)
            return in_order(channel_major(gout, gt), functools.partial(torch.mm, gt, col.t(), out=g2d))
        source, calls = layout.padded(x, ws.get("xpad"), self.conv.padding)
        views = _tile_views(self.conv, self.tile, source, gout.shape, ws["col"], ws["gt"])
        for i, ((n0, n1, r0, r1), col, windows, gt) in enumerate(views):
            calls += [functools.partial(col.view(windows.shape).copy_, windows),
                      channel_major(gout[n0:n1, :, r0:r1, :], gt),
                      functools.partial(torch.mm, gt, col.t(), out=g2d) if i == 0 else
                      functools.partial(g2d.addmm_, gt, col.t())]
        return in_order(*calls)


@attrs.frozen
class Col2imGradX(Kernel):
    """gx by col2im: each tile's gcol = W^T @ gy^T added back onto the input positions
    its columns came from (k*k strided adds into the zero-padded gradient). Any stride."""

    conv: Conv2d
    tile: int = 0

    def workspace(self, shapes):
        return _input_side_workspace(self.conv, self.tile, shapes, "gcol", "gt")

    def prepare(self, grad, ws, /, gout, weight):
        conv, gpad = self.conv, ws.get("xpad")
        target = grad if gpad is None else gpad
        w2d_t = weight.view(conv.out_channels, -1).t()
        calls = [target.zero_]
        for (n0, n1, r0, r1), gcol, windows, gt in _tile_views(conv, self.tile, target, gout.shape,
                                                                ws["gcol"], ws["gt"]):
            pieces = gcol.view(windows.shape)
            calls += [channel_major(gout[n0:n1, :, r0:r1, :], gt),
                      functools.partial(torch.mm, w2d_t, gt, out=gcol)]
            calls += [functools.partial(windows[:, i, j].add_, pieces[:, i, j])
                      for i in range(conv.kernel) for j in range(conv.kernel)]
        if gpad is not None:
            p = conv.padding
            calls.append(functools.partial(grad.copy_,
                                           gpad[:, :, p:p + grad.shape[2], p:p + grad.shape[3]]))
        return in_order(*calls)


# ---- the output side (stride 1) ---------------------------------------------------

def _taps(conv: Conv2d, h: int, w: int, ho: int, wo: int):
    """For each tap (a, b): the output rows and columns it reaches, and the input rows
    and columns they read (stride 1: output i reads input i + a*d - p)."""
    k, d, p = conv.kernel, conv.dilation, conv.padding
    for a in range(k):
        rows = overlap(a * d - p, h, ho)
        for b in range(k):
            yield a * k + b, rows, overlap(b * d - p, w, wo)


def _gather_gout(conv: Conv2d, gout, gycol, x_shape):
    """gycol[(o, a, b), (n, h, w)] = gy[n, o, h - a*d + p, w - b*d + p], zero where that
    falls outside gy: every input pixel's view of the output gradient."""
    n, o, ho, wo = gout.shape
    h, w = x_shape[2], x_shape[3]
    cols = gycol.view(o, conv.kernel * conv.kernel, n, h, w)
    gy = gout.transpose(0, 1)
    whole = gycol.numel() < layout.ZERO_WHOLE_BELOW
    calls = [gycol.zero_] if whole else []
    for tap, (yr, xr), (yc, xc) in _taps(conv, h, w, ho, wo):
        plane = cols[:, tap]
        if not (yr and yc):
            calls.extend([] if whole else [plane.zero_])
            continue
        calls.append(functools.partial(plane[:, :, xr[0]:xr[1], xc[0]:xc[1]].copy_,
                                       gy[:, :, yr[0]:yr[1], yc[0]:yc[1]]))
        calls.extend([] if whole else zeros_outside(plane, xr, xc))
    return in_order(*calls)


def _output_side_workspace(conv: Conv2d, shapes) -> tuple[tuple, tuple, int]:
    n, c, h, w = shapes["x"]
    k2 = conv.kernel * conv.kernel
    return (c, n * h * w), (conv.out_channels * k2, n * h * w), k2


@attrs.frozen
class OutputSideForward(Kernel):
    conv: Conv2d

    def workspace(self, shapes):
        x_t, taps, k2 = _output_side_workspace(self.conv, shapes)
        return {"x_t": x_t, "w_taps": (taps[0], x_t[0]), "taps": taps}

    def prepare(self, out, ws, /, x, weight, bias=None):
        x_t, w_taps, taps = ws["x_t"], ws["w_taps"], ws["taps"]
        n, c, h, w = x.shape
        o, k2 = self.conv.out_channels, self.conv.kernel ** 2
        each = taps.view(k2, o, n, h, w)
        y = out.transpose(0, 1)  # (O, N, Ho, Wo) view of the NCHW result
        start = (y.zero_ if bias is None else
                 functools.partial(y.copy_, bias.view(o, 1, 1, 1).expand_as(y)))
        reached = [(t, yr, xr, yc, xc) for t, (yr, xr), (yc, xc)
                   in _taps(self.conv, h, w, y.shape[2], y.shape[3]) if yr and yc]
        adds = [functools.partial(y[:, :, yr[0]:yr[1], yc[0]:yc[1]].add_,
                                  each[t, :, :, xr[0]:xr[1], xc[0]:xc[1]])
                for t, yr, xr, yc, xc in reached]
        return in_order(channel_major(x, x_t),
                        functools.partial(w_taps.view(k2, o, c).copy_,
                                          weight.view(o, c, k2).permute(2, 0, 1)),
                        functools.partial(torch.mm, w_taps, x_t, out=taps),  # every tap, unshifted
                        start, *adds)


@attrs.frozen
class OutputSideGradX(Kernel):
    conv: Conv2d

    def workspace(self, shapes):
        x_t, gycol, _ = _output_side_workspace(self.conv, shapes)
        return {"gycol": gycol, "w_t": (x_t[0], gycol[0]), "gx_t": x_t}

    def prepare(self, grad, ws, /, gout, weight):
        gycol, w_t, gx_t = ws["gycol"], ws["w_t"], ws["gx_t"]
        o, c, k = self.conv.out_channels, self.conv.in_channels, self.conv.kernel
        return in_order(_gather_gout(self.conv, gout, gycol, grad.shape),
                        functools.partial(w_t.view(c, o, k * k).copy_,
                                          weight.view(o, c, k * k).transpose(0, 1)),
                        functools.partial(torch.mm, w_t, gycol, out=gx_t),
                        from_channel_major(gx_t, grad))


@attrs.frozen
class OutputSideGradWeight(Kernel):
    conv: Conv2d

    def workspace(self, shapes):
        x_t, gycol, _ = _output_side_workspace(self.conv, shapes)
        return {"gycol": gycol, "x_t": x_t, "gw_t": (x_t[0], gycol[0])}

    def prepare(self, grad, ws, /, gout, x):
        gycol, x_t, gw_t = ws["gycol"], ws["x_t"], ws["gw_t"]
        o, c, k = self.conv.out_channels, self.conv.in_channels, self.conv.kernel
        return in_order(_gather_gout(self.conv, gout, gycol, x.shape), channel_major(x, x_t),
                        functools.partial(torch.mm, x_t, gycol.t(), out=gw_t),  # (C, O*k*k)
                        functools.partial(grad.view(o, c, k * k).copy_,
                                          gw_t.view(c, o, k * k).transpose(0, 1)))


# ---- shifted windows of the flat padded input (stride 1) ---------------------------

def _shifts(conv: Conv2d, tile: int, x_shape, out_shape):
    """The padded map's (Hp, Wp); each tap's offset in the flat padded map; and the
    tiles (n0, n1, r0, r1, start, columns): the flat pixels [start, start + columns) of
    the padded grid that cover those output rows."""
    n, _, h, w = x_shape
    ho = out_shape[2]
    k, d, p = conv.kernel, conv.dilation, conv.padding
    hp, wp = h + 2 * p, w + 2 * p
    offsets = [a * d * wp + b * d for a in range(k) for b in range(k)]
    spans = [(n0, n1, r0, r1, (n0 * hp + r0) * wp, ((n1 - n0 - 1) * hp + r1 - r0) * wp)
             for n0, n1, r0, r1 in layout.tiles(n, ho, wp, tile or TAP_TILE_COLUMNS)]
    return hp, wp, offsets, spans


def _flat_input(conv: Conv2d, shapes) -> tuple[int, int]:
    n, c, h, w = shapes["x"]
    hp, wp = h + 2 * conv.padding, w + 2 * conv.padding
    return c, n * hp * wp + (conv.kernel - 1) * conv.dilation


@attrs.frozen
class ShiftedForward(Kernel):
    conv: Conv2d
    tile: int = 0

    def workspace(self, shapes):
        *_, spans = _shifts(self.conv, self.tile, shapes["x"], shapes["out"])
        o, c, k2 = self.conv.out_channels, self.conv.in_channels, self.conv.kernel ** 2
        return {"xt": _flat_input(self.conv, shapes), "w_taps": (k2, o, c),
                "yt": (o, max(s[-1] for s in spans))}

    def prepare(self, out, ws, /, x, weight, bias=None):
        xt, w_taps, yt = ws["xt"], ws["w_taps"], ws["yt"]
        o, c, k2 = self.conv.out_channels, self.conv.in_channels, self.conv.kernel ** 2
        hp, wp, offsets, spans = _shifts(self.conv, self.tile, x.shape, out.shape)
        wo = out.shape[3]
        calls = [*flat_padded(x, xt, self.conv.padding),
                 functools.partial(w_taps.copy_, weight.view(o, c, k2).permute(2, 0, 1))]
        for n0, n1, r0, r1, start, columns in spans:
            y = yt.view(-1)[:o * columns].view(o, columns)
            windows = [xt[:, start + off:start + off + columns] for off in offsets]
            calls.append(functools.partial(torch.mm, w_taps[0], windows[0], out=y) if bias is None
                         else functools.partial(torch.addmm, bias.view(-1, 1), w_taps[0], windows[0],
                                                out=y))
            calls += [functools.partial(y.addmm_, w_taps[t], windows[t]) for t in range(1, k2)]
            grid = y.as_strided((n1 - n0, o, r1 - r0, wo), (hp * wp, columns, wp, 1), y.storage_offset())
            calls.append(functools.partial(out[n0:n1, :, r0:r1, :].copy_, grid))
        return in_order(*calls)


@attrs.frozen
class ShiftedGradWeight(Kernel):
    conv: Conv2d
    tile: int = 0

    def workspace(self, shapes):
        n, _, h, w = shapes["x"]
        o, c, k2 = self.conv.out_channels, self.conv.in_channels, self.conv.kernel ** 2
        hp, wp = h + 2 * self.conv.padding, w + 2 * self.conv.padding
        return {"xt": _flat_input(self.conv, shapes), "gt": (o, n * hp * wp), "g_taps": (k2, o, c)}

    def prepare(self, grad, ws, /, gout, x):
        xt, gt, g_taps = ws["xt"], ws["gt"], ws["g_taps"]
        o, c, k2 = self.conv.out_channels, self.conv.in_channels, self.conv.kernel ** 2
        n, _, ho, wo = gout.shape
        hp, wp, offsets, spans = _shifts(self.conv, self.tile, x.shape, gout.shape)
        grid = gt.view(o, n, hp, wp)  # gy on the padded grid, zero where no output is
        calls = [*flat_padded(x, xt, self.conv.padding),
                 functools.partial(grid[:, :, :ho, :wo].copy_, gout.transpose(0, 1)),
                 *zeros_outside(grid, (0, ho), (0, wo))]
        for i, (*_, start, columns) in enumerate(spans):
            g = gt[:, start:start + columns]
            for t, off in enumerate(offsets):
                window = xt[:, start + off:start + off + columns].t()
                calls.append(functools.partial(torch.mm, g, window, out=g_taps[t]) if i == 0 else
                             functools.partial(g_taps[t].addmm_, g, window))
        calls.append(functools.partial(grad.view(o, c, k2).copy_, g_taps.permute(1, 2, 0)))
        return in_order(*calls)


# ---- stride 1: the input gradient as the mirror conv's forward ---------------------

def mirrorable(conv: Conv2d) -> bool:
    """Whether gx is a conv of gy: stride 1, and padding within the kernel's reach."""
    return conv.stride == 1 and conv.padding <= (conv.kernel - 1) * conv.dilation


def mirror_of(conv: Conv2d, side: str) -> Conv2d:
    """For stride 1: the conv whose forward, with the kernel flipped and transposed,
    maps the output gradient to the input gradient, unfolding ``side``."""
    reach = (conv.kernel - 1) * conv.dilation
    return Conv2d(conv.out_channels, conv.in_channels, conv.kernel, padding=reach - conv.padding,
                  dilation=conv.dilation, bias=False, unfold=side, tile=conv.tile,
                  keep_columns=False)


def _flip_index(o: int, c: int, k: int) -> torch.Tensor:
    """Positions in the (O, C, k, k) kernel of the (C, O, k, k) flipped one's values."""
    return torch.arange(o * c * k * k).view(o, c, k, k).transpose(0, 1).flip(2, 3).reshape(-1)


@attrs.frozen
class MirrorGradX(Kernel):
    """gx = the mirror conv's forward over gy (``forward``: that conv's forward kernel,
    chosen by the table like any other), with the kernel flipped and transposed."""

    conv: Conv2d
    forward: Kernel

    def workspace(self, shapes):
        o, c, k = self.conv.out_channels, self.conv.in_channels, self.conv.kernel
        own = self.forward.workspace({"x": shapes["out"], "out": shapes["x"]})
        return {"w_flip": (c, o, k, k), **{f"mirror_{name}": s for name, s in own.items()}}

    def prepare(self, grad, ws, /, gout, weight):
        o, c, k = self.conv.out_channels, self.conv.in_channels, self.conv.kernel
        flip = constant(f"conv2d flip {o} {c} {k}", lambda: _flip_index(o, c, k), device=weight.device)
        own = {name[len("mirror_"):]: t for name, t in ws.items() if name.startswith("mirror_")}
        return in_order(functools.partial(torch.index_select, weight.view(-1), 0, flip,
                                          out=ws["w_flip"].view(-1)),
                        self.forward.prepare(grad, own, x=gout, weight=ws["w_flip"]))


@attrs.frozen
class BiasGrad(Kernel):
    """gb = gy summed over batch and space (every conv-like op's bias)."""

    def prepare(self, grad, ws, /, gout):
        return functools.partial(torch.sum, gout, dim=(0, 2, 3), out=grad)
