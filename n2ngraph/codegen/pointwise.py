"""C source for the memory-bound ops that tensor ops do in several passes: one pass each.

- leaky ReLU, forward ``y = x > 0 ? x : slope x`` and backward ``gx = y > 0 ? g : slope g``
  (y > 0 exactly where x > 0 for slope >= 0), where torch needs a product and a maximum,
  and a comparison, a clamp and a product; each may run in place;
- max pooling over k x k windows (stride s, padding p, windows that run past the input
  dropped, as the shape rule says), forward ``y = max over the window's real cells``,
  scanned in row-major order with a strict ``>`` (NaN wins and stays), as torch's kernel;
  backward: each window's gradient to its first cell equal to ``y``, where the tensor-op
  kernel makes k*k strided passes of several ops each.

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

void maxpool_forward_{S}(const T* x, T* y, I planes, I H, I W, I Ho, I Wo,
                         I k, I s, I p, int threads)
{{
  #pragma omp parallel for schedule(static) num_threads(threads) if(planes * Ho * Wo >= {PARALLEL})
  for (I q = 0; q < planes; q++) {{
    const T* in = x + q * H * W;
    T* out = y + q * Ho * Wo;
    for (I oh = 0; oh < Ho; oh++)
      for (I ow = 0; ow < Wo; ow++) {{
        T m = -INFINITY;
        for (I i = 0; i < k; i++) {{
          const I h = oh * s - p + i;
          if (h < 0 || h >= H) continue;
          for (I j = 0; j < k; j++) {{
            const I w = ow * s - p + j;
            if (w < 0 || w >= W) continue;
            const T v = in[h * W + w];
            if (v > m || v != v) m = v;
          }}
        }}
        out[oh * Wo + ow] = m;
      }}
  }}
}}

void maxpool_backward_{S}(const T* g, const T* x, const T* y, T* gx, I planes, I H, I W,
                          I Ho, I Wo, I k, I s, I p, int threads)
{{
  #pragma omp parallel for schedule(static) num_threads(threads) if(planes * H * W >= {PARALLEL})
  for (I q = 0; q < planes; q++) {{
    const T* in = x + q * H * W;
    const T* out = y + q * Ho * Wo;
    const T* grad = g + q * Ho * Wo;
    T* target = gx + q * H * W;
    for (I e = 0; e < H * W; e++) target[e] = 0;
    for (I oh = 0; oh < Ho; oh++)
      for (I ow = 0; ow < Wo; ow++) {{
        const T m = out[oh * Wo + ow];
        int found = 0;
        for (I i = 0; i < k && !found; i++) {{
          const I h = oh * s - p + i;
          if (h < 0 || h >= H) continue;
          for (I j = 0; j < k; j++) {{
            const I w = ow * s - p + j;
            if (w < 0 || w >= W || in[h * W + w] != m) continue;
            target[h * W + w] += grad[oh * Wo + ow];
            found = 1;
            break;
          }}
        }}
      }}
  }}
}}
"""


def source() -> str:
    """The C source of the four kernels, for float (``_f32``) and double (``_f64``)."""
    head = "#include <stdint.h>\n#include <math.h>\ntypedef int64_t I;\n"
    body = "".join(f"#define T {c_type}\n" + _TEMPLATE.format(S=suffix, PARALLEL=PARALLEL_FROM)
                   + "#undef T\n" for suffix, c_type in (("f32", "float"), ("f64", "double")))
    return head + body
