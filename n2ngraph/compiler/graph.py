"""Pass 2: ``Spec`` + input shapes -> the forward DAG, every value with its shape.

The graph is a frozen ``networkx.DiGraph`` whose nodes are *values*: graph inputs,
parameters (``conv1.weight``) and op results (named after their spec node). Every
computed value carries what the later passes need, so they never look back at the spec:

    kind     'input' | 'param' | 'op'   (the backward pass adds 'vjp', 'accumulate', 'seed')
    shape    its shape, inferred
    op       the Op instance (computed values only)
    kernel   the Op method that computes it ('forward' here)
    args     ((argument name, value name), ...) passed to the kernel
    inplace  the value whose buffer the result may take over, if any
    fwd      the forward node it belongs to (itself here; a VJP's forward node later)

Edges run from each argument to the value computed from it. Nodes that no requested
output depends on are left out (inference never sees the loss or the target).
"""

from __future__ import annotations

from typing import Iterable, Mapping

import networkx as nx

from ..ops import Shape
from .shapes import infer_shapes
from .spec import Spec


def forward_graph(spec: Spec, input_shapes: Mapping[str, Shape],
                  outputs: Iterable[str]) -> nx.DiGraph:
    """The forward DAG computing ``outputs`` for inputs of the given shapes."""
    outputs = tuple(outputs)
    shapes = infer_shapes(spec, input_shapes, outputs)
    graph = nx.DiGraph(spec=spec.name, outputs=outputs)
    for inp in spec.inputs:
        if inp.name not in shapes:
            continue
        graph.add_node(inp.name, kind="input", shape=shapes[inp.name])
    for node in spec.nodes:
        if node.name not in shapes:
            continue
        args = list(zip(node.op.inputs, node.inputs))
        for role in node.op.params():
            param = f"{node.name}.{role}"
            graph.add_node(param, kind="param", shape=shapes[param], owner=node.name)
            args.append((role, param))
        inplace = dict(args).get(node.op.inplace) if node.op.inplace else None
        graph.add_node(node.name, kind="op", shape=shapes[node.name], op=node.op,
                       kernel="forward", args=tuple(args), inplace=inplace, fwd=node.name,
                       line=node.line)
        for role, source in args:
            graph.add_edge(source, node.name, role=role)
    return nx.freeze(graph)
