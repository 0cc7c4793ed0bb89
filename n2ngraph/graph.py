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

from .errors import SpecError
from .ops import Shape
from .spec import Spec


def needed_nodes(spec: Spec, outputs: Iterable[str]) -> set[str]:
    """Names of the inputs and nodes that ``outputs`` depend on (themselves included)."""
    sources = {n.name: n.inputs for n in spec.nodes}
    needed, todo = set(), list(outputs)
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo.extend(sources.get(name, ()))
    return needed


def infer_shapes(spec: Spec, input_shapes: Mapping[str, Shape],
                 outputs: Iterable[str] | None = None) -> dict[str, Shape]:
    """Shape of every input, parameter and node (only those ``outputs`` need, if given)."""
    needed = needed_nodes(spec, outputs) if outputs is not None else None
    shapes: dict[str, Shape] = {}
    for inp in spec.inputs:
        if needed is not None and inp.name not in needed:
            continue
        shape = tuple(input_shapes[inp.name])
        if len(shape) != 4 or shape[1] != inp.channels:
            raise SpecError(f"expected an (N, {inp.channels}, H, W) tensor, got shape {shape}",
                            line=inp.line, node=inp.name, field="channels", file=spec.file)
        shapes[inp.name] = shape
    for node in spec.nodes:
        if needed is not None and node.name not in needed:
            continue
        roles = dict(zip(node.op.inputs, (shapes[s] for s in node.inputs)))
        for role, shape in node.op.params().items():
            shapes[f"{node.name}.{role}"] = roles[role] = shape
        try:
            shapes[node.name] = tuple(node.op.infer(**roles))
        except SpecError as e:
            raise SpecError(e.problem, file=spec.file, line=node.line, node=node.name,
                            field=e.field) from None
    return shapes


def check_shapes(spec: Spec) -> None:
    """Load-time check on the recipe's crop size, and that ``loss`` is a scalar."""
    crop = spec.train.crop
    shapes = infer_shapes(spec, {i.name: (1, i.channels, crop, crop) for i in spec.inputs})
    if spec.loss is not None and shapes[spec.loss] != ():
        node = spec.node(spec.loss) if spec.loss not in spec.input_names else None
        raise SpecError(f"'loss' must name a node with a scalar result; '{spec.loss}' has "
                        f"shape {shapes[spec.loss]}", line=node.line if node else None,
                        node=spec.loss, field="loss", file=spec.file)


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
