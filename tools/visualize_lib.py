"""``tools/visualize``: pictures of a compiled n2ngraph graph (PNG, SVG or DOT).

    tools/visualize SPEC -o OUT.png|OUT.svg|OUT.dot [--backward | --memory]
                    [--layout dot|python] [--direction TB|LR] [--shape N,C,H,W] [--float64]
                    [--no-rewrite]
    tools/visualize --package -o OUT.png|OUT.svg|OUT.dot [--layout dot|python]

``--package`` draws the package itself, its modules and imports layer by layer
(``package_picture.py``). Three views of what ``n2ngraph.compile`` builds:

- forward (default): the inference graph, one box per value with its op and
  attributes; inputs and parameters have their own styles; every edge carries the
  shape and dtype of the value it moves (and its role where an op reads several);
- ``--backward``: the joint training graph; VJP nodes are orange, the ``accumulate``
  nodes where the gradients of a fanned-out value meet are red (Σ), the seed purple,
  and the VJPs that pruning removed are grey dashed ghosts;
- ``--memory``: the training plan's buffers: every planned value's box coloured by the
  buffer it lives in (one colour per buffer), under it the live bytes per schedule
  step against a buffer per value (no reuse).

A picture of more than ``MAX_BOXES`` (1,000) boxes is refused (exit status 2): the
spec's nodes are counted before compiling, the picture's boxes before drawing.

The picture is built once, as boxes and arrows (``Picture``), and then either handed to
Graphviz as DOT text or laid out here in pure Python (``python_layout``: a layered
Sugiyama layout on networkx, drawn with matplotlib), so a machine without Graphviz gets
pictures too. ``.dot`` output is DOT text written here and never needs Graphviz.

The backward picture is drawn mirrored: each VJP node sits between the forward node it
differentiates and that node's input, so gradients flow back alongside the forward
values they read instead of trailing far behind the loss. In its DOT text an edge that
runs against that layering (a gradient flowing back) is written head first with
``dir=back``: ``"b" -> "a" [dir=back]`` is the edge a -> b, drawn as such.
"""

from __future__ import annotations

import argparse
import colorsys
import html
import io
import math
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # a fresh checkout, run before `pip install -e .`
    sys.path.append(str(ROOT))

import n2ngraph as ng  # noqa: E402
from n2ngraph.app.fileio import write_atomic  # noqa: E402
from n2ngraph.compiler.graph import Graph  # noqa: E402
from n2ngraph.compiler.shapes import needed_nodes  # noqa: E402

PROG = "tools/visualize"
FORMATS = ("png", "svg", "dot")
BACKWARD_KINDS = ("vjp", "accumulate", "seed", "pruned")

# ---- styles, shared by both layouts --------------------------------------------------

STYLE = {  # kind -> (fill, border, pen width, corner)
    "input": ("#dbeafe", "#1d4ed8", 2.0, "round"),
    "param": ("#fef3c7", "#b45309", 1.2, "square"),
    "op": ("#f8fafc", "#334155", 1.2, "round"),
    "vjp": ("#ffedd5", "#c2410c", 1.2, "round"),
    "accumulate": ("#fecaca", "#b91c1c", 2.0, "round"),
    "seed": ("#ede9fe", "#6d28d9", 1.5, "round"),
    "pruned": ("#ffffff", "#9ca3af", 1.0, "round"),
    "external": ("#ffffff", "#6b7280", 1.0, "square"),
}
EDGE_FORWARD = "#475569"
EDGE_BACKWARD = "#c2410c"  # gradient to gradient
EDGE_SAVED = "#f59e0b"  # a forward value (or parameter) read by a backward node
EDGE_PRUNED = "#9ca3af"
TEXT = {"title": "#0f172a", "body": "#1f2937", "note": "#4b5563"}
GHOST_TEXT = "#6b7280"


@dataclass
class Box:
    """One node of the picture: lines of text in a styled box."""

    id: str
    kind: str
    lines: list[tuple[str, str]]  # (text, 'title' | 'body' | 'note')
    fill: str
    border: str
    pen: float = 1.2
    corner: str = "round"
    dashed: bool = False
    muted: bool = False  # grey text (pruned ghosts)


@dataclass
class Arrow:
    src: str
    dst: str
    label: str
    color: str = EDGE_FORWARD
    pen: float = 1.0
    dashed: bool = False


@dataclass
class Picture:
    title: str
    boxes: dict[str, Box]
    arrows: list[Arrow]
    grid: dict[str, int]  # box -> position on the layer axis (see grid_positions)
    mirrored: bool = False  # a joint graph: gradients flow against the layering
    legend: list[tuple[str, str, str]] = field(default_factory=list)  # (fill, border, text)


# ---- compiling ---------------------------------------------------------------------

def compile_spec(spec_path: str, mode: str, shape=None, float64: bool = False,
                 rewrite: bool = True):
    """(spec, Compiled, dtype name) for the view ``mode``: 'forward', 'backward', 'memory'."""
    import torch

    spec = ng.load_spec(spec_path)
    drawn = needed_nodes(spec, [spec.output if mode == "forward" or spec.loss is None else spec.loss])
    check_size(len(drawn), spec_path, "inputs and nodes")  # before compiling: that takes seconds
    dtype = torch.float64 if float64 else torch.float32
    program = ng.Program(spec, dtype=dtype, rewrite=rewrite)
    first = spec.inputs[0]
    if shape is None:
        shape = (spec.train.batch, first.channels, spec.train.crop, spec.train.crop)
    shapes = program.input_shapes(shape)
    if mode == "forward" or (mode == "memory" and spec.loss is None):
        compiled = program.compiled("infer", {first.name: shapes[first.name]})
    else:
        compiled = program.compiled("train", shapes)
    return spec, compiled, ("f64" if float64 else "f32")


