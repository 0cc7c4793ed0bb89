"""The package's layers import downwards only, and no module imports itself round a cycle.

The layers, bottom to top (``tools/package_imports.LAYERS``): errors, ops (what an op
means), kernels (how it is computed), compiler (pure passes), runtime (plans and
buffers), app (the command line and training), compat (the course's module API), and
on top the facade ``n2ngraph/__init__.py`` and ``n2ngraph/run.py``. So a pass can be
read, tested and changed without the runtime or the application, and an op without
the compiler. The imports are read from the source (``tools/package_imports.py``),
those inside functions too, so a deferred import cannot hide a dependency.
``tools/visualize --package -o docs/package.png`` draws what this test checks.
"""

from __future__ import annotations

import networkx as nx
import pytest

import package_imports as pkg  # tools/ is on sys.path (helpers.py)

RANK = {layer: i for i, layer in enumerate(pkg.LAYERS)}

# Known violations, to be removed by the change that fixes each: (importer, imported).
# Empty: the tree had none when this test was written.
ALLOWED_UPWARD: set[tuple[str, str]] = set()
ALLOWED_CYCLES: set[frozenset[str]] = set()


@pytest.fixture(scope="module")
def found() -> list[pkg.Import]:
    return pkg.imports()


def test_the_reader_sees_the_package(found):
    names = pkg.modules()
    assert {"n2ngraph", "n2ngraph.run", "n2ngraph.errors", "n2ngraph.ops.conv2d",
            "n2ngraph.compiler.schedule", "n2ngraph.runtime.program", "n2ngraph.app.cli"} <= set(names)
    assert {pkg.layer_of(name) for name in names} <= set(pkg.LAYERS)
    pairs = {(i.importer, i.imported) for i in found}
    assert ("n2ngraph.run", "n2ngraph.app.cli") in pairs  # `from .app.cli import main`
    assert ("n2ngraph.ops", "n2ngraph.ops.activations") in pairs  # `from . import activations`


def test_no_module_imports_a_layer_above_its_own(found):
    upward = [f"{i} ({pkg.layer_of(i.importer)} imports {pkg.layer_of(i.imported)}, "
              f"a layer above it)"
              for i in found
              if RANK[pkg.layer_of(i.importer)] < RANK[pkg.layer_of(i.imported)]
              and (i.importer, i.imported) not in ALLOWED_UPWARD]
    assert not upward, ("imports against the layering (bottom to top: "
                        + " < ".join(pkg.LAYERS) + "):\n  " + "\n  ".join(upward))


def test_no_import_cycle(found):
    graph = pkg.import_graph(found)
    cycles = [c for c in nx.simple_cycles(graph) if frozenset(c) not in ALLOWED_CYCLES]
    lines = []
    for cycle in sorted(cycles, key=len)[:10]:
        lines.append(" -> ".join(cycle + cycle[:1]) + ":")
        for a, b in zip(cycle, cycle[1:] + cycle[:1]):
            lines += [f"    {imp}" for imp in graph.edges[a, b]["imports"]]
    assert not cycles, f"{len(cycles)} import cycle(s):\n  " + "\n  ".join(lines)
