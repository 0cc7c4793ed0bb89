"""C source in, a loaded library out: the machine's C compiler, a disk cache, ctypes.

A generated kernel is C source made by a generator in this package. ``library`` compiles
it once per machine (``-O3 -march=native``, OpenMP where the compiler has it) into a
shared library under the cache directory, named by a hash of everything that decides
the binary: the source, the compiler's path and version, the flags and the CPU. A
second process, or a second run, loads the cached file instead of compiling again.

Where no compiler is found, ``compiler()`` is None and the kernel table keeps to the
tensor-op kernels (as ``--no-codegen`` does). A compile that fails is a ``CodegenError``
with the compiler's message, raised while a plan is built, before any training step.

OpenMP: the library links ``libgomp.so.1``; torch's CPU build already loaded a library
of that name, so the loader binds the generated code to torch's own OpenMP runtime and
its thread pool, not a second pool whose spinning threads would fight torch's.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import attrs
import torch

FLAGS = ("-O3", "-march=native", "-std=c99", "-shared", "-fPIC", "-fno-math-errno",
         "-fno-trapping-math")
"""``-fno-trapping-math`` lets the compiler compute both sides of a select (``v > 0 ? v :
v * slope``) and vectorise it instead of branching on every element; it changes no
result, only the promise to keep floating-point exception flags, which nothing reads."""
OPENMP = "-fopenmp"
COMPILE_SECONDS = 120
"""A compile that takes longer than this is stopped and reported."""


class CodegenError(RuntimeError):
    """A generated kernel could not be built or loaded: the message says which and why."""


@attrs.frozen
class Compiler:
    path: str
    version: str
    openmp: bool

    def flags(self) -> tuple[str, ...]:
        return FLAGS + ((OPENMP,) if self.openmp else ())


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=COMPILE_SECONDS, **kwargs)


@functools.cache
def compiler() -> Compiler | None:
    """The C compiler to use: ``$CC``, else ``cc``, ``gcc`` or ``clang`` on the PATH,
    if it builds a shared library on this machine; None otherwise."""
    names = [os.environ["CC"]] if os.environ.get("CC") else ["cc", "gcc", "clang"]
    for name in names:
        path = shutil.which(name)
        if path is None:
            continue
        try:
            version = _run([path, "--version"]).stdout.splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            continue
        for openmp in (True, False):
            found = Compiler(path, version, openmp)
            if _builds(found):
                return found
    return None


def _builds(found: Compiler) -> bool:
    """Whether ``found`` compiles a tiny OpenMP-using library (or a plain one)."""
    probe = "int n2ngraph_probe(int n) {\n#pragma omp parallel for\n" \
            "for (int i = 0; i < n; i++) {}\nreturn n; }\n"
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp, "probe.c"), Path(tmp, "probe.so")
        source.write_text(probe)
        try:
            done = _run([found.path, *found.flags(), "-o", str(target), str(source)])
        except (OSError, subprocess.SubprocessError):
            return False
        return done.returncode == 0 and target.exists()


def cache_dir() -> Path:
    """``$N2NGRAPH_CACHE``, else ``$XDG_CACHE_HOME/n2ngraph`` or ``~/.cache/n2ngraph``;
    kernels live in its ``kernels/`` folder."""
    root = os.environ.get("N2NGRAPH_CACHE")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        root = Path(base) / "n2ngraph"
    return Path(root) / "kernels"


@functools.cache
def _cpu() -> str:
    """What ``-march=native`` depends on: the CPU's model and flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({line for line in lines
                                 if line.startswith(("model name", "flags", "vendor_id"))}))
    except OSError:
        return platform.processor() or platform.machine()


def _key(source: str, found: Compiler) -> str:
    text = "\n".join([source, found.path, found.version, " ".join(found.flags()), _cpu()])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


_LOADED: dict[str, ctypes.CDLL] = {}


def library(name: str, source: str) -> ctypes.CDLL:
    """The shared library built from ``source``: loaded from the cache, or compiled
    into it first. ``name`` names it in the cache and in error messages."""
    found = compiler()
    if found is None:
        raise CodegenError(f"no C compiler found for the generated kernel {name!r} "
                           "(set CC, or run with --no-codegen)")
    target = cache_dir() / f"{name}-{_key(source, found)}.so"
    if str(target) not in _LOADED:
        if not target.exists():
            _compile(name, source, found, target)
        try:
            _LOADED[str(target)] = ctypes.CDLL(str(target))
        except OSError as error:
            raise CodegenError(f"the generated kernel {name!r} did not load from {target}: "
                               f"{error}") from None
    return _LOADED[str(target)]


def _compile(name: str, source: str, found: Compiler, target: Path) -> None:
    """Compiles into a private file beside ``target``, then renames it into place, so
    that a process reading the cache never sees half a library."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CodegenError(f"cannot create the kernel cache {target.parent}: {error.strerror} "
                           "(set N2NGRAPH_CACHE to a writable folder)") from None
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        c_file, so_file = Path(tmp, f"{name}.c"), Path(tmp, f"{name}.so")
        c_file.write_text(source)
        try:
            done = _run([found.path, *found.flags(), "-o", str(so_file), str(c_file)])
        except subprocess.TimeoutExpired:
            raise CodegenError(f"compiling the generated kernel {name!r} took over "
                               f"{COMPILE_SECONDS} s; stopped") from None
        if done.returncode != 0:
            message = (done.stderr or done.stdout).strip().splitlines()[:6]
            raise CodegenError(f"{found.path} could not compile the generated kernel {name!r}: "
                               + " | ".join(message))
        os.replace(so_file, target)


ELEMENT_TYPES = {torch.float32: ("f32", ctypes.c_float), torch.float64: ("f64", ctypes.c_double)}
"""The element types generated code is written for: each function exists once per type,
its name ending in the suffix, its scalar arguments of the C type."""

POINTER, INDEX, THREADS = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
SCALAR = "scalar"
"""In a signature: an argument of the element type (float or double)."""


def functions(lib: ctypes.CDLL, signatures: dict[str, list]) -> dict[tuple[str, torch.dtype], ctypes._CFuncPtr]:
    """Each function of ``signatures`` (name -> argument types) in ``lib``, for each
    element type, typed for ctypes: {(name, dtype): function}."""
    found = {}
    for dtype, (suffix, scalar) in ELEMENT_TYPES.items():
        for name, argtypes in signatures.items():
            fn = getattr(lib, f"{name}_{suffix}")
            fn.argtypes, fn.restype = [scalar if a == SCALAR else a for a in argtypes], None
            found[name, dtype] = fn
    return found
