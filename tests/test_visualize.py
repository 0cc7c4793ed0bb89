"""tools/visualize: every spec drawn forward and backward, in both layouts, as PNG, SVG
and DOT; the DOT text holds the whole compiled graph; the memory view; bad input."""

from __future__ import annotations

import re
import subprocess
import sys
from xml.etree import ElementTree

import pytest

import visualize_lib as viz  # tools/ is on sys.path (helpers.py)
from helpers import ROOT, SPECS

HAVE_DOT = viz.dot_binary() is not None
LAYOUTS = ["python", pytest.param("dot", marks=pytest.mark.skipif(not HAVE_DOT, reason="Graphviz not installed"))]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NODE = re.compile(r'^\s*"((?:[^"\\]|\\.)*)"\s*\[', re.M)
EDGE = re.compile(r'^\s*"((?:[^"\\]|\\.)*)"\s*->\s*"((?:[^"\\]|\\.)*)"\s*\[(.*)\];$', re.M)
SPEC_IDS = [p.stem for p in SPECS]


def _unquote(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s)


def _dot_edges(text: str) -> dict[tuple[str, str], str]:
    """(tail, head) -> attributes of every edge; ``b -> a [dir=back]`` is the edge a -> b."""
    edges = {}
    for a, b, attrs in EDGE.findall(text):
        a, b = _unquote(a), _unquote(b)
        edges[(b, a) if "dir=back" in attrs else (a, b)] = attrs
    return edges


def _check_picture(path, fmt):
    data = path.read_bytes()
    if fmt == "png":
        assert data.startswith(PNG_MAGIC), path
        assert len(data) > 5000
    else:
        text = data.decode()
        assert "<svg" in text and text.rstrip().endswith("</svg>"), path
        ElementTree.fromstring(data)  # well-formed XML
    assert not list(path.parent.glob(f".{path.name}.*")), "temp file left behind"


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", ["forward", "backward"])
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_every_spec_renders_to_png_and_svg(spec, mode, layout, tmp_path):
    for fmt in ("png", "svg"):
        out = tmp_path / f"{spec.stem}-{mode}.{fmt}"
        argv = [str(spec), "-o", str(out), "--layout", layout] + (["--backward"] if mode == "backward" else [])
        assert viz.main(argv) == 0
        _check_picture(out, fmt)


@pytest.mark.parametrize("mode", ["forward", "backward", "memory"])
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_dot_output_holds_every_node_and_edge(spec, mode, tmp_path):
    out = tmp_path / "graph.dot"
    flag = {"forward": [], "backward": ["--backward"], "memory": ["--memory"]}[mode]
    assert viz.main([str(spec), "-o", str(out), "--layout", "python", *flag]) == 0
    text = out.read_text()
    assert text.startswith("digraph") and text.rstrip().endswith("}")
    nodes = {_unquote(n) for n in NODE.findall(text)}
    edges = _dot_edges(text)
    _, compiled, _ = viz.compile_spec(str(spec), mode)
    graph = compiled.graph
    assert set(graph.nodes) <= nodes
    assert set(graph.dag.edges) <= set(edges)
    for u, v in graph.dag.edges:  # the edge labels carry shape and dtype
        shape = viz.fmt_shape(graph[u].shape)
        assert re.match(rf'label="[^"]*{re.escape(shape)} f32"', edges[u, v]), (u, v, edges[u, v])
    if mode == "forward":
        assert compiled.kind == "infer"
        assert {"vjp", "accumulate", "seed"}.isdisjoint(node.kind for node in graph.nodes.values())
    if mode == "backward":
        pruned = graph.pruned
        assert pruned, "every spec prunes the VJP towards its input image"
        for node, role in pruned:
            assert f"pruned:{node}/{role}" in nodes
            assert (f"grad:{node}", f"pruned:{node}/{role}") in edges
        accumulate = graph.of_kind("accumulate")
        for v in accumulate:
            assert "Σ accumulate" in text.split(f'"{v}" [label=', 1)[1].split("\n", 1)[0]
    if mode == "memory":
        for v, b in compiled.plan.slots.items():
            if v in graph:
                assert f"buffer {b} ·" in text.split(f'"{v}" [label=', 1)[1].split("\n", 1)[0]
        assert "legend:buffers" in text


