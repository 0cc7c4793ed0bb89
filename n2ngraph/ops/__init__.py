"""The op library: what each op is. Each module holds whole ops: attributes, shape
rule, VJP rules and the op's own kernels (the ones a plan runs, or for ops that
``kernels/`` computes in several ways, a plain reference).

To add an op, write one class in one module (see ``relu`` in ``activations.py`` for the
smallest complete example), decorate it with ``@register``, import the module here, and
add it to the op tests' table (``tests/test_ops.py``).
"""

from . import activations, arithmetic, conv2d, conv_transpose, losses, pool, tensor, upsample  # noqa: F401  (registers the ops)
from .base import OPS, VJP, Op, Shape, register, scalar
from .gradients import Accumulate, Seed

__all__ = ["OPS", "VJP", "Op", "Shape", "register", "scalar", "Accumulate", "Seed"]
