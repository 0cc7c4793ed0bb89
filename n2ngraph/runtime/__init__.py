"""The runtime: what runs a compiled plan, and everything that outlives one plan.

    executor.py   MemoryPlan -> Executable   (buffers allocated once, kernels bound)
    program.py    Program: compiles plans per input shape and runs them
    flat.py       parameters, gradients and optimizer state packed in flat buffers
    optim.py      SGD, Adam, gradient clipping, learning-rate schedules
    init.py       initial parameters

This is the only layer that mutates tensors, and only those it allocated up front.
"""
