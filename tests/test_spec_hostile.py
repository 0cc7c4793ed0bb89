"""Hostile spec text costs no more than its size and gives only SpecError (issue 18).

Direct tests for the known attacks: a 470-byte YAML alias bomb, 50,000 nested lists,
integers past 64 bits, NUL bytes in names, names of the compiler's own values, explicit
YAML tags Python cannot construct, a quadratic regex, an endless file; and ``excerpt``,
the bounded repr every message quotes user values through. Each test runs on both event
sources (libyaml's and PyYAML's own). Sizes that cannot fit: test_spec_sizes.py; random
mutations of the shipped specs: test_spec_fuzz.py.
"""

from __future__ import annotations

import time
import tracemalloc

import pytest

import n2ngraph as ng
from n2ngraph.compiler import parse
from n2ngraph.errors import EXCERPT_CHARS, excerpt
from helpers import ROOT

LOADERS = [parse._PyYAMLLoader] + ([parse._LibYAMLLoader] if hasattr(parse, "_LibYAMLLoader") else [])
SEED = (ROOT / "specs" / "noise2noise.yaml").read_text()
TINY = """\
name: tiny
inputs: {x: {channels: 3}}
nodes:
  conv: {op: conv2d, in: x, in_channels: 3, out_channels: 4, kernel: 3, padding: 1}
  act: {op: relu, in: conv}
output: act
"""


@pytest.fixture(params=LOADERS, ids=lambda c: c.__name__.strip("_"), autouse=True)
def loader(request, monkeypatch):
    monkeypatch.setattr(parse, "_LineLoader", request.param)
    return request.param


