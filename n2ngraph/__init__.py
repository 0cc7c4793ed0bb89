"""n2ngraph: a from-scratch graph compiler for training Noise2Noise denoisers.

The pipeline, one module per pass (each a pure function from one immutable IR to the
next; only the executor mutates, and only its own preallocated buffers):

    spec.py       YAML -> Spec                    (validated, frozen attrs)
    graph.py      Spec -> forward DAG             (networkx, shapes inferred)
    rewrite.py    forward DAG -> forward DAG      (cheaper equivalent subgraphs)
    autodiff.py   forward DAG -> joint DAG        (VJP rules from ops/)
    schedule.py   joint DAG -> Schedule           (order + frees)
    memory.py     Schedule -> MemoryPlan          (liveness, reuse, in place)
    executor.py   MemoryPlan -> Executable        (kernels bound to buffers)
    program.py    compile(): all of the above, plus parameters and optimizer
                  (flat.py: parameters, gradients and optimizer state packed flat)

    ops/          one op per class: attributes, shape rule, kernels, VJP rules
"""

from .errors import SpecError
from .runtime.program import Compiled, Program, compile
from .compiler.parse import load_spec, parse_spec
from .compiler.spec import Spec

__all__ = ["SpecError", "Spec", "load_spec", "parse_spec", "compile", "Program", "Compiled"]
__version__ = "0.1.0"
