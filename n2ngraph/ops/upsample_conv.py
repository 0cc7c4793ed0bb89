"""upsample_conv2d: nearest upsampling x2 followed by a 3x3 convolution (stride 1,
padding 1), computed as four 2x2 convolutions on the small map, one per output phase.

The compiler puts this op where a spec has ``upsample_nearest(scale=2)`` feeding a
``conv2d`` of that shape (``rewrite.fuse_upsample_conv``); specs never name it. Output
pixel (2i+r, 2j+s) of the convolution over the upsampled map reads upsampled rows
2i+r-1 .. 2i+r+1, which are small rows i-1, i, i for r = 0 and i, i, i+1 for r = 1:
only two distinct rows (and columns), so each phase (r, s) is a 2x2 convolution of
the small map whose taps are sums of the 3x3 taps that read the same small pixel:

    r = 0:  small row i-1 <- tap 0;      small row i   <- taps 1 + 2
    r = 1:  small row i   <- taps 0 + 1; small row i+1 <- tap 2

That is 4 phases x 4 taps = 16 products per small pixel instead of 4 x 9 = 36, and no
upsampled tensor at all. The parameters stay the 3x3 ``weight`` of the spec's conv
node (same names, shapes and gradients as the unfused pair), mapped to and from the
phase weights by one small matrix product each way: ``TAPS[phase]`` (4 x 9) says
which 3x3 taps each 2x2 tap sums. Each phase runs conv2d's own kernels (either
unfolded side) on a strided view of the zero-padded input and of the output.

Where the phase convs unfold their output side (few output channels, like the seed
net's 24 -> 3), the four phases share their work instead: one GEMM computes all 16
taps, ``Z = W(16*O, C) @ X(C, N*(h+2)*(w+2))`` over the zero-padded, channel-major
input ``X``, and tap (alpha, beta) of every phase is then one strided add: the phase
index and the tap's shift both move linearly through ``Z``, so one view spans all
four phases. The taps are summed into a phase-major buffer and interleaved into the
output once (``_interleaved`` says why). The gradients gather the output gradient the
same way (4 strided copies into ``G``, shaped like ``Z``), then ``gX = W^T @ G`` and
``gW = G @ X^T``. A step of the seed net at batch 4 then makes 32
tensor calls for this op instead of 110.
"""

from __future__ import annotations

import functools

import attrs
import torch

from ..errors import SpecError
from .base import VJP, Op, Shape, check_rank, constant, in_order
from .conv2d import Conv2d, flat_padded

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


def fusable(conv: Op) -> bool:
    return (isinstance(conv, Conv2d) and conv.kernel == 3 and conv.stride == 1
            and conv.padding == 1 and conv.dilation == 1)


@functools.lru_cache(maxsize=None)
def _phase_conv(conv: Conv2d) -> Conv2d:
    return Conv2d(conv.in_channels, conv.out_channels, 2, bias=conv.bias, unfold=conv.unfold,
                  tile=conv.tile, keep_columns=False)  # its kernels' workspaces are the op's own


def _check_conv(_instance, _field, conv) -> None:
    if not fusable(conv):
        raise SpecError(f"upsample_conv2d fuses a 3x3 conv2d with stride 1 and padding 1, "
                        f"got {conv!r}", field="conv")


