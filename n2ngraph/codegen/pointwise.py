"""C source for the memory-bound ops that tensor ops do in several passes: one pass each.

- leaky ReLU, forward ``y = x > 0 ? x : slope x`` and backward ``gx = y > 0 ? g : slope g``
  (y > 0 exactly where x > 0 for slope >= 0), where torch needs a product and a maximum,
  and a comparison, a clamp and a product; each may run in place;
- nearest upsampling by s: each output row written once and copied s - 1 times;
  the gradient summed block by block in one pass instead of 2 (s - 1) strided adds;
- max pooling over k x k windows (stride s, padding p, windows that run past the input
  dropped, as the shape rule says), forward ``y = max over the window's real cells``,
  scanned in row-major order with a strict ``>`` (NaN wins and stays), as torch's kernel;
  backward: each window's gradient to its first cell equal to ``y``, where the tensor-op
  kernel makes k*k strided passes of several ops each. A library per (k, s, p): the
  window's taps are unrolled, and without padding carry no bounds checks.

Every tensor is contiguous (the executor's buffers are); planes (n, c) run in parallel.
The element type is a macro, so one template serves float (``_f32``) and double (``_f64``).
"""

from __future__ import annotations

PARALLEL_FROM = 1 << 15
"""Elements below which a pass runs on one thread: a parallel region costs a few
microseconds, about what one thread takes for this many elements."""

_TEMPLATE = """\
void leaky_forward_{S}(const T* x, T* y, I n, T slope, int threads)
{{
  #pragma omp parallel for simd schedule(static) num_threads(threads) if(n >= {PARALLEL})
  for (I i = 0; i < n; i++) {{
    const T v = x[i];
    y[i] = v > 0 ? v : v * slope;
  }}
}}

void leaky_backward_{S}(const T* g, const T* y, T* gx, I n, T slope, int threads)
{{
  #pragma omp parallel for simd schedule(static) num_threads(threads) if(n >= {PARALLEL})
  for (I i = 0; i < n; i++)
    gx[i] = y[i] > 0 ? g[i] : g[i] * slope;
}}

"""


_POOL = """\
void maxpool_forward_{S}(const T* x, T* y, I planes, I H, I W, I Ho, I Wo, int threads)
{{
  #pragma omp parallel for schedule(static) num_threads(threads) if(planes * Ho * Wo >= {PARALLEL})
  for (I q = 0; q < planes; q++) {{
    const T* in = x + q * H * W;
    T* out = y + q * Ho * Wo;
    for (I oh = 0; oh < Ho; oh++)
      for (I ow = 0; ow < Wo; ow++) {{
        T m = -INFINITY;
{SCAN_MAX}
        out[oh * Wo + ow] = m;
      }}
  }}
}}

void maxpool_backward_{S}(const T* g, const T* x, const T* y, T* gx, I planes, I H, I W,
                          I Ho, I Wo, int threads)
{{
  #pragma omp parallel for schedule(static) num_threads(threads) if(planes * H * W >= {PARALLEL})
  for (I q = 0; q < planes; q++) {{
    const T* in = x + q * H * W;
    const T* grad = g + q * Ho * Wo;
    T* target = gx + q * H * W;
    for (I e = 0; e < H * W; e++) target[e] = 0;
    for (I oh = 0; oh < Ho; oh++)
      for (I ow = 0; ow < Wo; ow++) {{
        const T m = y[q * Ho * Wo + oh * Wo + ow];
        const T d = grad[oh * Wo + ow];
{SCAN_FIRST}
      }}
  }}
}}
"""


def _taps(kernel: int, stride: int, padding: int) -> list[tuple[str, str]]:
    """For each tap of a window in row-major order: the C condition that it lies on the
    input (empty where the padding is 0 and every tap does), and its index in a plane."""
    taps = []
    for i in range(kernel):
        for j in range(kernel):
            h, w = f"(oh * {stride} + {i - padding})", f"(ow * {stride} + {j - padding})"
            inside = f"{h} >= 0 && {h} < H && {w} >= 0 && {w} < W" if padding else ""
            taps.append((inside, f"{h} * W + {w}"))
    return taps


def _pool(kernel: int, stride: int, padding: int) -> tuple[str, str]:
    """The window's scans, unrolled for this kernel, stride and padding: the maximum
    (strict ``>``, NaN wins), and the gradient to the first cell equal to it."""
    scan_max, scan_first = [], []
    for inside, index in _taps(kernel, stride, padding):
        guard = f"if ({inside}) " if inside else ""
        scan_max.append(f"{guard}{{ const T v = in[{index}]; m = (v > m || v != v) ? v : m; }}")
        scan_first.append(f"{guard}if (in[{index}] == m) {{ target[{index}] += d; continue; }}")
    indent = " " * 8
    return "\n".join(indent + line for line in scan_max), "\n".join(indent + line for line in scan_first)


def _typed(template: str, **fields) -> str:
    return "".join(f"#define T {c_type}\n" + template.format(S=suffix, PARALLEL=PARALLEL_FROM, **fields)
                   + "#undef T\n" for suffix, c_type in (("f32", "float"), ("f64", "double")))


_UPSAMPLE = """\
void upsample_forward_{S}(const T* x, T* y, I rows, I W, int threads)
{{
  #pragma omp parallel for schedule(static) num_threads(threads) if(rows * W >= {PARALLEL})
  for (I r = 0; r < rows; r++) {{
    const T* in = x + r * W;
    T* out = y + r * {SCALE} * W * {SCALE};
    for (I w = 0; w < W; w++)
      for (I b = 0; b < {SCALE}; b++)
        out[w * {SCALE} + b] = in[w];
    for (I a = 1; a < {SCALE}; a++)
      memcpy(out + a * W * {SCALE}, out, sizeof(T) * W * {SCALE});
  }}
}}

void upsample_backward_{S}(const T* g, T* gx, I rows, I W, int threads)
{{
  const I width = W * {SCALE};
  #pragma omp parallel for schedule(static) num_threads(threads) if(rows * W >= {PARALLEL})
  for (I r = 0; r < rows; r++) {{
    const T* block = g + r * {SCALE} * width;
    T* out = gx + r * W;
    for (I w = 0; w < W; w++) {{
      T total = 0;
      for (I b = 0; b < {SCALE}; b++) {{
        const I at = w * {SCALE} + b;
        T column = block[at] + block[width + at];
        for (I a = 2; a < {SCALE}; a++) column += block[a * width + at];
        total = b == 0 ? column : total + column;
      }}
      out[w] = total;
    }}
  }}
}}
"""

_HEAD = "#include <stdint.h>\n#include <math.h>\n#include <string.h>\ntypedef int64_t I;\n"


def source() -> str:
    """The C source of the leaky ReLU kernels, for float (``_f32``) and double (``_f64``)."""
    return _HEAD + _typed(_TEMPLATE)


def pool_source(kernel: int, stride: int, padding: int) -> str:
    """The C source of max pooling with this kernel, stride and padding, the window's
    taps unrolled (and, without padding, no bounds checks: every tap is inside)."""
    scan_max, scan_first = _pool(kernel, stride, padding)
    return _HEAD + _typed(_POOL, SCAN_MAX=scan_max, SCAN_FIRST=scan_first)


def upsample_source(scale: int) -> str:
    """The C source of nearest upsampling by ``scale`` (at least 2), forward and
    backward; the gradient sums each block's rows, then its columns, in the order of
    ``ops/upsample.py``'s kernel, so that both give the same bits."""
    return _HEAD + _typed(_UPSAMPLE, SCALE=scale)
