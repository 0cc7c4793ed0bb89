"""Kernels n2ngraph generates: C source made from an op's parameters, compiled at run
time by the machine's C compiler (``build.py``) and called over the plan's buffers.

``winograd.py`` generates the data transforms of the Winograd F(4x4, 3x3) convolution.
The kernels that use them, with a tensor-op fallback that gives the same results, are
in ``kernels/winograd.py``.
"""

from .build import CodegenError, compiler, library

__all__ = ["CodegenError", "compiler", "library"]
