"""``tools/visualize --package``: n2ngraph's modules and imports, drawn layer by layer.

One box per module, in a band per layer (``package_imports.LAYERS``), the facade on top
and ``errors`` at the bottom; one arrow per importing module and imported module, from
the importer down to what it uses. Within a band, a module sits above the modules of
its layer that it imports. An arrow that points up a layer is red: the layering test
(``tests/test_layering.py``) fails on it. The boxes and arrows are a
``visualize_lib.Picture``, laid out by Graphviz or by the pure-Python layered layout
like the graph pictures; only the bands are drawn here.
"""

from __future__ import annotations

import networkx as nx

import package_imports as pkg
import visualize_lib as viz

ROLES = {  # what each layer is for, printed in its band
    "root": "facade and entry point",
    "compat": "the course's module API",
    "app": "CLI, training, photos",
    "runtime": "buffers, plans, optimizers",
    "compiler": "pure passes over frozen IR",
    "kernels": "how ops are computed",
    "codegen": "C source it generates",
    "ops": "what each op means",
    "errors": "the error a user sees",
}
COLOURS = {  # layer -> (fill, border)
    "root": ("#f1f5f9", "#334155"), "compat": ("#fce7f3", "#9d174d"),
    "app": ("#ede9fe", "#5b21b6"), "runtime": ("#dbeafe", "#1d4ed8"),
    "compiler": ("#dcfce7", "#15803d"), "kernels": ("#ffedd5", "#c2410c"),
    "codegen": ("#e0e7ff", "#4338ca"),
    "ops": ("#fef3c7", "#b45309"), "errors": ("#fee2e2", "#b91c1c"),
}
UPWARD = "#dc2626"
LABEL_COLUMN = 136.0  # points left of the layout for the bands' names
BAND_PAD = 4.0


def build_picture(found: list[pkg.Import] | None = None) -> tuple[viz.Picture, dict[str, str]]:
    """(the picture, module -> layer). Rows: the layers top down, and inside each the
    modules by their depth in that layer's own imports."""
    found = pkg.imports() if found is None else found
    names = pkg.modules()
    layer = {m: pkg.layer_of(m) for m in names}
    graph = pkg.import_graph(found)
    graph.add_nodes_from(names)
    rank = {name: i for i, name in enumerate(pkg.LAYERS)}
    grid, row = {}, 0
    for name in reversed(pkg.LAYERS):
        members = [m for m in names if layer[m] == name]
        if not members:
            continue
        depth = _depths(graph.subgraph(members))
        for m in members:
            grid[m] = 2 * (row + depth[m])
        row += max(depth.values()) + 1
    boxes = {m: _box(m, names[m], layer[m]) for m in names}
    arrows = []
    for a, b in graph.edges:
        up = rank[layer[a]] < rank[layer[b]]
        arrows.append(viz.Arrow(a, b, "", UPWARD if up else viz.EDGE_FORWARD, 2.0 if up else 0.8))
    title = (f"{pkg.PACKAGE}: {len(names)} modules, {graph.number_of_edges()} imports "
             "(importer -> imported; red: against the layering)")
    return viz.Picture(title, boxes, arrows, grid), layer


def _depths(graph: nx.DiGraph) -> dict[str, int]:
    """Longest import path from a module nothing in its layer imports (cycles collapsed)."""
    dag = nx.condensation(graph)
    depth: dict[int, int] = {}
    for c in nx.topological_sort(dag):
        depth[c] = max((depth[p] + 1 for p in dag.predecessors(c)), default=0)
    return {m: depth[c] for m, c in dag.graph["mapping"].items()}


def _box(module: str, path, layer: str) -> viz.Box:
    fill, border = COLOURS[layer]
    rel = path.relative_to(pkg.PACKAGE_DIR).as_posix()
    lines = len(path.read_text().splitlines())
    return viz.Box(module, "module", [(rel, "title"), (f"{lines} lines", "note")], fill, border)


def to_dot(pic: viz.Picture, layer: dict[str, str]) -> str:
    """visualize_lib's DOT text with a cluster per layer."""
    text = viz.to_dot(pic, "TB", legend=False).rstrip().removesuffix("}")
    for name in reversed(pkg.LAYERS):
        members = [m for m in pic.boxes if layer[m] == name]
        if members:
            fill, border = COLOURS[name]
            text += (f"  subgraph {viz._q('cluster_' + name)} {{\n"
                     f"    label={viz._q(f'{name}: {ROLES[name]}')}; labeljust=l; style=filled; "
                     f'fillcolor="{fill}40"; color="{border}";\n'
                     + "".join(f"    {viz._q(m)};\n" for m in members) + "  }\n")
    return text + "}\n"


def draw(pic: viz.Picture, layer: dict[str, str], fmt: str) -> bytes:
    """The pure-Python layout, with the layers as bands behind it and named left of it."""
    from matplotlib.patches import Rectangle

    lay = viz.python_layout(pic, "TB")
    lay.labels = []  # the arrows carry no text
    plt = viz._pyplot()
    fig = plt.figure(figsize=((lay.width + LABEL_COLUMN) / 72, lay.height / 72))
    ax = fig.add_axes((0, 0, 1, 1))
    viz.draw_layout(pic, lay, ax)
    ax.set_xlim(-LABEL_COLUMN, lay.width)
    for name in pkg.LAYERS:
        spans = [lay.boxes[m] for m in pic.boxes if layer[m] == name]
        if not spans:
            continue
        low = min(y for _, y, _, _ in spans) - BAND_PAD
        high = max(y + h for _, y, _, h in spans) + BAND_PAD
        fill, border = COLOURS[name]
        ax.add_patch(Rectangle((-LABEL_COLUMN + 6, low), lay.width + LABEL_COLUMN - 12, high - low,
                               fc=fill, ec=border, lw=0.6, alpha=0.45, zorder=0))
        ax.text(-LABEL_COLUMN + 12, high - 6, name, fontsize=viz.FONT["title"], family=viz.MONO,
                weight="bold", color=border, va="top", ha="left")
        ax.text(-LABEL_COLUMN + 12, high - 20, ROLES[name],
                fontsize=viz.FONT["note"], family=viz.MONO, color=viz.TEXT["note"], va="top", ha="left")
    return viz._save(fig, fmt)


def render(fmt: str, layout: str) -> bytes:
    """The picture's bytes in ``fmt`` (png, svg or dot), laid out by ``layout``."""
    pic, layer = build_picture()
    if fmt == "dot":
        return to_dot(pic, layer).encode()
    if layout == "dot":
        return viz.run_dot(to_dot(pic, layer), fmt)
    return draw(pic, layer, fmt)
