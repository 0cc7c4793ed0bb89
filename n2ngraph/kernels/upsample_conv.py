"""upsample_conv2d's kernels: the four output phases, as 2x2 convs of the small map.

Output pixel (2i+r, 2j+s) of a 3x3 conv over the x2 upsampled map reads upsampled rows
2i+r-1 .. 2i+r+1, which are small rows i-1, i, i for r = 0 and i, i, i+1 for r = 1:
only two distinct rows (and columns), so each phase (r, s) is a 2x2 convolution of the
small map whose taps are sums of the 3x3 taps that read the same small pixel:

    r = 0:  small row i-1 <- tap 0;      small row i   <- taps 1 + 2
    r = 1:  small row i   <- taps 0 + 1; small row i+1 <- tap 2

That is 4 phases x 4 taps = 16 products per small pixel instead of 4 x 9 = 36, and no
upsampled tensor at all. The parameters stay the 3x3 ``weight`` of the spec's conv
node, mapped to and from the phase weights by one small matrix product each way:
``TAPS[phase]`` (4 x 9) says which 3x3 taps each 2x2 tap sums.

``Phase*`` kernels run each phase with a 2x2 conv's own kernels from the table (either
unfolded side) on strided views of the zero-padded input and of the output. Where the
phase convs would unfold their output side (few output channels, like the seed net's
24 -> 3), the ``AllPhases*`` kernels share the work instead: one GEMM computes all 16
taps, ``Z = W(16*O, C) @ X(C, N*(h+2)*(w+2))`` over the zero-padded channel-major input,
and tap (alpha, beta) of every phase is then one strided add (the phase index and the
tap's shift both move linearly through ``Z``, so one view spans all four phases). The
gradients gather the output gradient the same way, then ``gX = W^T @ G``, ``gW = G @ X^T``.
"""

from __future__ import annotations

import functools

import attrs
import torch

from ..ops.base import constant, in_order
from ..ops.conv2d import Conv2d
from .base import Kernel
from .layout import flat_padded

# ROWS[r][alpha]: the 3x3 kernel rows that phase r's 2x2 tap alpha adds up
ROWS = (((0,), (1, 2)), ((0, 1), (2,)))
PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))


def _taps_matrix() -> torch.Tensor:
    """TAPS[phase, (alpha, beta), (a, b)] = 1 where 3x3 tap (a, b) feeds 2x2 tap
    (alpha, beta) of that phase: shape (4, 4, 9)."""
    taps = torch.zeros(4, 4, 9, dtype=torch.float64)
    for p, (r, s) in enumerate(PHASES):
        for alpha in range(2):
            for beta in range(2):
                for a in ROWS[r][alpha]:
                    for b in ROWS[s][beta]:
                        taps[p, alpha * 2 + beta, a * 3 + b] = 1
    return taps


def taps_matrix(like: torch.Tensor) -> torch.Tensor:
    return constant("upsample_conv2d taps", _taps_matrix, device=like.device, dtype=like.dtype)


def phase_conv(conv: Conv2d) -> Conv2d:
    """The 2x2 conv each phase runs; its kernels' workspaces are the fused op's own."""
    return Conv2d(conv.in_channels, conv.out_channels, 2, bias=conv.bias, unfold=conv.unfold,
                  tile=conv.tile, keep_columns=False)


# ---- four phase convs -----------------------------------------------------------

def _phase_in(padded: torch.Tensor, r: int, s: int) -> torch.Tensor:
    """The (h+1) x (w+1) window of the padded small map that phase (r, s) reads."""
    h, w = padded.shape[2] - 2, padded.shape[3] - 2
    return padded[:, :, r:r + h + 1, s:s + w + 1]


def _phase_out(big: torch.Tensor, r: int, s: int) -> torch.Tensor:
    return big[:, :, r::2, s::2]


def _pad(x: torch.Tensor, xpad: torch.Tensor) -> list:
    h, w = x.shape[2:]
    return [xpad.zero_, functools.partial(xpad[:, :, 1:h + 1, 1:w + 1].copy_, x)]


def _own(ws: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len("phase_"):]: v for k, v in ws.items() if k.startswith("phase_")}


def _phase_weights(conv: Conv2d, weight: torch.Tensor, into: torch.Tensor):
    """A call writing the four phases' 2x2 kernels, (4, O, C, 2, 2), from the 3x3 one."""
    o, c = conv.out_channels, conv.in_channels
    return functools.partial(torch.matmul, weight.view(o * c, 9),
                             taps_matrix(weight).transpose(1, 2), out=into.view(4, o * c, 4))