def test_backward_styles_vjp_accumulate_and_pruned_apart():
    spec, compiled, dtype = viz.compile_spec(str(ROOT / "specs" / "skipnet.yaml"), "backward")
    pic = viz.build_picture(spec, compiled, "backward", dtype, (8, 3, 32, 32))
    fills = {b.kind: b.fill for b in pic.boxes.values()}
    assert len({fills["op"], fills["vjp"], fills["accumulate"], fills["seed"], fills["pruned"]}) == 5
    assert pic.boxes["grad:enc_act"].kind == "accumulate"
    ghosts = [b for b in pic.boxes.values() if b.kind == "pruned"]
    assert ghosts and all(b.dashed and b.muted for b in ghosts)
    # mirrored: each VJP sits between its forward node and that node's input
    for v, node in compiled.graph.nodes.items():
        if node.kind == "vjp":
            fwd = node.fwd
            assert pic.grid[viz.subject_of(compiled.graph, v)] < pic.grid[v] < pic.grid[fwd]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_memory_view_renders_with_a_timeline(layout, tmp_path):
    spec = ROOT / "specs" / "skipnet.yaml"
    for fmt in ("png", "svg"):
        out = tmp_path / f"memory.{fmt}"
        assert viz.main([str(spec), "--memory", "-o", str(out), "--layout", layout]) == 0
        _check_picture(out, fmt)
    assert out.read_text().count("<svg") >= 3  # the graph and the timeline, nested in one


def test_live_bytes_stay_under_the_plan_and_no_reuse_grows_to_unshared():
    _, compiled, _ = viz.compile_spec(str(ROOT / "specs" / "noise2noise.yaml"), "memory")
    plan = compiled.plan
    steps, live, unshared = viz.live_bytes(compiled)
    assert steps[0] == -1 and len(steps) == len(compiled.schedule.order) + 1
    assert max(live) <= plan.planned_bytes < plan.unshared_bytes == unshared[-1]
    assert all(a <= b for a, b in zip(unshared, unshared[1:]))
    assert all(v <= u for v, u in zip(live, unshared))


def _unet_yaml(depth: int = 4, width: int = 8) -> str:
    """A U-Net (additive skips): depth levels down, depth levels up."""
    nodes, prev, ch = [], "noisy", 3
    skips = []
    for d in range(depth):
        out = width * 2**d
        nodes += [f"  e{d}: {{op: conv2d, in: {prev}, in_channels: {ch}, out_channels: {out}, kernel: 3, padding: 1}}",
                  f"  e{d}r: {{op: relu, in: e{d}}}",
                  f"  p{d}: {{op: conv2d, in: e{d}r, in_channels: {out}, out_channels: {out}, kernel: 3, stride: 2, padding: 1}}",
                  f"  p{d}r: {{op: relu, in: p{d}}}"]
        skips.append((f"e{d}r", out))
        prev, ch = f"p{d}r", out
    for d in reversed(range(depth)):
        skip, out = skips[d]
        nodes += [f"  u{d}: {{op: upsample_nearest, in: {prev}, scale: 2}}",
                  f"  c{d}: {{op: conv2d, in: u{d}, in_channels: {ch}, out_channels: {out}, kernel: 3, padding: 1}}",
                  f"  c{d}r: {{op: relu, in: c{d}}}",
                  f"  s{d}: {{op: add, in: [c{d}r, {skip}]}}"]
        prev, ch = f"s{d}", out
    nodes += [f"  head: {{op: conv2d, in: {prev}, in_channels: {ch}, out_channels: 3, kernel: 1}}",
              "  denoised: {op: add, in: [head, noisy]}",
              "  loss: {op: mse, in: [denoised, target]}"]
    return ("name: unet\ninputs:\n  noisy: {channels: 3}\n  target: {channels: 3}\nnodes:\n"
            + "\n".join(nodes) + "\noutput: denoised\nloss: loss\ntrain: {batch: 2, crop: 32}\n")


def _overlap(a, b, pad=0.5) -> bool:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return ax + pad < bx + bw and bx + pad < ax + aw and ay + pad < by + bh and by + pad < ay + ah


def _segment_hits(p, q, rect, pad=1.0) -> bool:
    """Whether segment pq passes through the inside of rect (Liang-Barsky)."""
    x0, y0, w, h = rect[0] + pad, rect[1] + pad, rect[2] - 2 * pad, rect[3] - 2 * pad
    dx, dy = q[0] - p[0], q[1] - p[1]
    lo, hi = 0.0, 1.0
    for d, s, a, b in ((dx, p[0], x0, x0 + w), (dy, p[1], y0, y0 + h)):
        if abs(d) < 1e-12:
            if not a < s < b:
                return False
            continue
        t1, t2 = (a - s) / d, (b - s) / d
        lo, hi = max(lo, min(t1, t2)), min(hi, max(t1, t2))
        if lo >= hi:
            return False
    return True


