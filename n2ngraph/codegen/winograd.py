"""Winograd F(4x4, 3x3): its transform matrices, and C source for its data transforms.

A 3x3 stride-1 convolution computes each 4x4 block of output from a 6x6 block of input
(Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016):

    Y = A^T [ (G g G^T) * (B^T d B) ] A        (* elementwise, over the 6x6 = 36 points)

With the 36 points as a batch, the channel sums are 36 matrix products (``torch.bmm``),
4x fewer multiplies than the direct 3x3 conv (36 per 16 outputs instead of 144). The
transforms of the data are memory-bound passes that torch can only do as several tensor
ops, each a pass over 2.25x expanded data; here each is one generated C loop nest:

- ``input``: x (N, C, H, W) -> V (36, C, T): every 6x6 tile, read once, zero outside x;
- ``output``: M (36, O, T) -> y (N, O, Ho, Wo): A^T m A per tile, plus the bias, and
  where asked, the leaky ReLU that follows the conv (an epilogue: one pass saved);
- ``grad_output``: gy (N, O, Ho, Wo) -> Gy (36, O, T): A g A^T per 4x4 tile of gy, which
  with V gives the weight gradient dU = sum over tiles of Gy V^T, then gW = G^T dU G.

T counts tiles, batch-major: tile (n, i, j) is ``(n * th + i) * tw + j``, th x tw tiles
of 4x4 cover the output. Shapes and strides are arguments, so one library serves every
conv; the matrices are written into the source as unrolled sums (zero terms left out).
Every tensor may be any strided view; V, M and Gy are the kernel's own contiguous work.
"""

from __future__ import annotations

from fractions import Fraction

OUT, TAPS, IN = 4, 3, 6  # F(4x4, 3x3): 4x4 outputs, 3x3 kernel, 6x6 input tiles

BT = ((4, 0, -5, 0, 1, 0),
      (0, -4, -4, 1, 1, 0),
      (0, 4, -4, -1, 1, 0),
      (0, -2, -1, 2, 1, 0),
      (0, 2, -1, -2, 1, 0),
      (0, 4, 0, -5, 0, 1))
"""B^T (6x6): the input transform, interpolation points 0, 1, -1, 2, -2 and infinity."""

G = ((Fraction(1, 4), 0, 0),
     (Fraction(-1, 6), Fraction(-1, 6), Fraction(-1, 6)),
     (Fraction(-1, 6), Fraction(1, 6), Fraction(-1, 6)),
     (Fraction(1, 24), Fraction(1, 12), Fraction(1, 6)),
     (Fraction(1, 24), Fraction(-1, 12), Fraction(1, 6)),
     (0, 0, 1))
"""G (6x3): the kernel transform, done by torch (the weights are small)."""

AT = ((1, 1, 1, 1, 1, 0),
      (0, 1, -1, 2, -2, 0),
      (0, 1, 1, 4, 4, 0),
      (0, 1, -1, 8, -8, 1))
"""A^T (4x6): the output transform."""


def transpose(matrix):
    return tuple(zip(*matrix))


# ---- the C source -----------------------------------------------------------------

def _term(coefficient, value: str) -> str:
    if coefficient == 1:
        return f"+ {value}"
    if coefficient == -1:
        return f"- {value}"
    sign = "-" if coefficient < 0 else "+"
    return f"{sign} {abs(coefficient)} * {value}"


def _sum(row, values) -> str:
    """``sum_k row[k] * values[k]`` as a C expression, zero terms left out."""
    return " ".join(_term(c, v) for c, v in zip(row, values) if c != 0).removeprefix("+ ")


def _two_d(matrix, source, target) -> list[str]:
    """C statements for ``target = matrix @ source @ matrix^T`` on one tile, unrolled:
    columns first into scalars ``t<row>_<col>``, then rows. ``source(r, c)`` and
    ``target(r, c)`` give the C lvalue of an element."""
    rows, inner = len(matrix), len(matrix[0])
    lines = [f"const T t{a}_{col} = {_sum(matrix[a], [source(k, col) for k in range(inner)])};"
             for col in range(inner) for a in range(rows)]
    lines += [f"{target(a, b)} = {_sum(matrix[b], [f't{a}_{k}' for k in range(inner)])};"
              for a in range(rows) for b in range(rows)]
    return lines


BLOCK = 128
"""Tiles of a row transformed together: the per-thread arrays are [6][6][BLOCK], about
40 KB in double, whatever the image's width (a thread's stack may be small)."""

_HEADER = f"""\
#include <stdint.h>
typedef int64_t I;
#define BLOCK {BLOCK}
"""

# Each transform runs over one row of tiles at a time: the row's tiles are gathered into
# a local array [row][column][tile] so that the unrolled transform is one loop over tiles
# with unit-stride reads and writes, which the compiler vectorises (``omp simd``).

