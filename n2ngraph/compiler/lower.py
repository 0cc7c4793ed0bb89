"""Pass 4: joint graph -> the same graph with every computed node's kernel chosen.

What a node computes is fixed by its op and the method its rule names (``forward``,
``grad_x``); *how* is chosen here, per node and device, from ``kernels/table.py``: which
side a conv's GEMMs unfold, in what tiles, whether the input gradient is the mirror
conv's forward. The choice changes how values are computed, never which, so it runs
after differentiation and before the memory plan, which sizes the chosen kernels'
workspaces.

One exception, ``fuse_epilogues``: where a node's only reader is an elementwise op its
kernel can apply as it writes (a leaky ReLU after a Winograd conv), the producer applies
it and the reader's kernel has nothing left to do: one pass over the tensor saved. The
producer's value then holds the reader's; nothing else reads it, and it is no output.
"""

from __future__ import annotations

import attrs
import torch

from ..kernels import epilogue, kernel_for
from .graph import Graph


def lower(graph: Graph, device: torch.device | str = "cpu", codegen: bool = True) -> Graph:
    """``graph`` with ``Node.impl`` set on every computed node, for ``device``; with
    ``codegen``, generated kernels where the table prefers them and they can run."""
    nodes = {value: attrs.evolve(node, impl=kernel_for(node.op, node.kernel, device, codegen))
             if node.op is not None else node for value, node in graph.nodes.items()}
    return fuse_epilogues(graph.replace(nodes=nodes))


def fuse_epilogues(graph: Graph) -> Graph:
    """``graph`` with each (producer, only reader) pair that ``kernels.epilogue`` can fuse
    given the fused kernels (see the module's docstring)."""
    nodes = dict(graph.nodes)
    for value, node in graph.nodes.items():
        readers = list(graph.successors(value))
        if node.op is None or node.kernel != "forward" or value in graph.outputs or len(readers) != 1:
            continue
        reader = graph[readers[0]]
        if reader.op is None or reader.kernel != "forward" or reader.args != (("x", value),):
            continue
        fused = epilogue(node.impl, reader.op)
        if fused is not None:
            nodes[value] = attrs.evolve(node, impl=fused[0])
            nodes[readers[0]] = attrs.evolve(reader, impl=fused[1])
    return graph.replace(nodes=nodes)
