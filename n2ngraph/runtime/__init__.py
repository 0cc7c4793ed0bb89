"""The runtime: what runs a compiled plan, and everything that outlives one plan.

    executor.py   MemoryPlan -> Executable   (buffers allocated once, kernels bound)
    plans.py      the pass driver: spec + kind of run + input shapes -> Compiled plan
    program.py    Program: compiles plans per input shape and runs them
    vjp.py        a module's backward plan in two halves: its forward keeps, its backward reads
    parts.py      a training batch split across CPU threads
    cuda_graphs.py  a training step or an inference replayed as one CUDA graph
    divergence.py where a diverging training step first went nan or inf
    state.py      parameters adopted or loaded from outside, checked against the spec
    flat.py       parameters, gradients and optimizer state packed in flat buffers
    optim.py      SGD, Adam, gradient clipping, learning-rate schedules
    init.py       initial parameters

This is the only layer that mutates tensors, and only those it allocated up front.
"""