@attrs.frozen
class _Phases(Kernel):
    """A kernel made of one phase conv kernel (``phase``) run for each of the four phases."""

    conv: Conv2d
    phase: Kernel

    def _phase_workspace(self, shapes) -> dict:
        n, c, h, w = shapes["x"]
        phase = {"x": (n, c, h + 1, w + 1), "out": (n, self.conv.out_channels, h, w)}
        return {f"phase_{k}": s for k, s in self.phase.workspace(phase).items()}

    def _sizes(self, shapes):
        n, c, h, w = shapes["x"]
        return (n, c, h + 2, w + 2), (4, self.conv.out_channels, c, 2, 2)


class PhaseForward(_Phases):
    def workspace(self, shapes):
        padded, weights = self._sizes(shapes)
        return {"xpad": padded, "w_phase": weights, **self._phase_workspace(shapes)}

    def prepare(self, out, ws, /, x, weight, bias=None):
        own, xpad, w_phase = _own(ws), ws["xpad"], ws["w_phase"]
        phases = [self.phase.prepare(_phase_out(out, r, s), own, x=_phase_in(xpad, r, s),
                                     weight=w_phase[p], bias=bias) for p, (r, s) in enumerate(PHASES)]
        return in_order(*_pad(x, xpad), _phase_weights(self.conv, weight, w_phase), *phases)


class PhaseGradX(_Phases):
    def workspace(self, shapes):
        padded, weights = self._sizes(shapes)
        n, c, h, w = shapes["x"]
        return {"w_phase": weights, "gx_phase": (n, c, h + 1, w + 1), "gxpad": padded,
                **self._phase_workspace(shapes)}

    def prepare(self, grad, ws, /, gout, weight):
        own, w_phase, gx_phase, gxpad = _own(ws), ws["w_phase"], ws["gx_phase"], ws["gxpad"]
        calls = [_phase_weights(self.conv, weight, w_phase), gxpad.zero_]
        for p, (r, s) in enumerate(PHASES):
            calls.append(self.phase.prepare(gx_phase, own, gout=_phase_out(gout, r, s),
                                            weight=w_phase[p]))
            calls.append(functools.partial(_phase_in(gxpad, r, s).add_, gx_phase))
        h, w = grad.shape[2:]
        calls.append(functools.partial(grad.copy_, gxpad[:, :, 1:h + 1, 1:w + 1]))
        return in_order(*calls)


class PhaseGradWeight(_Phases):
    def workspace(self, shapes):
        padded, weights = self._sizes(shapes)
        o, c = self.conv.out_channels, self.conv.in_channels
        return {"xpad": padded, "gw_phase": weights, "gw_taps": (4, o * c, 9),
                **self._phase_workspace(shapes)}

    def prepare(self, grad, ws, /, gout, x):
        own, xpad, gw_phase, gw_taps = _own(ws), ws["xpad"], ws["gw_phase"], ws["gw_taps"]
        o, c = self.conv.out_channels, self.conv.in_channels
        phases = [self.phase.prepare(gw_phase[p], own, gout=_phase_out(gout, r, s),
                                     x=_phase_in(xpad, r, s)) for p, (r, s) in enumerate(PHASES)]
        return in_order(*_pad(x, xpad), *phases,
                        functools.partial(torch.matmul, gw_phase.view(4, o * c, 4),
                                          taps_matrix(grad), out=gw_taps),
                        functools.partial(torch.sum, gw_taps, dim=0, out=grad.view(o * c, 9)))


# ---- the four phases as one GEMM --------------------------------------------------

def _taps16(like: torch.Tensor) -> torch.Tensor:
    """TAPS as a (16, 9) matrix: row 4 * phase + tap."""
    return taps_matrix(like).view(16, 9)


def _tap_view(z: torch.Tensor, out_shape, tap: int) -> torch.Tensor:
    """Tap ``tap`` = 2 alpha + beta of all four phases in ``z`` (16*O, N*(h+2)*(w+2)),
    each read at its shift: a (2, 2, O, N, h, w) view indexed by phase (r, s). Phase
    (r, s), tap (alpha, beta) at small pixel (i, j) is z[4 (2r + s) + tap] at padded
    pixel (r + alpha + i, s + beta + j): linear in r and s, so one view holds all four."""
    n, o, big_h, big_w = out_shape
    h, w = big_h // 2, big_w // 2
    wp, plane = w + 2, (h + 2) * (w + 2)
    per_tap = o * n * plane
    alpha, beta = divmod(tap, 2)
    return z.as_strided((2, 2, o, n, h, w),
                        (8 * per_tap + wp, 4 * per_tap + 1, n * plane, plane, wp, 1),
                        z.storage_offset() + tap * per_tap + alpha * wp + beta)


