"""How ops are computed, where an op can be computed in several ways.

    base.py            Kernel: one computation of one op, its workspaces, prepared once
    layout.py          strided copies between NCHW and the layouts GEMMs want; tiles
    conv.py            conv2d: input side (im2col), output side, shifted windows, mirror
    conv_transpose.py  conv_transpose2d: its mirror conv's kernels on the frame
    upsample_conv.py   upsample_conv2d: four phase convs, or all phases as one GEMM
    winograd.py        conv2d by Winograd F(4x4, 3x3), its transforms generated C
    pointwise.py       generated one-pass leaky ReLU, max pooling, nearest upsampling
    table.py           which kernel runs what: the table ``compiler/lower.py`` reads

The ops' own methods (``ops/``) are the reference each kernel here is tested against.
"""

from .base import Kernel, OpKernel
from .table import epilogue, kernel_for

__all__ = ["Kernel", "OpKernel", "epilogue", "kernel_for"]
