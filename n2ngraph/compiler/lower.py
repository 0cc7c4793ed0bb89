"""Pass 4: joint graph -> the same graph with every computed node's kernel chosen.

What a node computes is fixed by its op and the method its rule names (``forward``,
``grad_x``); *how* is chosen here, per node and device, from ``kernels/table.py``: which
side a conv's GEMMs unfold, in what tiles, whether the input gradient is the mirror
conv's forward. The choice changes how values are computed, never which, so it runs
after differentiation and before the memory plan, which sizes the chosen kernels'
workspaces.
"""

from __future__ import annotations

import attrs
import torch

from ..kernels import kernel_for
from .graph import Graph


def lower(graph: Graph, device: torch.device | str = "cpu", codegen: bool = True) -> Graph:
    """``graph`` with ``Node.impl`` set on every computed node, for ``device``; with
    ``codegen``, generated kernels where the table prefers them and they can run."""
    nodes = {value: attrs.evolve(node, impl=kernel_for(node.op, node.kernel, device, codegen))
             if node.op is not None else node for value, node in graph.nodes.items()}
    return graph.replace(nodes=nodes)
