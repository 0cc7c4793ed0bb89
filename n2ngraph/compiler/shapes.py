"""Shape inference over a ``Spec``: what every value's shape is for given input shapes.

``parse.py`` runs it once on the recipe's crop size (a channel mismatch is an error at
load time), ``graph.py`` for the shapes it compiles, ``app/images.py`` to size a tile.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from ..errors import SpecError
from ..ops import Shape
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
