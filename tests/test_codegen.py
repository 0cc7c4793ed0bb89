"""The code generator's plumbing: finding the C compiler, the disk cache, clear errors.

What the generated Winograd kernels compute is tested in test_winograd.py.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import textwrap

import pytest
from helpers import ROOT

from n2ngraph.codegen import CodegenError, build
from n2ngraph.kernels import table, winograd
from n2ngraph.ops.conv2d import Conv2d

needs_compiler = pytest.mark.skipif(build.compiler() is None, reason="no C compiler on this machine")
ADD = "double add(double a, double b) { return a + b; }\n"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("N2NGRAPH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(build, "_LOADED", {})
    return tmp_path / "cache" / "kernels"


@needs_compiler
def test_a_library_is_compiled_once_then_loaded_from_the_cache(cache, monkeypatch):
    import ctypes

    lib = build.library("add", ADD)
    lib.add.restype, lib.add.argtypes = ctypes.c_double, [ctypes.c_double, ctypes.c_double]
    assert lib.add(1.5, 2.25) == 3.75
    built = list(cache.glob("add-*.so"))
    assert len(built) == 1 and not list(cache.glob("tmp*"))  # no half-written leftovers
    monkeypatch.setattr(build, "_LOADED", {})
    monkeypatch.setattr(build, "_compile", lambda *a: pytest.fail("compiled again"))
    assert build.library("add", ADD).add is not None


@needs_compiler
def test_another_source_is_another_library(cache, monkeypatch):
    build.library("add", ADD)
    build.library("add", ADD.replace("a + b", "b + a"))
    assert len(list(cache.glob("add-*.so"))) == 2


@needs_compiler
def test_a_compile_error_names_the_kernel_and_quotes_the_compiler(cache):
    with pytest.raises(CodegenError, match=r"could not compile the generated kernel 'broken': .*error"):
        build.library("broken", "int f( {\n")
    assert not list(cache.glob("broken*"))


def test_no_compiler_is_a_clear_error_and_the_table_keeps_to_tensor_ops(monkeypatch):
    monkeypatch.setattr(build, "compiler", lambda: None)
    monkeypatch.setattr(table, "compiler", lambda: None)
    with pytest.raises(CodegenError, match="no C compiler found"):
        build.library("add", ADD)
    wide = Conv2d(32, 32, 3, padding=1)
    assert not table.codegen_runs("cpu")
    assert not isinstance(table.kernel_for(wide, "forward"), winograd.WinogradForward)


@needs_compiler
def test_an_unwritable_cache_is_a_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("N2NGRAPH_CACHE", str(blocker))
    monkeypatch.setattr(build, "_LOADED", {})
    with pytest.raises(CodegenError, match="cannot create the kernel cache .*N2NGRAPH_CACHE"):
        build.library("add", ADD)


def test_a_missing_compiler_named_by_CC_is_no_compiler(monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    build.compiler.cache_clear()
    try:
        assert build.compiler() is None
    finally:
        monkeypatch.delenv("CC")
        build.compiler.cache_clear()


def _summary(*options, env=None):
    done = subprocess.run([sys.executable, "-m", "n2ngraph.run", str(ROOT / "specs" / "unet.yaml"),
                           "--summary", "--steps", "0", "--batch", "1", "--crop", "16", *options],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, **(env or {})})
    return done


@needs_compiler
def test_summary_says_which_kernels_run_and_no_codegen_turns_them_off():
    on = _summary("--threads", "1")
    assert on.returncode == 0, on.stderr
    assert "kernels: generated where faster" in on.stdout
    assert "[WinogradForward + leaky_relu]" in on.stdout and "[done by its producer]" in on.stdout
    off = _summary("--no-codegen", "--threads", "1")
    assert "kernels: tensor ops only (--no-codegen)" in off.stdout
    assert "Winograd" not in off.stdout
    none = _summary("--threads", "1", env={"CC": "/nonexistent/cc", "PATH": "/nonexistent"})
    assert none.returncode == 0, none.stderr
    assert "tensor ops only (no C compiler found" in none.stdout and "Winograd" not in none.stdout


@needs_compiler
def test_a_compiler_that_fails_on_a_kernel_is_one_line_before_training(tmp_path):
    """A compiler that builds the probe but not the kernel: exit 2, one line that names
    the kernel and the way out, before any step, nothing half-written."""
    fake = tmp_path / "cc"
    fake.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        case "$*" in *probe.c*|--version) exec {build.compiler().path} "$@";; esac
        echo "fake.c:1: error: this compiler refuses generated kernels" >&2
        exit 1
        """))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    done = _summary("--threads", "1", env={"CC": str(fake), "N2NGRAPH_CACHE": str(tmp_path / "c")})
    assert done.returncode == 2
    err = done.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert re.search(r"could not compile the generated kernel '(winograd|pointwise)'", err), err
    assert "refuses generated kernels" in err and "--no-codegen" in err


def test_the_option_is_in_the_help(capsys):
    from n2ngraph.app.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--no-codegen" in capsys.readouterr().out
