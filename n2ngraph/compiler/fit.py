"""Sizes that cannot fit: predicted bytes against the memory available, before any
allocation.

A spec with ``out_channels: 1000000000`` is valid in every other way; without this
check it reaches the allocator, which fails with a message naming no node ("tried to
allocate 216000000000 bytes"), or, just under the limit, swaps the machine to a halt.
Here the bytes are predicted from what the passes already know, so the error names the
node, its line and the bytes against what is available:

- at load time (``parse.py``): the parameters, from each op's ``params()`` shapes, at
  4 bytes an element (float32, the smallest dtype a plan runs in);
- when compiling a plan (``runtime/plans.py``): the plan's buffers
  (``MemoryPlan.planned_bytes``), before the executor allocates them.

Both are sums over shapes already at hand: cheap next to the passes that made them.
The memory available is the caller's to say (``host_available_bytes`` reads it for the
CPU; the runtime asks CUDA for a GPU); ``None`` means unknown, and checks nothing.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from ..errors import SpecError
from .graph import Graph
from .memory import MemoryPlan
from .spec import Spec

MEMINFO = Path("/proc/meminfo")


def host_available_bytes() -> int | None:
    """Bytes this process may still take, as far as the system says: the kernel's
    MemAvailable, or less where a cgroup (a container, a job scheduler) caps it; where
    there is no /proc (macOS), the physical memory; None where nothing can be read."""
    found = []
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        try:
            found.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, OSError, ValueError):  # no sysconf (Windows), or no such name
            pass
    for limit, usage in (("memory.max", "memory.current"),  # cgroup v2, then v1
                         ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            root = Path("/sys/fs/cgroup")
            found.append(int((root / limit).read_text()) - int((root / usage).read_text()))
        except (OSError, ValueError):  # absent, or "max": no cap
            pass
    return min(found) if found else None


def size_text(n: int) -> str:
    """Bytes for a message: exact, and in the unit a reader compares with."""
    if n >= 2**70:
        return f"{n:.3g} bytes"
    if n < 2**20:
        return f"{n:,} bytes"
    unit, scale = ("GiB", 2**30) if n >= 2**30 else ("MiB", 2**20)
    return f"{n:,} bytes ({n / scale:,.1f} {unit})"


def check_params_fit_memory(spec: Spec, available: int | None, *, itemsize: int = 4,
                     copies: int = 1, what: str = "the parameters") -> None:
    """A SpecError naming the largest parameter and its node's line when ``copies`` of
    every parameter (the parameters themselves, their gradients, ...) at ``itemsize``
    bytes an element need more than ``available`` bytes."""
    if available is None:
        return
    total, largest = 0, None
    for node in spec.nodes:
        for role, shape in node.op.params().items():
            nbytes = math.prod(shape) * itemsize
            total += nbytes * copies
            if largest is None or nbytes > largest[0]:
                largest = (nbytes, node, role, shape)
    if total <= available:
        return
    nbytes, node, role, shape = largest
    raise SpecError(f"{what} need {size_text(total)}, more than the {size_text(available)} "
                    f"available; the largest, {node.name}.{role} of shape {tuple(shape)}, "
                    f"alone needs {size_text(nbytes)}", file=spec.file, line=node.line,
                    node=node.name)


def check_values_fit(graph: Graph, available: int | None, *, itemsize: int,
                     external=(), file: str | None = None, where: str = "") -> None:
    """Before lowering: a SpecError when the largest value a plan must hold (not a
    parameter or anything else ``external``) alone needs more than ``available`` bytes.
    A lower bound on the plan, checked first because lowering and planning a graph
    whose values cannot exist costs time in proportion to their size (tiles)."""
    if available is None:
        return
    sizes = {v: math.prod(n.shape) for v, n in graph.nodes.items()
             if n.kind != "param" and v not in external}
    largest = max(sizes, key=sizes.__getitem__, default=None)
    if largest is not None and sizes[largest] * itemsize > available:
        _refuse(graph, largest, graph[largest].shape, None, available, itemsize, file,
                where or "the plan")


def check_plan_fits(graph: Graph, plan: MemoryPlan, available: int | None, *,
                    file: str | None = None, where: str = "") -> None:
    """After planning: a SpecError naming the node of the largest planned value and its
    line when the plan's buffers need more than ``available`` bytes."""
    if available is None or plan.planned_bytes <= available:
        return
    key = max(plan.shapes, key=lambda k: math.prod(plan.shapes[k]))
    _refuse(graph, key, plan.shapes[key], plan.planned_bytes, available, plan.itemsize, file,
            where or "the plan")


def _refuse(graph: Graph, key: str, shape, total: int | None, available: int, itemsize: int,
            file: str | None, plan: str) -> None:
    """The error for a plan that cannot fit, at the node of ``key`` (a value, or a
    ``value#workspace``): the node that computes it, or whose gradient or parameter it
    is. ``total``: the whole plan's bytes, when known."""
    node = graph[key.split("#")[0]]
    owner = node.fwd or node.owner or key.split("#")[0]
    line = graph[owner].line if owner in graph else None
    value = f"value {key} of shape {tuple(shape)}"
    nbytes = size_text(math.prod(shape) * itemsize)
    if total is None:
        problem = f"{plan}: its {value} alone needs {nbytes}"
    else:
        problem = f"{plan} needs {size_text(total)} of buffers (its largest, {value}, {nbytes})"
    raise SpecError(f"{problem}, more than the {size_text(available)} available", file=file,
                    line=line, node=owner)