_INPUT = """\
void wino_input_{S}(const T* x, T* V, I N, I C, I H, I W, I sn, I sc, I sh, I sw,
                    I pad_top, I pad_left, I th, I tw, int threads)
{{
  const I tiles = N * th * tw, stride = C * tiles;
  #pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
  for (I c = 0; c < C; c++)
    for (I n = 0; n < N; n++) {{
      T d[6][6][BLOCK], line[4 * BLOCK + 2];
      const T* plane = x + n * sn + c * sc;
      for (I i = 0; i < th; i++)
        for (I j0 = 0; j0 < tw; j0 += BLOCK) {{
          const I jn = tw - j0 < BLOCK ? tw - j0 : BLOCK, width = 4 * jn + 2;
          const I left = 4 * j0 - pad_left;  /* the input column of line[0] */
          const I lo = left >= 0 ? 0 : (-left < width ? -left : width);
          const I hi = W - left < width ? (W - left > lo ? W - left : lo) : width;
          for (I r = 0; r < 6; r++) {{
            const I h = 4 * i + r - pad_top;
            if (h < 0 || h >= H) {{
              for (I q = 0; q < width; q++) line[q] = (T)0;
            }} else {{
              const T* row = plane + h * sh + left * sw;
              for (I q = 0; q < lo; q++) line[q] = (T)0;
              for (I q = lo; q < hi; q++) line[q] = row[q * sw];
              for (I q = hi; q < width; q++) line[q] = (T)0;
            }}
            for (I s = 0; s < 6; s++)
              for (I j = 0; j < jn; j++)
                d[r][s][j] = line[4 * j + s];
          }}
          T* out = V + c * tiles + (n * th + i) * tw + j0;
          #pragma omp simd
          for (I j = 0; j < jn; j++) {{
{TRANSFORM}
          }}
        }}
    }}
}}
"""

_OUTPUT = """\
void wino_output_{S}(const T* M, T* y, const T* bias, I N, I O, I Ho, I Wo,
                     I sn, I so, I sh, I sw, I th, I tw, int act, T slope, int threads)
{{
  const I tiles = N * th * tw, stride = O * tiles;
  #pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
  for (I o = 0; o < O; o++)
    for (I n = 0; n < N; n++) {{
      const T b = bias ? bias[o] : (T)0;
      T Y[4][4][BLOCK];
      T* plane = y + n * sn + o * so;
      for (I i = 0; i < th; i++)
        for (I j0 = 0; j0 < tw; j0 += BLOCK) {{
          const I jn = tw - j0 < BLOCK ? tw - j0 : BLOCK;
          const I end = 4 * (j0 + jn) < Wo ? 4 * (j0 + jn) : Wo;
          const T* m = M + o * tiles + (n * th + i) * tw + j0;
          #pragma omp simd
          for (I j = 0; j < jn; j++) {{
{TRANSFORM}
          }}
          for (I r = 0; r < 4 && 4 * i + r < Ho; r++) {{
            T* row = plane + (4 * i + r) * sh;
            for (I q = 4 * j0; q < end; q++) {{
              const T v = Y[r][q & 3][(q >> 2) - j0] + b;
              row[q * sw] = act && !(v > 0) ? v * slope : v;  /* leaky ReLU's own select */
            }}
          }}
        }}
    }}
}}
"""

_GRAD_OUTPUT = """\
void wino_grad_output_{S}(const T* gy, T* Gy, I N, I O, I Ho, I Wo,
                          I sn, I so, I sh, I sw, I th, I tw, int threads)
{{
  const I tiles = N * th * tw, stride = O * tiles;
  #pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
  for (I o = 0; o < O; o++)
    for (I n = 0; n < N; n++) {{
      T g[4][4][BLOCK];
      const T* plane = gy + n * sn + o * so;
      for (I i = 0; i < th; i++)
        for (I j0 = 0; j0 < tw; j0 += BLOCK) {{
          const I jn = tw - j0 < BLOCK ? tw - j0 : BLOCK;
          for (I r = 0; r < 4; r++) {{
            const I h = 4 * i + r;
            for (I s = 0; s < 4; s++)
              for (I j = 0; j < jn; j++) {{
                const I w = 4 * (j0 + j) + s;
                g[r][s][j] = (h < Ho && w < Wo) ? plane[h * sh + w * sw] : (T)0;
              }}
          }}
          T* out = Gy + o * tiles + (n * th + i) * tw + j0;
          #pragma omp simd
          for (I j = 0; j < jn; j++) {{
{TRANSFORM}
          }}
        }}
    }}
}}
"""


def _functions(suffix: str, c_type: str) -> str:
    """The three transforms for one element type."""
    def indented(lines):
        return "\n".join(" " * 12 + line for line in lines)
    into = lambda a, b: f"out[({a * IN + b}) * stride + j]"
    transforms = {
        _INPUT: _two_d(BT, lambda r, c: f"d[{r}][{c}][j]", into),
        _OUTPUT: _two_d(AT, lambda r, c: f"m[({r * IN + c}) * stride + j]", lambda r, c: f"Y[{r}][{c}][j]"),
        _GRAD_OUTPUT: _two_d(transpose(AT), lambda r, c: f"g[{r}][{c}][j]", into),
    }
    text = "".join(template.format(S=suffix, TRANSFORM=indented(lines))
                   for template, lines in transforms.items())
    return f"#define T {c_type}\n{text}#undef T\n"


def source() -> str:
    """The C source of the three transforms, for float (``_f32``) and double (``_f64``)."""
    return _HEADER + _functions("f32", "float") + _functions("f64", "double")