@pytest.mark.parametrize("direction", ["TB", "LR"])
def test_python_layout_of_a_unet_never_overlaps(direction, tmp_path):
    """U-Net-sized joint graph: no two boxes or labels overlap, and no edge runs
    through a box or label other than its own."""
    path = tmp_path / "unet.yaml"
    path.write_text(_unet_yaml())
    spec, compiled, dtype = viz.compile_spec(str(path), "backward")
    assert len(compiled.graph) > 120
    pic = viz.build_picture(spec, compiled, "backward", dtype, (2, 3, 32, 32))
    lay = viz.python_layout(pic, direction)
    rects = [(r, ("box", v)) for v, r in lay.boxes.items()]
    rects += [((x, y, w, h), ("label", i)) for i, (x, y, w, h, _t, _a) in enumerate(lay.labels)]
    assert len(lay.labels) == len(pic.arrows)
    rects.sort(key=lambda item: item[0][0])
    for i, (a, _) in enumerate(rects):  # sweep on x
        for b, _ in rects[i + 1:]:
            if b[0] >= a[0] + a[2]:
                break
            assert not _overlap(a, b), (a, b)
    own_labels = {id(a): (x, y, w, h) for x, y, w, h, _t, a in lay.labels}
    for arrow, pts in lay.edges:
        mine = {lay.boxes[arrow.src], lay.boxes[arrow.dst], own_labels[id(arrow)]}
        for p, q in zip(pts, pts[1:]):
            lo_x, hi_x = min(p[0], q[0]), max(p[0], q[0])
            for rect, _ in rects:
                if rect in mine or rect[0] > hi_x or rect[0] + rect[2] < lo_x:
                    continue
                assert not _segment_hits(p, q, rect), (arrow.src, arrow.dst, rect)


def test_shape_and_float64_reach_the_labels(tmp_path):
    out = tmp_path / "g.dot"
    spec = str(ROOT / "specs" / "noise2noise.yaml")
    assert viz.main([spec, "-o", str(out), "--shape", "1,3,64,48", "--float64"]) == 0
    text = out.read_text()
    assert "1×3×64×48 f64" in text and "1×24×32×24 f64" in text and " f32" not in text


def test_pictures_show_the_rewritten_graph_unless_told_not_to(tmp_path):
    spec = str(ROOT / "specs" / "noise2noise.yaml")
    fused, plain = tmp_path / "fused.dot", tmp_path / "plain.dot"
    assert viz.main([spec, "-o", str(fused), "--shape", "64,3,32,32"]) == 0
    assert viz.main([spec, "-o", str(plain), "--shape", "64,3,32,32", "--no-rewrite"]) == 0
    assert "upsample_conv2d" in fused.read_text() and '"up1"' not in fused.read_text()
    assert "upsample_conv2d" not in plain.read_text() and '"up1"' in plain.read_text()


def _run(argv, capsys):
    code = viz.main(argv)
    err = capsys.readouterr().err
    return code, err


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ninputs:\n  x: {channels: 3}\nnodes:\n  c: {op: conv9d, in: x}\noutput: c\n")
    out = tmp_path / "out.png"
    cases = [
        ([str(bad), "-o", str(out)], "unknown op"),
        ([str(tmp_path / "missing.yaml"), "-o", str(out)], "cannot read spec"),
        ([str(SPECS[0]), "-o", str(tmp_path / "out.jpg")], ".png, .svg or .dot"),
        ([str(SPECS[0]), "-o", str(out), "--shape", "4,3,32"], "--shape"),
        ([str(SPECS[0]), "-o", str(out), "--shape", "4,5,32,32"], "channels"),
    ]
    for argv, expected in cases:
        code, err = _run(argv, capsys)
        assert code == 2, argv
        assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err
        assert "Traceback" not in err
    no_loss = tmp_path / "noloss.yaml"
    no_loss.write_text("name: nl\ninputs:\n  x: {channels: 3}\nnodes:\n  r: {op: relu, in: x}\noutput: r\n")
    code, err = _run([str(no_loss), "--backward", "-o", str(out)], capsys)
    assert code == 2 and "no 'loss'" in err
    # without Graphviz: --layout dot is a clear error, the default falls back to python
    monkeypatch.setattr(viz, "dot_binary", lambda: None)
    code, err = _run([str(SPECS[0]), "-o", str(out), "--layout", "dot"], capsys)
    assert code == 2 and "Graphviz" in err and err.count("\n") == 1
    assert not out.exists()
    assert viz.main([str(no_loss), "-o", str(out)]) == 0
    _check_picture(out, "png")
    assert viz.main([str(no_loss), "--memory", "-o", str(tmp_path / "m.dot")]) == 0  # inference plan