MAX_BOXES = 1000
"""The most boxes a picture may have: the largest shipped spec draws 191 (the paper's
U-Net, backward); a picture of thousands is unreadable, and laying it out takes minutes."""


def check_size(count: int, spec_path: str, what: str) -> None:
    """A UsageError (exit status 2) when a picture would have more than MAX_BOXES boxes."""
    if count > MAX_BOXES:
        raise UsageError(f"{spec_path}: {count:,} {what} to draw; tools/visualize draws at "
                         f"most {MAX_BOXES:,} (a bigger picture is unreadable and takes "
                         f"minutes to lay out)")


# ---- the picture -------------------------------------------------------------------

def fmt_shape(shape) -> str:
    return "×".join(str(d) for d in shape) if len(shape) else "scalar"


def fmt_bytes(n: float) -> str:
    for unit, size in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}" if n < 100 * size else f"{n / size:.0f} {unit}"
    return f"{n:.0f} B"


def _wrap(words: list[str], width: int) -> list[str]:
    lines, line = [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return lines + ([line] if line else [])


def _describe(op) -> list[tuple[str, str]]:
    name, *attrs_ = op.describe().split(" ")
    return [(name, "body")] + [(line, "note") for line in _wrap(attrs_, 30)]


def _value_lines(graph: Graph, value: str) -> list[tuple[str, str]]:
    node = graph[value]
    kind = node.kind
    if kind == "input":
        return [(value, "title"), (f"input {fmt_shape(node.shape)}", "body")]
    if kind == "param":
        return [(value, "title"), (f"param {fmt_shape(node.shape)}", "body")]
    if kind == "op":
        return [(value, "title"), *_describe(node.op)]
    if kind == "vjp":
        return [(value, "title"), (f"vjp {node.op.name}.{node.kernel}", "body"),
                (f"d{node.fwd}/d{node.wrt or '?'}", "note")]
    if kind == "accumulate":
        return [(value, "title"), (f"Σ accumulate {node.op.count} terms", "body")]
    if kind == "seed":
        return [(value, "title"), ("seed: dloss/dloss = 1", "body")]
    return [(value, "title")]


def _box(graph: Graph, value: str, outputs) -> Box:
    kind = graph[value].kind
    fill, border, pen, corner = STYLE[kind]
    lines = _value_lines(graph, value)
    if value in outputs and kind in ("op", "input"):
        lines.append(("loss" if value == graph.loss else "output", "note"))
        pen = 2.4
    return Box(value, kind, lines, fill, border, pen, corner)


def _arrow(graph: Graph, u: str, v: str, dtype: str) -> Arrow:
    role = graph.dag.edges[u, v].get("role", "")
    label = f"{fmt_shape(graph[u].shape)} {dtype}"
    if graph.dag.in_degree(v) > 1 and role:
        label = f"{role}: {label}"
    ku, kv = graph[u].kind, graph[v].kind
    if kv in BACKWARD_KINDS:
        if ku in BACKWARD_KINDS:
            return Arrow(u, v, label, EDGE_BACKWARD, 1.4)
        return Arrow(u, v, label, EDGE_SAVED, 1.0)
    return Arrow(u, v, label, EDGE_FORWARD, 1.2)


def subject_of(graph: Graph, value: str) -> str | None:
    """The forward value a backward node is the gradient (or a gradient term) of."""
    node = graph[value]
    if node.kind in ("accumulate", "seed"):
        return node.fwd
    if node.kind == "vjp":
        return dict(graph[node.fwd].args).get(node.wrt)
    return None


def grid_positions(graph: Graph, ghosts: dict[str, tuple[str, str]]) -> dict[str, int]:
    """Position of every box on the layer axis, compressed to even numbers.

    Forward values are layered by longest path, sources pulled next to their first
    reader. Backward nodes are mirrored into the forward layering: a VJP of op R sits
    between R and R's inputs, an accumulate or seed node just after its value. Every
    edge then spans at least two positions, which leaves the odd position next to its
    target free for its label.
    """
    forward = graph.dag.subgraph(graph.of_kind("input", "param", "op"))
    order = list(nx.topological_sort(forward))
    layer: dict[str, int] = {}
    for v in order:
        layer[v] = max((layer[p] + 1 for p in forward.predecessors(v)), default=0)
    for v in reversed(order):
        if forward.in_degree(v) == 0 and forward.out_degree(v) > 0:
            layer[v] = min(layer[s] for s in forward.successors(v)) - 1
    grid = {v: 6 * layer[v] for v in layer}
    for v, node in graph.nodes.items():
        if node.kind in ("accumulate", "seed"):
            grid[v] = 6 * layer[node.fwd] + 1
        elif node.kind == "vjp":
            grid[v] = 6 * layer[node.fwd] - 3
    for ghost, (node, _role) in ghosts.items():
        grid[ghost] = 6 * layer[node] - 3
    ranks = {g: 2 * i for i, g in enumerate(sorted(set(grid.values())))}
    return {v: ranks[g] for v, g in grid.items()}


def build_picture(spec, compiled, mode: str, dtype: str, input_shape) -> Picture:
    graph = compiled.graph
    outputs = set(graph.outputs)
    boxes = {v: _box(graph, v, outputs) for v in graph}
    arrows = [_arrow(graph, u, v, dtype) for u, v in graph.dag.edges]
    ghosts: dict[str, tuple[str, str]] = {}
    what = {"forward": "forward graph (inference)", "backward": "joint forward + backward graph (training)",
            "memory": f"memory plan ({'training' if compiled.kind == 'train' else 'inference'})"}[mode]
    title = f"{spec.name}: {what} · input {fmt_shape(input_shape)} {dtype}"
    legend: list[tuple[str, str, str]] = []

    if mode == "backward":
        for node, role in graph.pruned:
            ghost = f"pruned:{node}/{role}"
            source = dict(graph[node].args).get(role, "?")
            fill, border, pen, corner = STYLE["pruned"]
            boxes[ghost] = Box(ghost, "pruned", [(f"d{node}/d{role} (pruned)", "title"),
                                                 (f"{source} needs no gradient", "note")],
                               fill, border, pen, corner, dashed=True, muted=True)
            ghosts[ghost] = (node, role)
            gout = f"grad:{node}"
            if gout in graph:
                arrows.append(Arrow(gout, ghost, "gout", EDGE_PRUNED, 1.0, dashed=True))
        title += f" · {len(ghosts)} VJPs pruned"

    if mode == "memory":
        plan, order = compiled.plan, compiled.schedule.order
        colours = buffer_colours(len(plan.buffers))
        inplace = dict(plan.inplace)
        for v, box in boxes.items():
            if v not in plan.slots:
                box.fill, box.border, box.pen, box.corner = STYLE["external"]
                box.lines.append(("external (owned by the program)", "note"))
                continue
            b = plan.slots[v]
            box.fill, box.border = colours[b]
            first, last = plan.intervals[v]
            when = f"{'start' if first < 0 else first}–{'end' if last >= len(order) else last}"
            box.lines.append((f"buffer {b} · steps {when}", "body"))
            if v in inplace:
                box.lines.append((f"in place of {inplace[v]}", "note"))
            scratch = plan.workspaces.get(v, {})
            if scratch:
                box.lines.append(("scratch " + " ".join(f"{n}:b{plan.slots[k]}" for n, k in scratch.items()),
                                  "note"))
        legend = [(*colours[i], f"buffer {i}: {fmt_bytes(n * plan.itemsize)}")
                  for i, n in enumerate(plan.buffers)]
        title += f" · {plan.report()}"

    grid = grid_positions(graph, ghosts)
    return Picture(title, boxes, arrows, grid, compiled.kind == "train", legend)


SET3 = ("#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5",
        "#bc80bd", "#ccebc5", "#ffed6f", "#d9d9d9")  # ColorBrewer Set3: light, distinct


def buffer_colours(n: int) -> list[tuple[str, str]]:
    """(fill, border) per buffer: Set3, then pastel hues spread by the golden angle."""
    out = []
    for i in range(n):
        if i < len(SET3):
            rgb = tuple(int(SET3[i][k:k + 2], 16) / 255 for k in (1, 3, 5))
            hue, sat, _ = colorsys.rgb_to_hsv(*rgb)
        else:
            hue, sat = (0.11 + i * 0.381966) % 1.0, 0.25 + 0.12 * (i % 3)
            rgb = colorsys.hsv_to_rgb(hue, sat, 0.97)
        dark = colorsys.hsv_to_rgb(hue, min(1.0, sat + 0.45), 0.45)
        out.append(tuple("#" + "".join(f"{round(c * 255):02x}" for c in col) for col in (rgb, dark)))
    return out


# ---- DOT -----------------------------------------------------------------------------

def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


DOT_SIZE = {"title": 11, "body": 9, "note": 8}


def _html_label(box: Box) -> str:
    parts = []
    for text, role in box.lines:
        colour = GHOST_TEXT if box.muted else TEXT[role]
        t = html.escape(text, quote=False)
        if role == "title":
            t = f"<B>{t}</B>"
        parts.append(f'<FONT POINT-SIZE="{DOT_SIZE[role]}" COLOR="{colour}">{t}</FONT>')
    return "<" + "<BR/>".join(parts) + ">"


def to_dot(pic: Picture, direction: str = "TB", legend: bool = True) -> str:
    """DOT text: every box a node, every edge an ``"a" -> "b"`` line (quoted ids); in a
    joint graph an edge against the layering is written ``"b" -> "a" [dir=back]``."""
    out = [f"digraph {_q(pic.title.split(':')[0])} {{",
           f"  graph [rankdir={direction}, fontname=\"Helvetica\", fontsize=13, labelloc=t, "
           f"label={_q(pic.title)}, nodesep=0.22, ranksep=0.28, pad=0.25, bgcolor=white];",
           '  node [shape=box, fontname="Helvetica", margin="0.10,0.04"];',
           '  edge [fontname="Helvetica", fontsize=8, arrowsize=0.6];']
    for box in pic.boxes.values():
        style = ["filled"] + (["rounded"] if box.corner == "round" else []) + (["dashed"] if box.dashed else [])
        out.append(f"  {_q(box.id)} [label={_html_label(box)}, style=\"{','.join(style)}\", "
                   f"fillcolor=\"{box.fill}\", color=\"{box.border}\", penwidth={box.pen}];")
    if pic.mirrored:
        out.append("  // gradients flow against the layering: such an edge a -> b is written head first,\n"
                   "  // b -> a [dir=back], so that dot ranks it the way tools/visualize lays it out")
    for a in pic.arrows:
        attrs_ = [f"label={_q(a.label)}", f'color="{a.color}"', f'fontcolor="{a.color}"', f"penwidth={a.pen}"]
        if a.dashed:
            attrs_.append("style=dashed")
        src, dst = a.src, a.dst
        if pic.mirrored and pic.grid[src] > pic.grid[dst]:
            # against the layering (gradients flowing back up): written head first and
            # drawn reversed, so that dot ranks it like the python layout does
            src, dst = dst, src
            attrs_.append("dir=back")
        out.append(f"  {_q(src)} -> {_q(dst)} [{', '.join(attrs_)}];")
    if legend and pic.legend:
        rows = "".join(f'<TR><TD BGCOLOR="{fill}" WIDTH="14"> </TD><TD ALIGN="LEFT">'
                       f"{html.escape(text)}</TD></TR>" for fill, _border, text in pic.legend)
        out.append(f'  "legend:buffers" [shape=plaintext, style="", label=<<TABLE BORDER="0" '
                   f'CELLBORDER="1" CELLSPACING="0" CELLPADDING="3"><TR><TD COLSPAN="2"><B>buffers</B>'
                   f"</TD></TR>{rows}</TABLE>>];")
    out.append("}")
    return "\n".join(out) + "\n"


def dot_binary() -> str | None:
    return shutil.which("dot")


def run_dot(text: str, fmt: str, dpi: int = 96) -> bytes:
    cmd = [dot_binary() or "dot", f"-T{fmt}"] + ([f"-Gdpi={dpi}"] if fmt == "png" else [])
    done = subprocess.run(cmd, input=text.encode(), capture_output=True)
    if done.returncode != 0 or not done.stdout:
        raise RuntimeError(f"Graphviz dot failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


# ---- the pure-Python layout ----------------------------------------------------------

CHAR = 0.602  # advance of DejaVu Sans Mono, in ems
FONT = {"title": 9.5, "body": 8.0, "note": 7.5}
EDGE_FONT = 7.0
LINE = 1.28
PAD_X, PAD_Y = 6.0, 4.0
GAP_WITHIN = 12.0  # between neighbours in a layer, points
GAP_LAYERS = {"TB": 10.0, "LR": 22.0}
MARGIN = 18.0
TITLE_H = 26.0
TITLE_FONT = 10.5


def box_size(box: Box) -> tuple[float, float]:
    w = max(len(t) * CHAR * FONT[r] for t, r in box.lines) + 2 * PAD_X
    h = sum(LINE * FONT[r] for _, r in box.lines) + 2 * PAD_Y
    return w, h


def label_size(text: str) -> tuple[float, float]:
    return len(text) * CHAR * EDGE_FONT + 4, LINE * EDGE_FONT + 2


@dataclass
class Layout:
    width: float
    height: float
    boxes: dict[str, tuple[float, float, float, float]]  # id -> (x0, y0, w, h), y up
    labels: list[tuple[float, float, float, float, str, Arrow]]
    edges: list[tuple[Arrow, list[tuple[float, float]]]]


def _isotonic(values: list[float]) -> list[float]:
    """Least-squares non-decreasing fit (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([v, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, c2 = blocks.pop()
            m1, c1 = blocks.pop()
            blocks.append([(m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2])
    out = []
    for m, c in blocks:
        out += [m] * int(c)
    return out


def _crossings(layers, pos, down) -> int:
    total = 0
    for l in sorted(layers)[:-1]:
        pairs = sorted((pos[a], pos[b]) for a in layers[l] for b in down[a])
        for i in range(len(pairs)):
            for j in range(i + 1, len(pairs)):
                if pairs[i][0] < pairs[j][0] and pairs[i][1] > pairs[j][1]:
                    total += 1
    return total


def python_layout(pic: Picture, direction: str = "TB") -> Layout:
    """A layered layout: boxes on the layer axis by ``pic.grid``, every edge a chain of
    dummy slots through the layers it crosses, its label in the slot next to its
    target. Slots in a layer never overlap, so neither do boxes and labels; edges run
    straight through each layer and bend only in the gaps between layers."""
    lr = direction == "LR"
    size: dict[str, tuple[float, float]] = {}  # (thickness along layer axis, extent within)
    layer_of: dict[str, int] = {}
    kind: dict[str, str] = {}
    for b in pic.boxes.values():
        w, h = box_size(b)
        size[b.id] = (w, h) if lr else (h, w)
        layer_of[b.id] = pic.grid[b.id]
        kind[b.id] = "box"
    chains: list[tuple[Arrow, list[str]]] = []
    for i, a in enumerate(pic.arrows):
        lu, lv = layer_of[a.src], layer_of[a.dst]
        step = 1 if lv > lu else -1
        ids = [a.src]
        for l in range(lu + step, lv, step):
            d = f"\0{i}:{l}"
            if l == lv - step:
                w, h = label_size(a.label)
                size[d], kind[d] = ((w, h) if lr else (h, w)), "label"
            else:
                size[d], kind[d] = (0.0, 4.0), "point"
            layer_of[d] = l
            ids.append(d)
        ids.append(a.dst)
        chains.append((a, ids))

    layers: dict[int, list[str]] = {}
    for v in size:
        layers.setdefault(layer_of[v], []).append(v)
    down: dict[str, list[str]] = {v: [] for v in size}  # neighbours one layer further
    up: dict[str, list[str]] = {v: [] for v in size}
    for _, ids in chains:
        for a, b in zip(ids, ids[1:]):
            lo, hi = (a, b) if layer_of[a] < layer_of[b] else (b, a)
            down[lo].append(hi)
            up[hi].append(lo)

    # order within layers: barycenter sweeps, keeping the order with fewest crossings
    band = {v: 1 if kind[v] == "box" and pic.boxes[v].kind in BACKWARD_KINDS else 0 for v in size}
    seq = {v: i for i, v in enumerate(size)}
    for l in layers:
        layers[l].sort(key=lambda v: (band[v], seq[v]))
    pos = {v: i for l in layers for i, v in enumerate(layers[l])}
    best = (_crossings(layers, pos, down), {l: list(vs) for l, vs in layers.items()})
    keys = sorted(layers)
    for sweep in range(8):
        for l in (keys if sweep % 2 == 0 else reversed(keys)):
            nb = up if sweep % 2 == 0 else down
            bary = {v: (sum(pos[n] for n in nb[v]) / len(nb[v]) if nb[v] else pos[v]) for v in layers[l]}
            layers[l].sort(key=lambda v: bary[v])
            for i, v in enumerate(layers[l]):
                pos[v] = i
        crossings = _crossings(layers, pos, down)
        if crossings < best[0]:
            best = (crossings, {l: list(vs) for l, vs in layers.items()})
    layers = best[1]

    # coordinates within layers: start packed, then pull each slot towards its
    # neighbours' mean, keeping order and spacing (isotonic regression per layer)
    coord: dict[str, float] = {}
    offsets: dict[int, list[float]] = {}
    for l, vs in layers.items():
        off, acc = [], 0.0
        for i, v in enumerate(vs):
            if i:
                acc += (size[vs[i - 1]][1] + size[v][1]) / 2 + GAP_WITHIN
            off.append(acc)
        offsets[l] = off
        for v, o in zip(vs, off):
            coord[v] = o - acc / 2
    for sweep in range(24):
        order = keys if sweep % 3 != 1 else list(reversed(keys))
        for l in order:
            vs = layers[l]
            wanted = []
            for v in vs:
                nb = (up[v] if sweep % 3 == 0 else down[v] if sweep % 3 == 1 else up[v] + down[v])
                # dummy to dummy links pull hardest: long edges should run straight
                wt = [4.0 if kind[v] != "box" and kind[n] != "box" else 1.0 for n in nb]
                wanted.append(sum(w * coord[n] for w, n in zip(wt, nb)) / sum(wt) if nb else coord[v])
            fit = _isotonic([w - o for w, o in zip(wanted, offsets[l])])
            for v, q, o in zip(vs, fit, offsets[l]):
                coord[v] = q + o
    low = min(coord[v] - size[v][1] / 2 for v in coord)
    high = max(coord[v] + size[v][1] / 2 for v in coord)

    # the layer axis
    gap = GAP_LAYERS[direction]
    centre: dict[int, float] = {}
    thick: dict[int, float] = {}
    acc = 0.0
    for l in keys:
        thick[l] = max(size[v][0] for v in layers[l])
        centre[l] = acc + thick[l] / 2
        acc += thick[l] + gap
    extent_layers = acc - gap
    extent_within = high - low

    top = TITLE_H
    if lr:
        width, height = extent_layers + 2 * MARGIN, extent_within + 2 * MARGIN + top
    else:
        width, height = extent_within + 2 * MARGIN, extent_layers + 2 * MARGIN + top
    width = max(width, len(pic.title) * CHAR * TITLE_FONT + 2 * MARGIN)

    def xy(u: float, w: float) -> tuple[float, float]:
        """(layer axis, within axis) -> figure points, y up."""
        w = w - low + MARGIN
        u = u + MARGIN
        return (u, height - top - w) if lr else (w, height - top - u)

    boxes = {}
    for v, b in pic.boxes.items():
        t, e = size[v]
        cx, cy = xy(centre[layer_of[v]], coord[v])
        bw, bh = (t, e) if lr else (e, t)
        boxes[v] = (cx - bw / 2, cy - bh / 2, bw, bh)

    # ports: spread the edges that meet one side of a box along that side
    ends: dict[tuple[str, int], list[tuple[float, int, int]]] = {}
    for ci, (_a, ids) in enumerate(chains):
        for end, other, idx in ((ids[0], ids[1], 0), (ids[-1], ids[-2], -1)):
            side = 1 if layer_of[other] > layer_of[end] else -1
            ends.setdefault((end, side), []).append((coord[other], ci, idx))
    port: dict[tuple[int, int], float] = {}
    for (v, _side), items in ends.items():
        items.sort()
        extent = size[v][1] * 0.7
        for k, (_c, ci, idx) in enumerate(items):
            port[ci, idx] = coord[v] - extent / 2 + extent * (k + 1) / (len(items) + 1)

    labels, edges = [], []
    for ci, (a, ids) in enumerate(chains):
        pts: list[tuple[float, float]] = []
        last = len(ids) - 1
        for k, v in enumerate(ids):
            l = layer_of[v]
            w = port[ci, 0] if k == 0 else port[ci, -1] if k == last else coord[v]
            inner = size[v][0] / 2 if kind[v] == "box" else thick[l] / 2
            if k > 0:  # enter from the previous layer: its boundary, then this slot's side
                s = 1 if layer_of[ids[k - 1]] > l else -1
                pts += [xy(centre[l] + s * thick[l] / 2, w), xy(centre[l] + s * inner, w)]
            if k < last:  # leave towards the next layer
                s = 1 if layer_of[ids[k + 1]] > l else -1
                pts += [xy(centre[l] + s * inner, w), xy(centre[l] + s * thick[l] / 2, w)]
            if kind[v] == "label":
                t, e = size[v]
                cx, cy = xy(centre[l], w)
                bw, bh = (t, e) if lr else (e, t)
                labels.append((cx - bw / 2, cy - bh / 2, bw, bh, a.label, a))
        clean = [pts[0]]
        for p in pts[1:]:
            if abs(p[0] - clean[-1][0]) > 1e-6 or abs(p[1] - clean[-1][1]) > 1e-6:
                clean.append(p)
        edges.append((a, clean))
    return Layout(width, height, boxes, labels, edges)


# ---- drawing with matplotlib ---------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


MONO = "DejaVu Sans Mono"
MAX_PIXELS = 12000  # longest side of a PNG


def draw_layout(pic: Picture, lay: Layout, ax) -> None:
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
    from matplotlib.path import Path as MPath

    ax.set_xlim(0, lay.width)
    ax.set_ylim(0, lay.height)
    ax.axis("off")
    ax.text(MARGIN, lay.height - TITLE_H / 2 - 4, pic.title, fontsize=TITLE_FONT, family=MONO,
            weight="bold", va="center", ha="left", color=TEXT["title"])
    for a, pts in lay.edges:
        codes = [MPath.MOVETO] + [MPath.LINETO] * (len(pts) - 1)
        ax.add_patch(FancyArrowPatch(path=MPath(pts, codes), arrowstyle="-|>,head_length=5,head_width=2.6",
                                     mutation_scale=1, color=a.color, lw=a.pen,
                                     linestyle="--" if a.dashed else "-", shrinkA=0, shrinkB=0,
                                     zorder=1, joinstyle="round", capstyle="round"))
    for x0, y0, w, h, text, a in lay.labels:
        ax.add_patch(FancyBboxPatch((x0, y0), w, h, boxstyle="square,pad=0", fc="white", ec="none", zorder=2))
        ax.text(x0 + w / 2, y0 + h / 2, text, fontsize=EDGE_FONT, family=MONO, color=a.color,
                ha="center", va="center", zorder=3)
    for v, (x0, y0, w, h) in lay.boxes.items():
        b = pic.boxes[v]
        style = "round,pad=0,rounding_size=5" if b.corner == "round" else "square,pad=0"
        ax.add_patch(FancyBboxPatch((x0, y0), w, h, boxstyle=style, fc=b.fill, ec=b.border, lw=b.pen,
                                    linestyle="--" if b.dashed else "-", zorder=4))
        y = y0 + h - PAD_Y
        for text, role in b.lines:
            step = LINE * FONT[role]
            ax.text(x0 + w / 2, y - step / 2, text, fontsize=FONT[role], family=MONO,
                    weight="bold" if role == "title" else "normal",
                    color=GHOST_TEXT if b.muted else TEXT[role], ha="center", va="center", zorder=5)
            y -= step


def _save(fig, fmt: str, base_dpi: float = 110) -> bytes:
    w, h = fig.get_size_inches()
    dpi = min(base_dpi, MAX_PIXELS / max(w, h))
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi, facecolor="white")
    _pyplot().close(fig)
    return buf.getvalue()


def render_python(pic: Picture, direction: str, fmt: str) -> bytes:
    lay = python_layout(pic, direction)
    plt = _pyplot()
    fig = plt.figure(figsize=(lay.width / 72, lay.height / 72))
    ax = fig.add_axes((0, 0, 1, 1))
    draw_layout(pic, lay, ax)
    return _save(fig, fmt)


# ---- the memory timeline -------------------------------------------------------------

def live_bytes(compiled) -> tuple[list[int], list[int], list[int]]:
    """(steps, live bytes under the plan, bytes with no reuse) for steps -1 .. n-1.

    Live: for every buffer in use at a step, the largest value it holds then (a result
    written in place shares its input's buffer and is counted once). No reuse: every
    value allocated so far, nothing ever freed."""
    plan, n = compiled.plan, len(compiled.schedule.order)
    steps = list(range(-1, n))
    live, unshared = [], []
    for s in steps:
        per_buffer: dict[int, int] = {}
        total = 0
        for key, (first, last) in plan.intervals.items():
            size = math.prod(plan.shapes[key]) * plan.itemsize
            if first <= s:
                total += size
                if s <= last:
                    b = plan.slots[key]
                    per_buffer[b] = max(per_buffer.get(b, 0), size)
        live.append(sum(per_buffer.values()))
        unshared.append(total)
    return steps, live, unshared


def render_timeline(pic: Picture, compiled, fmt: str, width_pt: float, dpi: float = 110) -> bytes:
    plt = _pyplot()
    plan, order = compiled.plan, compiled.schedule.order
    steps, live, unshared = live_bytes(compiled)
    width_pt = min(max(width_pt, 620.0), 1500.0)
    legend_w = 190.0 if len(pic.legend) <= 16 else 330.0
    names = ["(inputs)"] + list(order)
    bottom = 24 + max(len(n) for n in names) * CHAR * 6.5
    height_pt = bottom + 210.0
    fig = plt.figure(figsize=(width_pt / 72, height_pt / 72))
    ax = fig.add_axes((62 / width_pt, bottom / height_pt, (width_pt - 62 - legend_w - 20) / width_pt,
                       (height_pt - bottom - 30) / height_pt))
    mib = 2**20
    ax.step(steps, [u / mib for u in unshared], where="mid", color="#9ca3af", lw=1.6,
            label=f"no reuse (a buffer per value): {fmt_bytes(plan.unshared_bytes)}")
    ax.fill_between(steps, [v / mib for v in live], step="mid", color="#60a5fa", alpha=0.35, lw=0)
    ax.step(steps, [v / mib for v in live], where="mid", color="#1d4ed8", lw=1.6,
            label=f"planned: live bytes (peak {fmt_bytes(max(live))})")
    ax.axhline(plan.planned_bytes / mib, color="#b91c1c", ls="--", lw=1.2,
               label=f"planned: {len(plan.buffers)} buffers allocated, {fmt_bytes(plan.planned_bytes)}")
    kinds = [compiled.graph[v].kind for v in order]
    if "seed" in kinds:
        start = kinds.index("seed")
        ax.axvspan(start - 0.5, len(order) - 0.5, color="#ffedd5", alpha=0.6, lw=0, zorder=0)
        ax.text(start - 0.5, 0.97, " backward", fontsize=8, color="#c2410c", va="top",
                transform=ax.get_xaxis_transform())
    every = max(1, math.ceil(len(names) / 70))
    ax.set_xticks(steps[::every])
    ax.set_xticklabels(names[::every], rotation=90, fontsize=6.5, family=MONO)
    ax.set_xlim(-1.5, len(order) - 0.5)
    ax.set_ylabel("MiB")
    ax.set_title("live bytes per schedule step: planned vs no reuse", fontsize=10, loc="left")
    ax.legend(fontsize=7.5, loc="upper left", frameon=True)
    ax.grid(axis="y", alpha=0.3)
    if pic.legend:
        from matplotlib.patches import Patch

        lx = (width_pt - legend_w) / width_pt
        lax = fig.add_axes((lx, 0.05, legend_w / width_pt - 0.01, 0.9))
        lax.axis("off")
        handles = [Patch(facecolor=f, edgecolor=e, label=t) for f, e, t in pic.legend]
        lax.legend(handles=handles, loc="upper left", fontsize=7, ncol=1 if len(handles) <= 16 else 2,
                   title="value boxes coloured by buffer", title_fontsize=7.5, frameon=False)
    return _save(fig, fmt, dpi)


def small_png(data: bytes) -> bytes:
    """The same picture with a 256-colour palette: a third of the size, text still crisp."""
    from PIL import Image

    im = Image.open(io.BytesIO(data)).convert("RGB")
    buf = io.BytesIO()
    im.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        buf, format="PNG", optimize=True)
    return buf.getvalue()


def stack_png(images: list[bytes]) -> bytes:
    from PIL import Image

    opened = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
    canvas = Image.new("RGB", (max(i.width for i in opened), sum(i.height for i in opened)), "white")
    y = 0
    for im in opened:
        canvas.paste(im, (0, y))
        y += im.height
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _svg_root(svg: str) -> tuple[str, float, float]:
    """The <svg>...</svg> element with unitless width/height, and its size in points."""
    svg = svg[svg.index("<svg"):]
    head_end = svg.index(">")
    head = svg[:head_end]
    sizes = []
    for name in ("width", "height"):
        m = re.search(rf'\s{name}="([\d.]+)(pt|px)?"', head)
        value = float(m.group(1)) * (0.75 if m.group(2) == "px" else 1.0)
        sizes.append(value)
        head = head[:m.start()] + head[m.end():]
    return head + svg[head_end:], sizes[0], sizes[1]


def stack_svg(images: list[bytes]) -> bytes:
    parts, y, width = [], 0.0, 0.0
    for raw in images:
        root, w, h = _svg_root(raw.decode())
        parts.append(root.replace("<svg", f'<svg x="0" y="{y:.2f}" width="{w:.2f}" height="{h:.2f}"', 1))
        y += h
        width = max(width, w)
    out = (f'<?xml version="1.0" encoding="utf-8"?>\n<svg xmlns="http://www.w3.org/2000/svg" '
           f'xmlns:xlink="http://www.w3.org/1999/xlink" width="{width:.2f}pt" height="{y:.2f}pt" '
           f'viewBox="0 0 {width:.2f} {y:.2f}" version="1.1">\n'
           f'<rect width="100%" height="100%" fill="white"/>\n' + "\n".join(parts) + "\n</svg>\n")
    return out.encode()


def image_width_pt(data: bytes, fmt: str, dpi: float) -> float:
    if fmt == "svg":
        return _svg_root(data.decode())[1]
    from PIL import Image

    return Image.open(io.BytesIO(data)).width * 72 / dpi


# ---- the command line ----------------------------------------------------------------

EPILOG = """\
examples:
  tools/visualize specs/noise2noise.yaml -o docs/noise2noise-forward.png
  tools/visualize specs/noise2noise.yaml --backward -o joint.svg
  tools/visualize specs/skipnet.yaml --memory -o memory.png --layout python
  tools/visualize specs/skipnet.yaml --backward -o joint.dot      (DOT text, no Graphviz needed)
  tools/visualize --package -o docs/package.png                  (the package's modules and imports)

--layout defaults to Graphviz (dot) where `dot` is on PATH, else the pure-Python layout.
"""


class UsageError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Draw the compiled graph of an n2ngraph spec.")
    p.add_argument("spec", nargs="?", help="network spec (YAML); none with --package")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="picture to write: .png, .svg or .dot (the suffix picks the format)")
    view = p.add_mutually_exclusive_group()
    view.add_argument("--backward", action="store_true",
                      help="the joint forward+backward graph: VJPs, accumulate (Σ) nodes, pruned VJPs")
    view.add_argument("--memory", action="store_true",
                      help="the memory plan: a colour per buffer, and live bytes per step vs no reuse")
    view.add_argument("--package", action="store_true",
                      help="no spec: n2ngraph's modules and their imports, layer by layer "
                           "(--layout only; the other options are for a spec)")
    p.add_argument("--layout", choices=("dot", "python"), default=None,
                   help="Graphviz or the pure-Python layout (default: dot if installed)")
    p.add_argument("--direction", choices=("TB", "LR"), default="TB",
                   help="top-down (default) or left-to-right")
    p.add_argument("--shape", metavar="N,C,H,W", default=None,
                   help="input shape to compile for (default: the recipe's batch and crop)")
    p.add_argument("--float64", action="store_true", help="compile in float64 (default float32)")
    p.add_argument("--no-rewrite", action="store_true",
                   help="draw the graph as the spec writes it, before the rewrite pass")
    return p


def _parse_shape(text: str | None):
    if text is None:
        return None
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(","))
    except ValueError:
        raise UsageError(f"--shape: expected N,C,H,W, got {text!r}") from None
    if len(dims) != 4 or min(dims) < 1:
        raise UsageError(f"--shape: expected four positive sizes N,C,H,W, got {text!r}")
    return dims


def _format_and_layout(output: str, layout: str | None) -> tuple[str, str]:
    """The format -o's suffix picks, and the layout to use (dot where installed)."""
    fmt = Path(output).suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise UsageError(f"-o {output}: the suffix picks the format; use .png, .svg or .dot")
    if layout is None:
        layout = "dot" if dot_binary() else "python"
    if layout == "dot" and fmt != "dot" and not dot_binary():
        raise UsageError("--layout dot needs Graphviz's `dot` on PATH "
                         "(apt-get install graphviz); or use --layout python")
    return fmt, layout


def render_package(output: str, *, layout: str | None = None) -> Path:
    """``--package``: the package's modules and imports (package_picture.py)."""
    import package_picture  # imports this module: loaded only when asked for

    fmt, layout = _format_and_layout(output, layout)
    data = package_picture.render(fmt, layout)
    if fmt == "png":
        data = small_png(data)
    out = Path(output)
    write_atomic(out, lambda temp: Path(temp).write_bytes(data))
    return out


def render(spec_path: str, output: str, *, mode: str = "forward", layout: str | None = None,
           direction: str = "TB", shape=None, float64: bool = False, rewrite: bool = True) -> Path:
    out = Path(output)
    fmt, layout = _format_and_layout(output, layout)
    spec, compiled, dtype = compile_spec(spec_path, mode, shape, float64, rewrite)
    first = spec.inputs[0].name
    input_shape = compiled.graph[first].shape
    pic = build_picture(spec, compiled, mode, dtype, input_shape)
    check_size(len(pic.boxes), spec_path, "boxes")

    if fmt == "dot":
        data = to_dot(pic, direction, legend=True).encode()
    else:
        dpi = 96 if layout == "dot" else 110
        graph_img = (run_dot(to_dot(pic, direction, legend=False), fmt, dpi) if layout == "dot"
                     else render_python(pic, direction, fmt))
        if mode == "memory":
            width = image_width_pt(graph_img, fmt, dpi)
            timeline = render_timeline(pic, compiled, fmt, width, dpi)
            data = stack_png([graph_img, timeline]) if fmt == "png" else stack_svg([graph_img, timeline])
        else:
            data = graph_img
        if fmt == "png":
            data = small_png(data)
    write_atomic(out, lambda temp: Path(temp).write_bytes(data))
    return out


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    mode = "backward" if args.backward else "memory" if args.memory else "forward"
    try:
        if args.package:
            if args.spec:
                raise UsageError(f"--package draws the package, not a spec: drop {args.spec}")
            render_package(args.output, layout=args.layout)
            return 0
        if not args.spec:
            raise UsageError("which spec? give SPEC (or --package for the package itself)")
        render(args.spec, args.output, mode=mode, layout=args.layout, direction=args.direction,
               shape=_parse_shape(args.shape), float64=args.float64, rewrite=not args.no_rewrite)
    except (ng.SpecError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
