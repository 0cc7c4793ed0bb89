"""conv2d's kernels: three ways to run a convolution as GEMMs plus strided copies.

The GEMM wants its small dimension as large as possible (an [M, K] x [K, N] product
runs far slower when M is 3 than when it is 24), so a conv can unfold either side, or
neither. ``table.py`` picks one per conv (``unfold: auto``), or takes the spec's hint.

**input side** (classic im2col, any stride, any groups): the input's kh*kw shifted
windows are copied into a column matrix ``col`` (C*kh*kw, pixels), in tiles of about
``TILE_COLUMNS`` output pixels, each copied, multiplied and scattered while it is still
in cache:

    forward      y^T = W(O, C*kh*kw) @ col          (+ bias, fused into addmm)
    grad weight  gW  = gy^T(O, pixels) @ col^T
    grad input   gcol = W^T @ gy^T, then col2im: kh*kw strided adds into a padded buffer

A grouped conv's rows of W, col and y^T are its groups' one after the other, so each
product is one batched GEMM over the groups (``_gemm``) instead of one GEMM.

**output side** (stride 1, groups 1): one GEMM over the unshifted input or output
gradient computes every tap at once, and the kh*kw shifts move to the small side:

    forward      Z = W(kh*kw*O, C) @ x^T(C, N*H*W); y = bias + sum over taps of Z shifted
    grad input   gx^T = W(C, O*kh*kw) @ gycol, gycol the kh*kw shifted copies of gy
    grad weight  gW^T = x^T(C, N*H*W) @ gycol^T

**shifted windows** (no unfold, stride 1, groups 1): the zero-padded input laid out
channel-major and flat, ``xt`` (C, N*Hp*Wp), so that tap (a, b) of output pixel q reads
``xt[:, q + a*dh*Wp + b*dw]``: every tap is a GEMM on a shifted column window of ``xt``,
with no copy, over tiles of about ``TAP_TILE_COLUMNS`` pixels of the padded grid.

Padding is (top, bottom, left, right) throughout (``Conv2d.pads``): ``padding: same``
with an even kernel pads one zero more at the bottom and right. With stride 1 and
padding alike on both sides the input gradient is itself a forward: that of the
*mirror* conv (the kernel flipped and transposed) over gy, run by this same table
(``MirrorGradX``).
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
"""Output pixels per tile of the input side: a tile's column matrix (C*kh*kw rows by this
many columns) stays in cache between its copy and its GEMM."""

TAP_TILE_COLUMNS = 2048
"""Padded-grid pixels per tile of the shifted windows: the kh*kw GEMMs reread one tile of
``xt`` (C rows) and accumulate into one of ``yt`` (O rows), both kept in cache."""


def _tiles(n: int, ho: int, wo: int, tile: int) -> list[tuple[int, int, int, int]]:
    return layout.tiles(n, ho, wo, tile or TILE_COLUMNS)


# ---- the input side ---------------------------------------------------------------

def _windows(conv: Conv2d, padded: torch.Tensor, ho: int, wo: int) -> torch.Tensor:
    """A strided view (C, kh, kw, N, Ho, Wo) of every input window; no copy."""
    n, c = padded.shape[:2]
    sn, sc, sh, sw = padded.stride()
    (kh, kw), (dh, dw), (step_h, step_w) = conv.kernel, conv.dilation, conv.stride
    return padded.as_strided((c, kh, kw, n, ho, wo),
                             (sc, sh * dh, sw * dw, sn, sh * step_h, sw * step_w),
                             padded.storage_offset())


def _tile_views(conv: Conv2d, tile: int, padded, out_shape, col, spread):
    """For each tile of the output: the tile (n0, n1, r0, r1), its column matrix
    (C*kh*kw, columns), its windows in ``padded`` (C, kh, kw, n, rows, Wo) and its
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
    top, bottom, left, right = pads = conv.pads()
    padded = {"xpad": (n, c, top + h + bottom, left + w + right)} if any(pads) else {}
    kh, kw = conv.kernel
    return {col: (c * kh * kw, columns), spread: (o, columns), **padded}


