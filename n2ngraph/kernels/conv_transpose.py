"""conv_transpose2d's kernels: its mirror conv's own kernels, on the frame.

A transposed convolution is the input gradient of its mirror conv (``ops/conv_transpose.py``
says why), so each of its computations is one of the mirror's, chosen from the same
table and prepared once with the rest:

    forward       frame = mirror.grad_x(gout=x);  y = frame cropped or zero-extended (+ bias)
    grad input    gx    = mirror.forward(x=frame of gy)
    grad weight   gW    = mirror.grad_weight(gout=x, x=frame of gy)

Without padding and output_padding the frame is y itself and no copy is made.
"""

from __future__ import annotations

import functools

import attrs

from ..ops.base import in_order
from ..ops.conv2d import Conv2d
from ..ops.conv_transpose import ConvTranspose2d
from .base import Kernel

FRAME = "transpose_frame"  # this op's workspace, kept apart from the mirror's names


def mirror_of(op: ConvTranspose2d) -> Conv2d:
    return Conv2d(op.out_channels, op.in_channels, op.kernel, stride=op.stride,
                  dilation=op.dilation, groups=op.groups, bias=False, keep_columns=False)


@attrs.frozen
class _OnTheFrame(Kernel):
    """One of the mirror conv's kernels (``mirrored``), run on the frame."""

    op: ConvTranspose2d
    mirrored: Kernel

    def workspace(self, shapes):
        frame = self.op.frame_shape(shapes["x"])
        scratch = dict(self.mirrored.workspace({"x": frame, "weight": shapes["weight"],
                                                "out": shapes["x"]}))
        if self.op.framed():
            scratch[FRAME] = frame
        return scratch

    def _frame_of(self, gout, ws) -> tuple:
        """gy laid into the frame (zero where y has no pixel), and the calls doing it."""
        if not self.op.framed():
            return gout, []
        frame = ws[FRAME]
        inside, window = self.op.overlap(frame, gout)
        return frame, [frame.zero_, functools.partial(window.copy_, inside)]


class TransposeForward(_OnTheFrame):
    def prepare(self, out, ws, /, x, weight, bias=None):
        frame = ws[FRAME] if self.op.framed() else out
        calls = [self.mirrored.prepare(frame, ws, gout=x, weight=weight)]
        if self.op.framed():  # rows beyond the frame: only output_padding's, bias alone
            inside, window = self.op.overlap(frame, out)
            calls += [out.zero_, functools.partial(inside.copy_, window)]
        if bias is not None:
            calls.append(functools.partial(out.add_, bias.view(1, -1, 1, 1)))
        return in_order(*calls)


class TransposeGradX(_OnTheFrame):
    def prepare(self, grad, ws, /, gout, weight):
        frame, calls = self._frame_of(gout, ws)
        return in_order(*calls, self.mirrored.prepare(grad, ws, x=frame, weight=weight))


class TransposeGradWeight(_OnTheFrame):
    def prepare(self, grad, ws, /, gout, x):
        frame, calls = self._frame_of(gout, ws)
        return in_order(*calls, self.mirrored.prepare(grad, ws, gout=x, x=frame))
