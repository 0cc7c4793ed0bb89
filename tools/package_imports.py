"""Which module of n2ngraph imports which, read from the source with ``ast``.

Nothing is imported or run, so a broken module or a layering mistake is still read.
Every import statement counts, also those inside functions and under
``TYPE_CHECKING``: a deferred import is still a dependency, only a hidden one. Only
imports that name the package's own modules are kept; each is resolved to the module
it loads (``from ..runtime import program`` to ``n2ngraph.runtime.program``, ``from
..ops import scalar`` to the package ``n2ngraph.ops``). Importing a submodule also runs
its parent packages' ``__init__``; that implicit step is not recorded as an import.

Used by ``tools/visualize --package`` (the picture) and ``tests/test_layering.py``
(the rule the picture shows).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import networkx as nx

PACKAGE = "n2ngraph"
PACKAGE_DIR = Path(__file__).resolve().parent.parent / PACKAGE

LAYERS = ("errors", "ops", "codegen", "kernels", "compiler", "runtime", "app", "compat", "root")
"""Bottom to top. A module may import its own layer or any layer below it. ``root`` is
the facade (``n2ngraph/__init__.py``) and the ``python -m n2ngraph.run`` entry point,
which stand on everything; ``errors`` is ``errors.py``, which everything may raise."""

ROOT_MODULES = (PACKAGE, PACKAGE + ".run")


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name: n2ngraph.compiler.schedule
    imported: str  # the module the statement loads: n2ngraph.runtime.program
    path: str  # the importer's file, relative to the repository: n2ngraph/compiler/schedule.py
    line: int
    statement: str  # the source text: from ..runtime import program

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: `{self.statement}` imports {self.imported}"


def modules(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Dotted name -> file of every module of the package (``__init__`` names its package)."""
    found = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def layer_of(module: str) -> str:
    """The layer of a dotted module name: its folder under the package, ``errors``, or
    ``root``. A module that belongs to none is an error, so that a new one is placed."""
    parts = module.split(".")[1:]
    if module in ROOT_MODULES:
        return "root"
    if parts and parts[0] in LAYERS[:-1]:
        return parts[0]
    raise ValueError(f"{module} is in no layer of tools/package_imports.py's LAYERS: "
                     f"put it in a layer's folder, or name it there")


def imports(package_dir: Path = PACKAGE_DIR) -> list[Import]:
    """Every import of one of the package's modules by another, in file and line order."""
    known = modules(package_dir)
    found = []
    for name, path in known.items():
        source = path.read_text()
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(source, str(path))):
            for target in _targets(node, name, is_package, known):
                found.append(Import(name, target, str(path.relative_to(package_dir.parent)),
                                    node.lineno, _statement(source, node)))
    found.sort(key=lambda i: (i.path, i.line, i.imported))
    return found


def import_graph(found: list[Import]) -> nx.DiGraph:
    """Importer -> imported, one edge per pair; ``imports`` holds the statements."""
    graph = nx.DiGraph()
    for imp in found:
        if graph.has_edge(imp.importer, imp.imported):
            graph.edges[imp.importer, imp.imported]["imports"].append(imp)
        else:
            graph.add_edge(imp.importer, imp.imported, imports=[imp])
    return graph


def _targets(node: ast.AST, importer: str, is_package: bool, known) -> list[str]:
    if isinstance(node, ast.Import):
        return [_nearest(a.name, known) for a in node.names if _ours(a.name)]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        here = importer.split(".") if is_package else importer.split(".")[:-1]
        base = here[:len(here) - node.level + 1]
        module = ".".join(base + ([node.module] if node.module else []))
    else:
        module = node.module or ""
    if not _ours(module):
        return []
    # `from pkg import name`: name is a submodule, or something pkg defines
    targets = {f"{module}.{a.name}" if f"{module}.{a.name}" in known else _nearest(module, known)
               for a in node.names}
    return sorted(targets)


def _ours(module: str) -> bool:
    return module == PACKAGE or module.startswith(PACKAGE + ".")


def _nearest(module: str, known) -> str:
    """The module itself, or (a name that is no file, e.g. a typo) its nearest parent."""
    while module not in known and "." in module:
        module = module.rsplit(".", 1)[0]
    return module


def _statement(source: str, node: ast.AST) -> str:
    text = ast.get_source_segment(source, node) or ""
    return " ".join(text.split())