@attrs.frozen
class UpsampleConv2d(Op):
    name = "upsample_conv2d"
    inputs = ("x",)
    vjps = {
        "x": VJP("grad_x", needs=("gout", "weight")),
        "weight": VJP("grad_weight", needs=("gout", "x")),
        "bias": VJP("grad_bias", needs=("gout",)),
    }

    conv: Conv2d = attrs.field(validator=_check_conv)

    def describe(self) -> str:
        """'upsample_conv2d' and the attributes of the conv it fused."""
        return self.name + self.conv.describe()[len(self.conv.name):]

    def params(self) -> dict[str, Shape]:
        return self.conv.params()

    def fans(self) -> tuple[int, int]:
        return self.conv.fans()

    def infer(self, x: Shape, **params: Shape) -> Shape:
        check_rank(x, 4, "upsample_conv2d input (N, C, H, W)")
        n, c, h, w = x
        big = self.conv.infer(x=(n, c, 2 * h, 2 * w))
        return big

    def _as_one(self, kernel: str) -> bool:
        """Whether ``kernel`` runs the four phases as one GEMM (their output side)."""
        return _phase_conv(self.conv).side(kernel) == "output"

    # ---- workspaces: the padded input, phase weights, and one phase conv's own ----------
    def workspace(self, kernel: str, shapes: dict[str, Shape]) -> dict[str, Shape]:
        if kernel == "grad_bias":
            return {}
        n, c, h, w = shapes["x"]
        o = self.conv.out_channels
        if self._as_one(kernel):
            grid = n * (h + 2) * (w + 2)
            xt, g, w_all, by_phase = (c, grid), (16 * o, grid), (16 * o, c), (2, 2, o, n, h, w)
            return {"forward": {"xt": xt, "w_all": w_all, "z": g, "by_phase": by_phase},
                    "grad_x": {"w_all": w_all, "g": g, "gxt": xt, "by_phase": by_phase},
                    "grad_weight": {"xt": xt, "g": g, "gw_all": w_all, "by_phase": by_phase}}[kernel]
        phase = {"x": (n, c, h + 1, w + 1), "out": (n, o, h, w)}
        own = {f"phase_{k}": s for k, s in _phase_conv(self.conv).workspace(kernel, phase).items()}
        padded = (n, c, h + 2, w + 2)
        weights = (4, o, c, 2, 2)
        if kernel == "forward":
            return {"xpad": padded, "w_phase": weights, **own}
        if kernel == "grad_x":
            return {"w_phase": weights, "gx_phase": phase["x"], "gxpad": padded, **own}
        return {"xpad": padded, "gw_phase": weights, "gw_taps": (4, o * c, 9), **own}

    # ---- kernels: prepared once (views and phase kernels bound), then only tensor ops --
    def prepare(self, kernel, result, ws, /, **tensors):
        if kernel == "grad_bias":
            return functools.partial(torch.sum, tensors["gout"], dim=(0, 2, 3), out=result)
        as_one = "_as_one" if self._as_one(kernel) else ""
        return getattr(self, f"_prepare{as_one}_{kernel}")(result, ws, **tensors)

    def forward(self, out, ws, x, weight, bias=None):
        self.prepare("forward", out, ws, x=x, weight=weight, bias=bias)()

    def grad_x(self, grad, ws, gout, weight):
        self.prepare("grad_x", grad, ws, gout=gout, weight=weight)()

    def grad_weight(self, grad, ws, gout, x):
        self.prepare("grad_weight", grad, ws, gout=gout, x=x)()

    def grad_bias(self, grad, ws, gout):
        self.prepare("grad_bias", grad, ws, gout=gout)()

    def _prepare_forward(self, out, ws, x, weight, bias=None):
        conv, own, xpad, w_phase = _phase_conv(self.conv), _own(ws), ws["xpad"], ws["w_phase"]
        phases = [conv.prepare("forward", _phase_out(out, r, s), own, x=_phase_in(xpad, r, s),
                               weight=w_phase[p], bias=bias) for p, (r, s) in enumerate(PHASES)]
        return in_order(*_pad(x, xpad), self._phase_weights(weight, w_phase), *phases)

    def _prepare_grad_x(self, grad, ws, gout, weight):
        conv, own, w_phase = _phase_conv(self.conv), _own(ws), ws["w_phase"]
        gx_phase, gxpad = ws["gx_phase"], ws["gxpad"]
        calls = [self._phase_weights(weight, w_phase), gxpad.zero_]
        for p, (r, s) in enumerate(PHASES):
            calls.append(conv.prepare("grad_x", gx_phase, own, gout=_phase_out(gout, r, s),
                                      weight=w_phase[p]))
            calls.append(functools.partial(_phase_in(gxpad, r, s).add_, gx_phase))
        h, w = grad.shape[2:]
        calls.append(functools.partial(grad.copy_, gxpad[:, :, 1:h + 1, 1:w + 1]))
        return in_order(*calls)

    def _prepare_grad_weight(self, grad, ws, gout, x):
        conv, own, xpad = _phase_conv(self.conv), _own(ws), ws["xpad"]
        gw_phase, gw_taps = ws["gw_phase"], ws["gw_taps"]
        o, c = self.conv.out_channels, self.conv.in_channels
        phases = [conv.prepare("grad_weight", gw_phase[p], own, gout=_phase_out(gout, r, s),
                               x=_phase_in(xpad, r, s)) for p, (r, s) in enumerate(PHASES)]
        return in_order(*_pad(x, xpad), *phases,
                      functools.partial(torch.matmul, gw_phase.view(4, o * c, 4),
                                        taps_matrix(grad), out=gw_taps),
                      functools.partial(torch.sum, gw_taps, dim=0, out=grad.view(o * c, 9)))

    # ---- the four phases as one: their output side ---------------------------------
    def _prepare_as_one_forward(self, out, ws, x, weight, bias=None):
        xt, w_all, z, by_phase = ws["xt"], ws["w_all"], ws["z"], ws["by_phase"]
        taps = [_tap_view(z, out.shape, t) for t in range(4)]
        first = (functools.partial(by_phase.copy_, taps[0]) if bias is None else
                 functools.partial(torch.add, taps[0], bias.view(1, 1, -1, 1, 1, 1), out=by_phase))
        return in_order(*flat_padded(x, xt, 1), self._all_weights(weight, w_all),
                        functools.partial(torch.mm, w_all, xt, out=z), first,
                        *[functools.partial(by_phase.add_, tap) for tap in taps[1:]],
                        *_interleaved(by_phase, out))

    def _prepare_as_one_grad_x(self, grad, ws, gout, weight):
        w_all, g, gxt = ws["w_all"], ws["g"], ws["gxt"]
        n, c, h, w = grad.shape
        inner = gxt.view(c, n, h + 2, w + 2)[:, :, 1:h + 1, 1:w + 1].transpose(0, 1)
        return in_order(self._all_weights(weight, w_all), *_gathered(gout, g, ws["by_phase"]),
                        functools.partial(torch.mm, w_all.t(), g, out=gxt),
                        functools.partial(grad.copy_, inner))

    def _prepare_as_one_grad_weight(self, grad, ws, gout, x):
        xt, g, gw_all = ws["xt"], ws["g"], ws["gw_all"]
        o, c = self.conv.out_channels, self.conv.in_channels
        return in_order(*flat_padded(x, xt, 1), *_gathered(gout, g, ws["by_phase"]),
                        functools.partial(torch.mm, g, xt.t(), out=gw_all),
                        functools.partial(torch.mm, gw_all.view(16, o * c).t(), _taps16(grad),
                                          out=grad.view(o * c, 9)))

    def _all_weights(self, weight: torch.Tensor, into: torch.Tensor):
        """A call writing all 16 phase taps, (phase, tap, O) x C, from the 3x3 kernel."""
        o, c = self.conv.out_channels, self.conv.in_channels
        return functools.partial(torch.mm, _taps16(weight), weight.view(o * c, 9).t(),
                                 out=into.view(16, o * c))

    def _phase_weights(self, weight: torch.Tensor, into: torch.Tensor):
        """A call writing the four phases' 2x2 kernels, (4, O, C, 2, 2), from the 3x3 one."""
        o, c = self.conv.out_channels, self.conv.in_channels
        return functools.partial(torch.matmul, weight.view(o * c, 9),
                                 taps_matrix(weight).transpose(1, 2), out=into.view(4, o * c, 4))


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
    they interleave into, one column phase at a time.

    The taps are summed phase-major first, where every add runs along contiguous rows:
    added straight into the interleaved map, whose only unit stride is its 2-long
    column phase, each add ran 3.5x slower (seed net, batch 4: 4 adds of 236 us against
    67 us for the same adds and this copy)."""
    phases = _phases_view(big)
    return [functools.partial(phases[:, s].copy_, by_phase[:, s]) for s in range(2)]


def _gathered(gout: torch.Tensor, g: torch.Tensor, by_phase: torch.Tensor) -> list:
    """Calls writing G: each phase's output gradient at each of its taps' shifts, zero
    elsewhere (G is shaped like the forward's Z), from the output gradient taken apart
    into its phases once (``by_phase``), for the reason ``_interleaved`` gives."""
    phases = _phases_view(gout)
    return [g.zero_, *[functools.partial(by_phase[:, s].copy_, phases[:, s]) for s in range(2)],
            *[functools.partial(_tap_view(g, gout.shape, t).copy_, by_phase) for t in range(4)]]


def _pad(x: torch.Tensor, xpad: torch.Tensor) -> list:
    h, w = x.shape[2:]
    return [xpad.zero_, functools.partial(xpad[:, :, 1:h + 1, 1:w + 1].copy_, x)]


def _phase_in(padded: torch.Tensor, r: int, s: int) -> torch.Tensor:
    """The (h+1) x (w+1) window of the padded small map that phase (r, s) reads."""
    h, w = padded.shape[2] - 2, padded.shape[3] - 2
    return padded[:, :, r:r + h + 1, s:s + w + 1]


def _phase_out(big: torch.Tensor, r: int, s: int) -> torch.Tensor:
    return big[:, :, r::2, s::2]


def _own(ws: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len("phase_"):]: v for k, v in ws.items() if k.startswith("phase_")}