def _by_group(t: torch.Tensor, groups: int) -> torch.Tensor:
    """A matrix (R, columns) as (groups, R / groups, columns) for a grouped conv's
    batched GEMM; the matrix itself when there is one group."""
    return t if groups == 1 else t.view(groups, t.shape[0] // groups, t.shape[1])


def _gemm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, bias=None, accumulate=False):
    """A call writing out = a @ b (+ bias), or adding a @ b to out: one GEMM for
    matrices, one batched GEMM over the groups for (groups, rows, columns) stacks."""
    if a.dim() == 2:
        if accumulate:
            return functools.partial(out.addmm_, a, b)
        if bias is None:
            return functools.partial(torch.mm, a, b, out=out)
        return functools.partial(torch.addmm, bias.view(-1, 1), a, b, out=out)
    if accumulate:
        return functools.partial(out.baddbmm_, a, b)
    if bias is None:
        return functools.partial(torch.bmm, a, b, out=out)
    return functools.partial(torch.baddbmm, bias.view(a.shape[0], -1, 1), a, b, out=out)


def _source(conv: Conv2d, x: torch.Tensor, ws) -> tuple[torch.Tensor, list]:
    """The input as the windows read it, zero-padded into ``xpad`` where it has one."""
    top, _, left, _ = conv.pads()
    return layout.padded(x, ws.get("xpad"), top, left)


