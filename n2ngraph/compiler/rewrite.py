"""Pass 2b: forward graph -> forward graph with cheaper, equivalent subgraphs.

Rewrites run before differentiation, so the backward program is derived from the
rewritten ops' own VJP rules and every gradient stays exact. Each rewrite keeps value
and parameter names (``conv3.weight`` stays ``conv3.weight``), so checkpoints, state
dicts and optimizer state do not notice, and each is tested to give the same loss and
gradients as the plain graph (tests/test_rewrite.py).

- ``fuse_upsample_conv``: ``upsample_nearest(scale=2)`` read only by a 3x3 stride-1
  padding-1 ``conv2d`` becomes one ``upsample_conv2d`` node that reads the small map
  (four 2x2 phase convolutions: 2.25x fewer multiplies, no upsampled tensor). The
  phases cost four times the kernel launches, so it pays only on large enough maps:
  pairs whose upsampled map holds fewer than ``FUSE_MIN_ELEMENTS`` values stay apart
  (docs/performance.md, "Why the tuning constants are what they are").

How each node is then computed (which kernel, which tiles) is not a rewrite: that is
``lower.py``, which changes how values are computed, never which.
"""

from __future__ import annotations

import math

import attrs

from ..ops.upsample_conv import UpsampleConv2d, fusable
from .graph import Graph

FUSE_MIN_ELEMENTS = 2**16


def rewrite(graph: Graph) -> Graph:
    """Every rewrite, in order."""
    return fuse_upsample_conv(graph)


def fuse_upsample_conv(graph: Graph, min_elements: int | None = None) -> Graph:
    min_elements = FUSE_MIN_ELEMENTS if min_elements is None else min_elements
    nodes = dict(graph.nodes)
    done = []
    for up, node in graph.nodes.items():
        if node.kind != "op" or node.op.name != "upsample_nearest" or node.op.scale != 2:
            continue
        readers = list(graph.successors(up))
        if math.prod(node.shape) < min_elements or len(readers) != 1 or up in graph.outputs:
            continue
        conv = graph[readers[0]]
        if not fusable(conv.op) or dict(conv.args).get("x") != up:
            continue
        (source,) = [s for _, s in node.args]
        args = tuple((role, source if value == up else value) for role, value in conv.args)
        del nodes[up]
        nodes[readers[0]] = attrs.evolve(conv, op=UpsampleConv2d(conv.op), args=args)
        done.append((up, readers[0]))
    return graph.replace(nodes=nodes, fused=tuple(done))
