"""The compiler: pure passes, each from one immutable IR to the next.

    parse.py      YAML -> Spec                     (spec.py: validated, frozen attrs)
    shapes.py     Spec + input shapes -> shapes    (the ops' shape rules)
    graph.py      Spec -> forward DAG              (one frozen Node per value)
    rewrite.py    forward DAG -> forward DAG       (cheaper equivalent subgraphs)
    autodiff.py   forward DAG -> joint DAG         (the ops' VJP rules)
    schedule.py   joint DAG -> Schedule            (order, and what dies when)
    memory.py     Schedule -> MemoryPlan           (liveness, reuse, in place)
    fit.py        Spec or MemoryPlan -> SpecError  (bytes that cannot fit, before allocation)

Nothing here allocates a tensor or runs a kernel: that is ``runtime/``.
"""