@attrs.frozen
class InputSideForward(Kernel):
    conv: Conv2d
    tile: int = 0

    def workspace(self, shapes):
        return _input_side_workspace(self.conv, self.tile, shapes, "col", "yt")

    def prepare(self, out, ws, /, x, weight, bias=None):
        g = self.conv.groups
        w2d = _by_group(weight.view(self.conv.out_channels, -1), g)
        source, calls = _source(self.conv, x, ws)
        for (n0, n1, r0, r1), col, windows, yt in _tile_views(self.conv, self.tile, source,
                                                               out.shape, ws["col"], ws["yt"]):
            calls += [functools.partial(col.view(windows.shape).copy_, windows),
                      _gemm(w2d, _by_group(col, g), _by_group(yt, g), bias),
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
        o, g = self.conv.out_channels, self.conv.groups
        g2d = _by_group(grad.view(o, -1), g)
        if self._keeps({"out": gout.shape}):  # the forward's col, still intact
            columns = gout.numel() // o
            col = ws["col"].view(-1)[:ws["col"].shape[0] * columns].view(-1, columns)
            gt = ws["gt"].view(-1)[:gout.numel()].view(o, columns)
            return in_order(channel_major(gout, gt),
                            _gemm(_by_group(gt, g), _by_group(col, g).transpose(-2, -1), g2d))
        source, calls = _source(self.conv, x, ws)
        views = _tile_views(self.conv, self.tile, source, gout.shape, ws["col"], ws["gt"])
        for i, ((n0, n1, r0, r1), col, windows, gt) in enumerate(views):
            calls += [functools.partial(col.view(windows.shape).copy_, windows),
                      channel_major(gout[n0:n1, :, r0:r1, :], gt),
                      _gemm(_by_group(gt, g), _by_group(col, g).transpose(-2, -1), g2d,
                            accumulate=i > 0)]
        return in_order(*calls)


@attrs.frozen
class Col2imGradX(Kernel):
    """gx by col2im: each tile's gcol = W^T @ gy^T added back onto the input positions
    its columns came from (kh*kw strided adds into the zero-padded gradient). Any stride,
    padding and groups."""

    conv: Conv2d
    tile: int = 0

    def workspace(self, shapes):
        return _input_side_workspace(self.conv, self.tile, shapes, "gcol", "gt")

    def prepare(self, grad, ws, /, gout, weight):
        conv, gpad, g = self.conv, ws.get("xpad"), self.conv.groups
        target = grad if gpad is None else gpad
        w2d_t = _by_group(weight.view(conv.out_channels, -1), g).transpose(-2, -1)
        calls = [target.zero_]
        for (n0, n1, r0, r1), gcol, windows, gt in _tile_views(conv, self.tile, target, gout.shape,
                                                                ws["gcol"], ws["gt"]):
            pieces = gcol.view(windows.shape)
            calls += [channel_major(gout[n0:n1, :, r0:r1, :], gt),
                      _gemm(w2d_t, _by_group(gt, g), _by_group(gcol, g))]
            calls += [functools.partial(windows[:, i, j].add_, pieces[:, i, j])
                      for i in range(conv.kernel[0]) for j in range(conv.kernel[1])]
        if gpad is not None:
            top, _, left, _ = conv.pads()
            calls.append(functools.partial(
                grad.copy_, gpad[:, :, top:top + grad.shape[2], left:left + grad.shape[3]]))
        return in_order(*calls)


# ---- the output side (stride 1) ---------------------------------------------------

def _taps(conv: Conv2d, h: int, w: int, ho: int, wo: int):
    """For each tap (a, b): the output rows and columns it reaches, and the input rows
    and columns they read (stride 1: output i reads input i + a*dh - top)."""
    (kh, kw), (dh, dw) = conv.kernel, conv.dilation
    top, _, left, _ = conv.pads()
    for a in range(kh):
        rows = overlap(a * dh - top, h, ho)
        for b in range(kw):
            yield a * kw + b, rows, overlap(b * dw - left, w, wo)


def _gather_gout(conv: Conv2d, gout, gycol, x_shape):
    """gycol[(o, a, b), (n, h, w)] = gy[n, o, h - a*dh + top, w - b*dw + left], zero where that
    falls outside gy: every input pixel's view of the output gradient."""
    n, o, ho, wo = gout.shape
    h, w = x_shape[2], x_shape[3]
    cols = gycol.view(o, _area(conv), n, h, w)
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


def _area(conv: Conv2d) -> int:
    """The kernel's taps: kh*kw."""
    return conv.kernel[0] * conv.kernel[1]


def _output_side_workspace(conv: Conv2d, shapes) -> tuple[tuple, tuple, int]:
    n, c, h, w = shapes["x"]
    k2 = _area(conv)
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
        o, k2 = self.conv.out_channels, _area(self.conv)
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
        o, c, k2 = self.conv.out_channels, self.conv.in_channels, _area(self.conv)
        return in_order(_gather_gout(self.conv, gout, gycol, grad.shape),
                        functools.partial(w_t.view(c, o, k2).copy_,
                                          weight.view(o, c, k2).transpose(0, 1)),
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
        o, c, k2 = self.conv.out_channels, self.conv.in_channels, _area(self.conv)
        return in_order(_gather_gout(self.conv, gout, gycol, x.shape), channel_major(x, x_t),
                        functools.partial(torch.mm, x_t, gycol.t(), out=gw_t),  # (C, O*kh*kw)
                        functools.partial(grad.view(o, c, k2).copy_,
                                          gw_t.view(c, o, k2).transpose(0, 1)))


# ---- shifted windows of the flat padded input (stride 1) ---------------------------

def _shifts(conv: Conv2d, tile: int, x_shape, out_shape):
    """The padded map's (Hp, Wp); each tap's offset in the flat padded map; and the
    tiles (n0, n1, r0, r1, start, columns): the flat pixels [start, start + columns) of
    the padded grid that cover those output rows."""
    ho = out_shape[2]
    (kh, kw), (dh, dw) = conv.kernel, conv.dilation
    n, hp, wp = _padded_grid(conv, x_shape)
    offsets = [a * dh * wp + b * dw for a in range(kh) for b in range(kw)]
    spans = [(n0, n1, r0, r1, (n0 * hp + r0) * wp, ((n1 - n0 - 1) * hp + r1 - r0) * wp)
             for n0, n1, r0, r1 in layout.tiles(n, ho, wp, tile or TAP_TILE_COLUMNS)]
    return hp, wp, offsets, spans


def _padded_grid(conv: Conv2d, x_shape) -> tuple[int, int, int]:
    """(N, Hp, Wp): the batch and the zero-padded input's height and width."""
    n, _, h, w = x_shape
    top, bottom, left, right = conv.pads()
    return n, top + h + bottom, left + w + right


def _flat_input(conv: Conv2d, shapes) -> tuple[int, int]:
    """``xt``: the flat padded grid, and the reach of the last row's taps beyond it."""
    n, hp, wp = _padded_grid(conv, shapes["x"])
    return shapes["x"][1], n * hp * wp + (conv.kernel[1] - 1) * conv.dilation[1]


@attrs.frozen
class ShiftedForward(Kernel):
    conv: Conv2d
    tile: int = 0

    def workspace(self, shapes):
        *_, spans = _shifts(self.conv, self.tile, shapes["x"], shapes["out"])
        o, c, k2 = self.conv.out_channels, self.conv.in_channels, _area(self.conv)
        return {"xt": _flat_input(self.conv, shapes), "w_taps": (k2, o, c),
                "yt": (o, max(s[-1] for s in spans))}

    def prepare(self, out, ws, /, x, weight, bias=None):
        xt, w_taps, yt = ws["xt"], ws["w_taps"], ws["yt"]
        o, c, k2 = self.conv.out_channels, self.conv.in_channels, _area(self.conv)
        hp, wp, offsets, spans = _shifts(self.conv, self.tile, x.shape, out.shape)
        wo = out.shape[3]
        calls = [*flat_padded(x, xt, self.conv.pads()),
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
        n, hp, wp = _padded_grid(self.conv, shapes["x"])
        o, c, k2 = self.conv.out_channels, self.conv.in_channels, _area(self.conv)
        return {"xt": _flat_input(self.conv, shapes), "gt": (o, n * hp * wp), "g_taps": (k2, o, c)}

    def prepare(self, grad, ws, /, gout, x):
        xt, gt, g_taps = ws["xt"], ws["gt"], ws["g_taps"]
        o, c, k2 = self.conv.out_channels, self.conv.in_channels, _area(self.conv)
        n, _, ho, wo = gout.shape
        hp, wp, offsets, spans = _shifts(self.conv, self.tile, x.shape, gout.shape)
        grid = gt.view(o, n, hp, wp)  # gy on the padded grid, zero where no output is
        calls = [*flat_padded(x, xt, self.conv.pads()),
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

def _reach(conv: Conv2d) -> tuple[int, int]:
    """How far past its first pixel a window reads, down and across: (k - 1) * d."""
    return tuple((k - 1) * d for k, d in zip(conv.kernel, conv.dilation))


def mirrorable(conv: Conv2d) -> bool:
    """Whether gx is a conv of gy: stride 1, one group, and padding alike on both sides
    of each dimension and within the kernel's reach (the mirror's padding is the reach
    less it)."""
    top, bottom, left, right = conv.pads()
    reach_h, reach_w = _reach(conv)
    return (conv.stride == (1, 1) and conv.groups == 1 and top == bottom and left == right
            and top <= reach_h and left <= reach_w)


def mirror_of(conv: Conv2d, side: str) -> Conv2d:
    """For stride 1: the conv whose forward, with the kernel flipped and transposed,
    maps the output gradient to the input gradient, unfolding ``side``."""
    (reach_h, reach_w), (top, _, left, _) = _reach(conv), conv.pads()
    return Conv2d(conv.out_channels, conv.in_channels, conv.kernel,
                  padding=(reach_h - top, reach_w - left), dilation=conv.dilation, bias=False,
                  unfold=side, tile=conv.tile, keep_columns=False)


def _flip_index(o: int, c: int, kh: int, kw: int) -> torch.Tensor:
    """Positions in the (O, C, kh, kw) kernel of the (C, O, kh, kw) flipped one's values."""
    return torch.arange(o * c * kh * kw).view(o, c, kh, kw).transpose(0, 1).flip(2, 3).reshape(-1)


@attrs.frozen
class MirrorGradX(Kernel):
    """gx = the mirror conv's forward over gy (``forward``: that conv's forward kernel,
    chosen by the table like any other), with the kernel flipped and transposed."""

    conv: Conv2d
    forward: Kernel

    def workspace(self, shapes):
        o, c = self.conv.out_channels, self.conv.in_channels
        own = self.forward.workspace({"x": shapes["out"], "out": shapes["x"]})
        return {"w_flip": (c, o, *self.conv.kernel),
                **{f"mirror_{name}": s for name, s in own.items()}}

    def prepare(self, grad, ws, /, gout, weight):
        o, c, (kh, kw) = self.conv.out_channels, self.conv.in_channels, self.conv.kernel
        flip = constant(f"conv2d flip {o} {c} {kh} {kw}", lambda: _flip_index(o, c, kh, kw),
                        device=weight.device)
        own = {name[len("mirror_"):]: t for name, t in ws.items() if name.startswith("mirror_")}
        return in_order(functools.partial(torch.index_select, weight.view(-1), 0, flip,
                                          out=ws["w_flip"].view(-1)),
                        self.forward.prepare(grad, own, x=gout, weight=ws["w_flip"]))


@attrs.frozen
class BiasGrad(Kernel):
    """gb = gy summed over batch and space (every conv-like op's bias)."""

    def prepare(self, grad, ws, /, gout):
        return functools.partial(torch.sum, gout, dim=(0, 2, 3), out=grad)