def _refused(text: str, *, seconds: float = 2.0, mib: float = 20) -> ng.SpecError:
    """The SpecError ``text`` gives, checked to come within the time and Python-memory
    budgets (a bomb that is expanded costs minutes and gigabytes)."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ng.SpecError) as info:
            parse.parse_spec(text, file="hostile.yaml")
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < seconds, f"{elapsed:.1f} s: {info.value}"
    assert peak < mib * 2**20, f"{peak / 2**20:.0f} MiB: {info.value}"
    assert len(str(info.value)) < 400, str(info.value)[:400]
    return info.value


def _edit(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


def _bomb(levels: int = 8) -> str:
    """A YAML flow list of ``levels`` anchors, each nine aliases of the one before:
    nine to the power ``levels`` strings when written out."""
    parts, previous = ["&a [lol,lol,lol,lol,lol,lol,lol,lol,lol]"], "a"
    for anchor in "bcdefghijklmnop"[:levels - 1]:
        parts.append(f"&{anchor} [" + ",".join([f"*{previous}"] * 9) + "]")
        previous = anchor
    return "[" + ",".join(parts) + "]"


@pytest.mark.parametrize("where", ["name", "kernel", "in"])
def test_a_470_byte_alias_bomb_is_refused_at_once(where):
    """Before: the bomb was expanded into the message ({value!r}): a minute and 3.3 GB."""
    bomb = _bomb()
    text = {"name": TINY.replace("name: tiny", f"name: {bomb}"),
            "kernel": TINY.replace("kernel: 3", f"kernel: {bomb}"),
            "in": TINY.replace("in: conv}", f"in: {bomb}}}")}[where]
    assert len(text) < 600
    error = _refused(text)
    assert "aliases expand to more than" in str(error) and error.line in (1, 4, 5)


def test_aliases_within_the_budget_still_work():
    text = TINY.replace("kernel: 3, padding: 1}", "<<: &geometry {kernel: 3, padding: 1}}").replace(
        "  act: {op: relu, in: conv}",
        "  act: {op: relu, in: conv}\n  again: {op: conv2d, in: act, in_channels: 4, out_channels: 4, <<: *geometry}")
    spec = parse.parse_spec(text.replace("output: act", "output: again"))
    assert (spec.node("again").op.kernel, spec.node("again").op.padding) == ((3, 3), (1, 1))


@pytest.mark.parametrize("edit,field", [
    ("kernel: [1, 4611686018427387904]", "kernel"),
    ("kernel: 3, padding: 1, groups: 4611686018427387904", "groups"),
    ("kernel: 3, padding: 1, dilation: [1, 4611686018427387904]", "kernel"),
], ids=["kernel", "groups", "dilation"])
def test_sizes_near_64_bits_in_a_pair_are_refused_quickly(edit, field):
    """A huge side of a pair is refused like a huge int: the parameters or the values
    it implies cannot fit, or the kernel cannot fit the input, before any allocation."""
    error = _refused(_edit(TINY, "kernel: 3, padding: 1", edit))
    assert error.line == 4 and error.node == "conv" and error.field == field


def test_a_padding_near_64_bits_in_a_pair_is_refused_before_allocation():
    spec = parse.parse_spec(_edit(TINY, "padding: 1", "padding: [1, 4611686018427387904]"))
    start = time.perf_counter()
    with pytest.raises(ng.SpecError) as info:
        ng.compile(spec, (1, 3, 8, 8))
    assert time.perf_counter() - start < 5 and info.value.node == "conv"


def test_an_alias_inside_its_own_anchor_is_refused():
    assert "used inside the node it names" in str(_refused("name: &a [x, *a]\n"))


@pytest.mark.parametrize("text,line", [
    ("name: " + "[" * 50_000 + "]" * 50_000 + "\n", 1),           # flow lists
    ("name: " + "{a: " * 50_000 + "}" * 50_000 + "\n", 1),         # flow mappings
    ("name:\n" + "".join(" " * i + "-\n" for i in range(1, 2000)), 33),  # block lists
], ids=["flow-lists", "flow-mappings", "block-lists"])
def test_deep_nesting_is_a_spec_error_naming_the_line(text, line):
    """Before: 50,000 nested lists were a RecursionError traceback."""
    error = _refused(text, seconds=5, mib=60)
    assert f"nested deeper than {parse.MAX_DEPTH} levels" in str(error) and error.line == line


@pytest.mark.parametrize("edit,line", [
    (("kernel: 3, padding: 1}\n  act", f"kernel: {10**30}, padding: 1}}\n  act"), 4),
    (("kernel: 3, padding: 1}\n  act", f"kernel: [3, {10**30}], padding: 1}}\n  act"), 4),
    (("output: act\n", f"output: act\ntrain: {{batch: {10**20}}}\n"), 7),
    (("output: act\n", f"output: act\ntrain: {{seed: {2**63}}}\n"), 7),
    (("output: act\n", f"output: act\ntrain: {{crop: {'9' * 5000}}}\n"), 7),
    (("output: act\n", f"output: act\ntrain: {{crop: {'1:' * 5000}1}}\n"), 7),
], ids=["kernel", "kernel-pair", "batch", "seed", "5000-digits", "sexagesimal"])
def test_integers_past_64_bits_are_refused_with_their_line(edit, line):
    """Before: 5,000 digits were a ValueError traceback (Python's int-to-str limit)."""
    error = _refused(_edit(TINY, *edit))
    assert "too large" in str(error) and error.line == line


@pytest.mark.parametrize("edit,node,field", [
    (("name: tiny", 'name: "ti\\0ny"'), None, "name"),
    (("  act: {op", '  "a\\0ct": {op'), "a\\x00ct", None),
    (("inputs: {x:", 'inputs: {"x\\n":'), "x\\n", None),
    (("name: tiny", 'name: ""'), None, "name"),
])
def test_names_with_nul_or_control_characters_are_refused(edit, node, field):
    error = _refused(_edit(TINY, *edit))
    assert "a name must be printable text" in str(error)
    assert "\x00" not in str(error) and "\n" not in str(error)
    if node:
        assert f"node '{node}'" in str(error)
    else:
        assert error.field == field


@pytest.mark.parametrize("name,says", [
    ("conv.weight", "name already used by a parameter of node 'conv' (line 4)"),
    ("conv.bias", "name already used by a parameter of node 'conv' (line 4)"),
    ("conv#col", "'#' and the prefix 'grad:' name the compiler's own values"),
    ("grad:conv", "'#' and the prefix 'grad:' name the compiler's own values"),
])
def test_names_of_the_compilers_own_values_are_refused(name, says):
    """Before: NetworkXUnfeasible, KeyError or a RuntimeError from a kernel, as the node
    and the value it was named after became one."""
    text = _edit(_edit(TINY, "  act: {op: relu", f'  "{name}": {{op: relu'), "output: act", f'output: "{name}"')
    error = _refused(text)
    assert says in str(error) and error.node == name and error.line == 5


@pytest.mark.parametrize("value", ["!!int abc", "!!int ''", "!!float abc", "!!timestamp abc",
                                   "!!bool maybe", "!!map [1]", "[1, !!int x]"])
def test_explicit_tags_python_cannot_construct_are_spec_errors(value):
    """Before: ValueError, AttributeError or IndexError tracebacks from PyYAML."""
    error = _refused(TINY.replace("name: tiny", f"name: {value}"))
    assert str(error).startswith("hostile.yaml:1: invalid YAML"), str(error)


@pytest.mark.parametrize("edit", [("op: relu", "op: [relu]"), ("output: act\n", "output: act\ntrain: {optimizer: {name: [sgd]}}\n"),
                                  ("output: act\n", "output: act\ntrain: {schedule: {name: {a: 1}}}\n")])
def test_lists_where_a_name_is_looked_up_are_spec_errors(edit):
    """Before: TypeError: unhashable type (a list looked up in the table of ops)."""
    assert "unknown" in str(_refused(_edit(TINY, *edit)))


def test_a_long_run_of_digits_is_read_in_linear_time():
    """Before: the exponent-float resolver's regex backtracked quadratically: 17 s for
    40,000 digits and a letter."""
    _refused(TINY.replace("name: tiny", "name: tiny\nx: " + "1" * 100_000 + "x"), seconds=5)


def test_text_that_is_not_unicode_or_far_too_long_is_a_spec_error(tmp_path):
    lone_surrogate = str(_refused("name: \ud800\n"))
    assert "not valid Unicode" in lone_surrogate or "invalid YAML" in lone_surrogate  # libyaml, PyYAML
    assert "longer than" in str(_refused("#" * (parse.MAX_SPEC_CHARS + 1)))
    start = time.perf_counter()
    with pytest.raises(ng.SpecError, match="/dev/zero: spec is longer than"):
        ng.load_spec("/dev/zero")
    assert time.perf_counter() - start < 5


# ---- excerpt: the bounded repr of user values --------------------------------------

def test_excerpt_is_repr_for_small_values_and_bounded_for_any():
    for value in (3, -1.5, True, None, "conv1", [1, 2], {"a": [1, "b"]}, (1, 2)):
        assert excerpt(value) == repr(value)
    bomb = ["lol"] * 9
    for _ in range(9):
        bomb = [bomb] * 9  # 9**10 strings if walked
    cyclic: list = []
    cyclic.append(cyclic)
    mapping = parse._Mapping({f"k{i}": i for i in range(10_000)})
    for value in (bomb, 10**100_000, "x" * 10**6, cyclic, mapping, b"\0" * 10**6):
        start = time.perf_counter()
        text = excerpt(value)
        assert len(text) <= EXCERPT_CHARS and time.perf_counter() - start < 0.1, text
    assert excerpt(10**100_000) == "<an integer of about 100001 digits>"
    assert excerpt("a\0b") == "'a\\x00b'"