def _phases_view(big: torch.Tensor) -> torch.Tensor:
    """The (N, O, 2h, 2w) map as (2, 2, O, N, h, w): phase (r, s) is big[..., r::2, s::2]."""
    n, o, big_h, big_w = big.shape
    return big.view(n, o, big_h // 2, 2, big_w // 2, 2).permute(3, 5, 1, 0, 2, 4)


def _interleaved(by_phase: torch.Tensor, big: torch.Tensor) -> list:
    """Calls copying the phase-major (2, 2, O, N, h, w) maps into the (N, O, 2h, 2w) map
    they interleave into, one column phase at a time. The taps are summed phase-major
    first, where every add runs along contiguous rows: straight into the interleaved
    map, whose only unit stride is its 2-long column phase, each add runs far slower."""
    phases = _phases_view(big)
    return [functools.partial(phases[:, s].copy_, by_phase[:, s]) for s in range(2)]


def _gathered(gout: torch.Tensor, g: torch.Tensor, by_phase: torch.Tensor) -> list:
    """Calls writing G: each phase's output gradient at each of its taps' shifts, zero
    elsewhere (G is shaped like the forward's Z), from the output gradient taken apart
    into its phases once (``by_phase``), for the reason ``_interleaved`` gives."""
    phases = _phases_view(gout)
    return [g.zero_, *[functools.partial(by_phase[:, s].copy_, phases[:, s]) for s in range(2)],
            *[functools.partial(_tap_view(g, gout.shape, t).copy_, by_phase) for t in range(4)]]


def _all_weights(conv: Conv2d, weight: torch.Tensor, into: torch.Tensor):
    """A call writing all 16 phase taps, (phase, tap, O) x C, from the 3x3 kernel."""
    o, c = conv.out_channels, conv.in_channels
    return functools.partial(torch.mm, _taps16(weight), weight.view(o * c, 9).t(),
                             out=into.view(16, o * c))


def _all_phases_sizes(conv: Conv2d, shapes):
    n, c, h, w = shapes["x"]
    o = conv.out_channels
    grid = n * (h + 2) * (w + 2)
    return (c, grid), (16 * o, grid), (16 * o, c), (2, 2, o, n, h, w)


@attrs.frozen
class AllPhasesForward(Kernel):
    conv: Conv2d

    def workspace(self, shapes):
        xt, z, w_all, by_phase = _all_phases_sizes(self.conv, shapes)
        return {"xt": xt, "w_all": w_all, "z": z, "by_phase": by_phase}

    def prepare(self, out, ws, /, x, weight, bias=None):
        xt, w_all, z, by_phase = ws["xt"], ws["w_all"], ws["z"], ws["by_phase"]
        taps = [_tap_view(z, out.shape, t) for t in range(4)]
        first = (functools.partial(by_phase.copy_, taps[0]) if bias is None else
                 functools.partial(torch.add, taps[0], bias.view(1, 1, -1, 1, 1, 1), out=by_phase))
        return in_order(*flat_padded(x, xt, (1, 1, 1, 1)), _all_weights(self.conv, weight, w_all),
                        functools.partial(torch.mm, w_all, xt, out=z), first,
                        *[functools.partial(by_phase.add_, tap) for tap in taps[1:]],
                        *_interleaved(by_phase, out))


@attrs.frozen
class AllPhasesGradX(Kernel):
    conv: Conv2d

    def workspace(self, shapes):
        xt, g, w_all, by_phase = _all_phases_sizes(self.conv, shapes)
        return {"w_all": w_all, "g": g, "gxt": xt, "by_phase": by_phase}

    def prepare(self, grad, ws, /, gout, weight):
        w_all, g, gxt = ws["w_all"], ws["g"], ws["gxt"]
        n, c, h, w = grad.shape
        inner = gxt.view(c, n, h + 2, w + 2)[:, :, 1:h + 1, 1:w + 1].transpose(0, 1)
        return in_order(_all_weights(self.conv, weight, w_all), *_gathered(gout, g, ws["by_phase"]),
                        functools.partial(torch.mm, w_all.t(), g, out=gxt),
                        functools.partial(grad.copy_, inner))


@attrs.frozen
class AllPhasesGradWeight(Kernel):
    conv: Conv2d

    def workspace(self, shapes):
        xt, g, w_all, by_phase = _all_phases_sizes(self.conv, shapes)
        return {"xt": xt, "g": g, "gw_all": w_all, "by_phase": by_phase}

    def prepare(self, grad, ws, /, gout, x):
        xt, g, gw_all = ws["xt"], ws["g"], ws["gw_all"]
        o, c = self.conv.out_channels, self.conv.in_channels
        return in_order(*flat_padded(x, xt, (1, 1, 1, 1)), *_gathered(gout, g, ws["by_phase"]),
                        functools.partial(torch.mm, g, xt.t(), out=gw_all),
                        functools.partial(torch.mm, gw_all.view(16, o * c).t(), _taps16(grad),
                                          out=grad.view(o * c, 9)))