def _chain(path, nodes: int, loss: bool = False):
    """A spec of a 1x1 conv and ``nodes - 1`` relus in a row (and an mse against a target)."""
    lines = ["name: chain", "inputs:", "  x: {channels: 1}", "  t: {channels: 1}", "nodes:",
             "  n0: {op: conv2d, in: x, in_channels: 1, out_channels: 1, kernel: 1}"] + [f"  n{i}: {{op: relu, in: n{i - 1}}}" for i in range(1, nodes)]
    lines += ["  loss: {op: mse, in: [n%d, t]}" % (nodes - 1), "loss: loss"] if loss else []
    path.write_text("\n".join(lines + [f"output: n{nodes - 1}", "train: {crop: 4, batch: 1}"]) + "\n")
    return path


def test_a_spec_too_big_to_draw_is_refused_before_compiling(tmp_path, capsys, monkeypatch):
    """Before: a 60,000-node spec was compiled and laid out for minutes."""
    spec = _chain(tmp_path / "long.yaml", viz.MAX_BOXES)  # and its input
    out = tmp_path / "long.png"
    monkeypatch.setattr(viz.ng, "Program", lambda *a, **k: pytest.fail("compiled"))
    for mode in ([], ["--backward"], ["--memory"]):
        code, err = _run([str(spec), "-o", str(out), *mode], capsys)
        assert code == 2 and err.count("\n") == 1, err
        assert (f"{viz.MAX_BOXES + 1:,} inputs and nodes to draw; tools/visualize draws at most "
                f"{viz.MAX_BOXES:,}") in err
    assert not out.exists()


def test_a_picture_with_too_many_boxes_is_refused_before_drawing(tmp_path, capsys, monkeypatch):
    """Fewer nodes than the limit, but the backward picture's VJPs take it over."""
    monkeypatch.setattr(viz, "MAX_BOXES", 20)
    spec = _chain(tmp_path / "chain.yaml", 15, loss=True)
    out = tmp_path / "chain.png"
    assert viz.main([str(spec), "-o", str(out)]) == 0  # forward: 18 boxes (the conv's 3)
    out.unlink()
    monkeypatch.setattr(viz, "render_python", lambda *a, **k: pytest.fail("drawn"))
    code, err = _run([str(spec), "--backward", "-o", str(out)], capsys)
    assert code == 2 and "boxes to draw; tools/visualize draws at most 20" in err, err
    assert not out.exists()


def test_command_line(tmp_path):
    out = tmp_path / "joint.dot"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "visualize"), str(SPECS[0]), "--backward",
                           "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "vjp" in out.read_text()
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "visualize"), "nope.yaml", "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr


def test_package_picture_renders_every_module_and_import(tmp_path):
    """tools/visualize --package: PNG and SVG render; the DOT text holds every module in
    its layer's cluster and every import as an edge, importer to imported."""
    import package_imports as pkg

    for fmt in ("png", "svg"):
        out = tmp_path / f"package.{fmt}"
        assert viz.main(["--package", "-o", str(out), "--layout", "python"]) == 0
        _check_picture(out, fmt)
    out = tmp_path / "package.dot"
    assert viz.main(["--package", "-o", str(out)]) == 0
    text = out.read_text()
    found = pkg.imports()
    assert set(pkg.modules()) <= {_unquote(n) for n in NODE.findall(text)}
    assert {(i.importer, i.imported) for i in found} <= set(_dot_edges(text))
    for layer in {pkg.layer_of(m) for m in pkg.modules()}:
        assert f'subgraph "cluster_{layer}"' in text


def test_package_picture_marks_an_upward_import():
    import package_imports as pkg
    import package_picture

    bad = pkg.Import("n2ngraph.compiler.schedule", "n2ngraph.runtime.program",
                     "n2ngraph/compiler/schedule.py", 1, "from ..runtime import program")
    pic, _ = package_picture.build_picture(pkg.imports() + [bad])
    colour = {(a.src, a.dst): a.color for a in pic.arrows}
    assert colour[bad.importer, bad.imported] == package_picture.UPWARD
    assert list(colour.values()).count(package_picture.UPWARD) == 1
    # layers stacked top down: the facade above the application, errors at the bottom
    assert pic.grid["n2ngraph"] < pic.grid["n2ngraph.app.cli"] < pic.grid["n2ngraph.runtime.program"] \
        < pic.grid["n2ngraph.compiler.schedule"] < pic.grid["n2ngraph.ops.base"] < pic.grid["n2ngraph.errors"]


def test_package_mode_takes_no_spec(capsys):
    code, err = _run(["--package", str(SPECS[0]), "-o", "x.png"], capsys)
    assert code == 2 and "--package" in err and err.count("\n") == 1
    code, err = _run(["-o", "x.png"], capsys)
    assert code == 2 and "SPEC" in err and err.count("\n") == 1
