"""Malformed and adversarial specs, generated: loading and compiling give only SpecError.

Hypothesis mutates the shipped specs (specs/*.yaml): keys deleted, duplicated or
renamed, values retyped, swapped, made huge or replaced by an alias bomb or deep
nesting, the text cut short or sprinkled with junk characters. Each mutant goes through
``parse_spec`` and, if that accepts it, ``n2ngraph.compile`` on a small input; either
may refuse it, but only with a SpecError, and within a time and memory budget (before
issue 18: TypeError, ValueError, RecursionError tracebacks, and minutes and gigabytes
for a 470-byte alias bomb).
"""

from __future__ import annotations

import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import n2ngraph as ng
from n2ngraph.compiler.parse import parse_spec
from helpers import SPECS

SHIPPED = {path.stem: path.read_text() for path in SPECS}
TREES = {name: yaml.safe_load(text) for name, text in SHIPPED.items()}
SECONDS = 10.0  # per example: a mutant of the U-Net compiles in about a second
PYTHON_MIB = 64  # per example, Python objects (tracemalloc): a bomb expanded is gigabytes
PROCESS_MIB = 512  # per example, the process's peak (torch's buffers are not Python's)

BOMB = "[" + ",".join(["&a [x,x,x,x,x,x,x,x,x]"] + [
    f"&{b} [" + ",".join([f"*{a}"] * 9) + "]" for a, b in zip("abcdefg", "bcdefgh")]) + "]"
# Values a careless or hostile user might write anywhere, in three groups drawn equally
# often. The numbers are either small or far past any memory, never in between: a
# mutant that legitimately allocates 5 GB would be slow, not wrong.
ODD_VALUES = st.one_of(
    st.sampled_from(["@BOMB@", "@DEEP@"]),  # replaced in the text: an alias bomb, nested lists
    st.sampled_from([0, 1, 2, 7, -1, -(2**63), 10**12, 10**19, 2**63, 10**30, 1.5,
                     float("nan"), float("inf"), 1e308]),
    st.sampled_from([None, True, "", "\x00", "relu", "conv2d", "noisy", "x" * 5000, "a\x00b",
                     [], [1, 2], ["noisy", "noisy"], {}, {"channels": 3},
                     "same", [3, 3, 3], [1, 2**62], [0, -1]]),  # a conv's sizes: int or [h, w]
)


def _paths(tree, prefix=()):
    """Every (path, value) in a YAML tree; a path is the keys and indexes down to it."""
    yield prefix, tree
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for key, value in items:
        yield from _paths(value, prefix + (key,))


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree, path, value):
    _get(tree, path[:-1])[path[-1]] = value


@st.composite
def tree_mutants(draw):
    """A shipped spec with one to three keys deleted, renamed, retyped or swapped."""
    name = draw(st.sampled_from(sorted(TREES)))
    tree = yaml.safe_load(SHIPPED[name])  # a fresh copy to mutate
    for _ in range(draw(st.integers(1, 3))):
        leaves_only = draw(st.booleans())  # else any key: a whole node, list or section
        paths = [p for p, v in _paths(tree)
                 if p and not (leaves_only and isinstance(v, (dict, list)))]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = _get(tree, path[:-1])
        how = draw(st.sampled_from(["delete", "retype", "swap", "rename"]))
        if how == "delete":
            del parent[path[-1]]
        elif how == "retype":
            _set(tree, path, draw(ODD_VALUES))
        elif how == "swap":
            other = draw(st.sampled_from(paths))
            if other[:len(path)] != path and path[:len(other)] != other:
                a, b = _get(tree, path), _get(tree, other)
                _set(tree, path, b)
                _set(tree, other, a)
        elif isinstance(parent, dict):
            new_key = draw(st.sampled_from([*TREES[name]["nodes"], "in", "op", "name", "x\x00", "kernel",
                                            "conv1.weight", "enc_conv0.bias", "grad:loss", "x#col"]))
            parent[new_key] = parent.pop(path[-1])
    text = yaml.safe_dump(tree, sort_keys=False, default_flow_style=None, width=100)
    depth = draw(st.sampled_from([30, 33, 1000, 50_000]))
    return text.replace("'@BOMB@'", BOMB).replace("'@DEEP@'", "[" * depth + "]" * depth)


@st.composite
def text_mutants(draw):
    """A shipped spec's text cut short, with a line duplicated, with junk characters
    inserted, or as a file with junk bytes inserted (bytes: ``load_spec`` reads them)."""
    text = SHIPPED[draw(st.sampled_from(sorted(SHIPPED)))]
    how = draw(st.sampled_from(["cut", "duplicate", "junk", "bytes"]))
    if how == "bytes":
        data, cut = text.encode(), draw(st.integers(0, len(text)))
        return data[:cut] + draw(st.binary(min_size=1, max_size=8)) + data[cut:]
    if how == "cut":
        return text[:draw(st.integers(0, len(text)))]
    lines = text.splitlines(keepends=True)
    at = draw(st.integers(0, len(lines) - 1))
    if how == "duplicate":
        return "".join(lines[:at + 1] + lines[at:])
    junk = draw(st.text(st.characters(codec=None, exclude_categories=()), min_size=1, max_size=8))
    cut = draw(st.integers(0, len(text)))
    return text[:cut] + junk + text[cut:]


def _load_and_compile(text: str | bytes) -> None:
    """parse_spec (load_spec for bytes), then compile on a small input: SpecError is the
    only way to refuse."""
    try:
        if isinstance(text, bytes):
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "mutant.yaml"
                path.write_bytes(text)
                spec = ng.load_spec(path)
        else:
            spec = parse_spec(text, file="mutant.yaml")
        ng.compile(spec, (1, spec.inputs[0].channels, 16, 16))
    except ng.SpecError as e:
        assert len(str(e)) < 1000, str(e)[:1000]


def _within_budget(text: str | bytes) -> None:
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    tracemalloc.start()
    start = time.perf_counter()
    try:
        _load_and_compile(text)
        python_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - start
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert elapsed < SECONDS, f"{elapsed:.1f} s"
    assert python_peak < PYTHON_MIB * 2**20, f"{python_peak / 2**20:.0f} MiB of Python objects"
    assert grown < PROCESS_MIB * 1024, f"peak memory grew by {grown / 1024:.0f} MiB"


@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.one_of(tree_mutants(), text_mutants()))
def test_mutated_specs_give_only_spec_errors_within_budget(text):
    _within_budget(text)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_the_shipped_specs_pass_the_same_check(name):
    """The harness itself: a good spec loads and compiles within the budget."""
    _within_budget(SHIPPED[name])
