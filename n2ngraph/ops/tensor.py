"""Ops that move values around without arithmetic: what a U-Net's skip connections
(concat) and its photos of any size (pad, then crop) are made of."""

from __future__ import annotations

import functools

import attrs

from ..errors import SpecError
from .base import VJP, Op, Shape, attribute, check_rank, in_order, register


@register
@attrs.frozen
class Concat(Op):
    """y = [a, b] along the channel axis (dim 1), as torch.cat((a, b), dim=1).

    Each input's gradient is its own channel slice of the output gradient: a's the
    first channels, b's the last.
    """

    name = "concat"
    inputs = ("a", "b")
    vjps = {
        "a": VJP("grad_a", needs=("gout",)),
        "b": VJP("grad_b", needs=("gout",)),
    }

    def infer(self, a: Shape, b: Shape) -> Shape:
        check_rank(a, 4, "concat input a (N, C, H, W)")
        check_rank(b, 4, "concat input b (N, C, H, W)")
        (na, ca, ha, wa), (nb, cb, hb, wb) = a, b
        if (na, ha, wa) != (nb, hb, wb):
            raise SpecError(f"cannot concatenate {tuple(a)} and {tuple(b)} on channels: "
                            f"batch, height and width must agree", field="in")
        return (na, ca + cb, ha, wa)

    def forward(self, out, ws, a, b):
        channels = a.shape[1]
        out[:, :channels].copy_(a)
        out[:, channels:].copy_(b)

    def grad_a(self, grad, ws, gout):
        grad.copy_(gout[:, :grad.shape[1]])

    def grad_b(self, grad, ws, gout):
        grad.copy_(gout[:, gout.shape[1] - grad.shape[1]:])


def reflected(index: int, size: int) -> int:
    """The source of position ``index`` when an axis of ``size`` values is extended by
    reflection about its end values (torch's 'reflect': c, b, | a, b, c, | b, a), past
    the last (index >= size) or before the first (index < 0), repeating the reflection
    for pads longer than the axis."""
    period = 2 * (size - 1)
    if period == 0:
        return 0
    q = index % period
    return q if q < size else period - q


@register
@attrs.frozen
class Pad(Op):
    """Values appended below and to the right, up to the next multiple of ``multiple``
    in height and width (nothing when already one): zeros, as torch's functional pad by
    (0, pw, 0, ph), or the image mirrored about its last row and column (mode
    'reflect', as torch's 'reflect' pad where the pad is shorter than the image).

    What lets a U-Net that halves the image d times take a photo of any size: pad by
    2**d in front, ``crop`` back to the input's size at the end. Mirroring keeps the
    border pixels' neighbourhoods photo-like instead of black. The gradient is the
    output gradient's top-left block, plus, for 'reflect', each padded row and column's
    gradient added onto the row or column it copies.
    """

    name = "pad"
    inputs = ("x",)
    vjps = {"x": VJP("grad_x", needs=("gout",))}

    multiple: int = attribute(int, minimum=1, doc="height and width become multiples of it")
    mode: str = attribute(str, default="zeros", choices=("zeros", "reflect"),
                          doc="what fills the pad: zeros, or the image mirrored")

    def infer(self, x: Shape) -> Shape:
        check_rank(x, 4, "pad input (N, C, H, W)")
        n, c, h, w = x
        m = self.multiple
        return (n, c, -(-h // m) * m, -(-w // m) * m)

    def workspace(self, kernel, shapes):
        n, c, h, _ = shapes["x"]
        if kernel == "grad_x" and self.mode == "reflect":
            return {"fold": (n, c, h, shapes["out"][3])}  # row gradients folded, full width
        return {}

    # ---- kernels: the copies and adds bound once, at compile time ----------------
    def prepare(self, kernel, result, ws, /, **tensors):
        return getattr(self, f"_prepare_{kernel}")(result, ws, **tensors)

    def forward(self, out, ws, x):
        self.prepare("forward", out, ws, x=x)()

    def grad_x(self, grad, ws, gout):
        self.prepare("grad_x", grad, ws, gout=gout)()

    def _sources(self, small: Shape, big: Shape):
        """(padded row, its source row) and (padded column, its source column) pairs."""
        (h, w), (ph, pw) = small[2:], big[2:]
        return ([(i, reflected(i, h)) for i in range(h, ph)],
                [(j, reflected(j, w)) for j in range(w, pw)])

    def _prepare_forward(self, out, ws, x):
        h, w = x.shape[2:]
        calls = [functools.partial(out[:, :, :h, :w].copy_, x)]
        if self.mode == "zeros":
            return in_order(*calls, out[:, :, h:].zero_, out[:, :, :h, w:].zero_)
        rows, columns = self._sources(x.shape, out.shape)
        # columns first, then whole rows, corners included
        calls += [functools.partial(out[:, :, :h, j].copy_, x[:, :, :, source])
                  for j, source in columns]
        calls += [functools.partial(out[:, :, i].copy_, out[:, :, source]) for i, source in rows]
        return in_order(*calls)

    def _prepare_grad_x(self, grad, ws, gout):
        h, w = grad.shape[2:]
        if self.mode == "zeros":
            return functools.partial(grad.copy_, gout[:, :, :h, :w])
        rows, columns = self._sources(grad.shape, gout.shape)
        fold = ws["fold"]
        # the reverse of forward: rows first, then columns
        return in_order(functools.partial(fold.copy_, gout[:, :, :h]),
                        *[functools.partial(fold[:, :, source].add_, gout[:, :, i])
                          for i, source in rows],
                        functools.partial(grad.copy_, fold[:, :, :, :w]),
                        *[functools.partial(grad[:, :, :, source].add_, fold[:, :, :, j])
                          for j, source in columns])


@register
@attrs.frozen
class Crop(Op):
    """x cut to the height and width of ``like``, keeping its top-left corner: undoes
    ``pad`` (``like`` is the unpadded input). ``like`` gives only its shape, so its
    gradient is zero; x's is the output gradient with zeros where x was cut off.
    """

    name = "crop"
    inputs = ("x", "like")
    vjps = {
        "x": VJP("grad_x", needs=("gout",)),
        # reads gout only so that it is scheduled with the rest of the backward pass
        "like": VJP("grad_like", needs=("gout",)),
    }

    def infer(self, x: Shape, like: Shape) -> Shape:
        check_rank(x, 4, "crop input x (N, C, H, W)")
        check_rank(like, 4, "crop input like (N, C, H, W)")
        n, c, h, w = x
        if like[0] != n or like[2] > h or like[3] > w:
            raise SpecError(f"cannot crop {tuple(x)} to the size of {tuple(like)}: the batch "
                            f"must agree and like must be no taller or wider", field="in")
        return (n, c, like[2], like[3])

    def forward(self, out, ws, x, like):
        h, w = out.shape[2:]
        out.copy_(x[:, :, :h, :w])

    def grad_x(self, grad, ws, gout):
        h, w = gout.shape[2:]
        grad[:, :, :h, :w].copy_(gout)
        grad[:, :, h:].zero_()
        grad[:, :, :h, w:].zero_()

    def grad_like(self, grad, ws, gout):
        grad.zero_()
