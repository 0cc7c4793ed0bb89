"""n2ngraph: a from-scratch graph compiler for training Noise2Noise denoisers.

The package is layered; each layer imports only the ones below it:

    app/        training, evaluation, denoising photos, the command line
    compat/     the course's module API (Conv2d, ReLU, Sequential, SGD), compiled
    runtime/    Program: plans per input shape, buffers, optimizers, CUDA replay
    compiler/   pure passes, one IR to the next:
                parse -> Spec -> graph -> rewrite -> autodiff -> lower -> schedule -> memory
    kernels/    how ops with several ways to be computed are computed (conv GEMMs, tiles)
    ops/        what each op is: attributes, shape rule, VJP rules, reference kernels
    errors.py   SpecError, the one error a bad spec gives

Only the runtime mutates tensors, and only those it allocated up front.
"""

from .errors import SpecError
from .runtime.program import Compiled, Program, compile
from .compiler.parse import load_spec, parse_spec
from .compiler.spec import Spec

__all__ = ["SpecError", "Spec", "load_spec", "parse_spec", "compile", "Program", "Compiled"]
__version__ = "0.1.0"
