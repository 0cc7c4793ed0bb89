"""Every way a spec can be wrong gives a SpecError naming the node, field and line."""

from __future__ import annotations

import textwrap

import pytest

import n2ngraph as ng
from n2ngraph.compiler.parse import parse_spec

GOOD = """\
name: tiny
inputs:
  noisy: {channels: 3}
  target: {channels: 3}
nodes:
  conv1: {op: conv2d, in: noisy, in_channels: 3, out_channels: 8, kernel: 3, padding: 1}
  act1: {op: relu, in: conv1}
  conv2: {op: conv2d, in: act1, in_channels: 8, out_channels: 3, kernel: 3, padding: 1}
  out: {op: sigmoid, in: conv2}
  loss: {op: mse, in: [out, target]}
output: out
loss: loss
"""


def _error(text: str) -> ng.SpecError:
    with pytest.raises(ng.SpecError) as info:
        parse_spec(textwrap.dedent(text), file="net.yaml")
    return info.value


def _edit(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new)


def _check(error: ng.SpecError, *, line: int, node: str | None, field: str | None, says: str):
    message = str(error)
    assert message.startswith(f"net.yaml:{line}: "), message
    if node:
        assert error.node == node and f"node '{node}'" in message, message
    if field:
        assert error.field == field and f"field '{field}'" in message, message
    assert says in message, message


def test_the_good_spec_loads():
    spec = parse_spec(GOOD)
    assert [n.name for n in spec.nodes] == ["conv1", "act1", "conv2", "out", "loss"]
    assert spec.node("conv1").line == 6


def test_unknown_op():
    _check(_error(_edit("op: relu", "op: relux")), line=7, node="act1", field="op",
           says="unknown op 'relux'")


def test_unknown_attribute():
    _check(_error(_edit("kernel: 3, padding: 1}\n  act1", "kernel: 3, pading: 1}\n  act1")),
           line=6, node="conv1", field="pading", says="unknown attribute 'pading'")


def test_missing_attribute():
    _check(_error(_edit("out_channels: 8, ", "")), line=6, node="conv1", field="out_channels",
           says="missing attribute 'out_channels'")


def test_missing_input():
    _check(_error(_edit("{op: relu, in: conv1}", "{op: relu}")), line=7, node="act1",
           field="in", says="missing 'in'")


def test_unknown_input():
    _check(_error(_edit("in: conv1}", "in: conv9}")), line=7, node="act1", field="in",
           says="unknown input 'conv9'")


def test_wrong_number_of_inputs():
    _check(_error(_edit("in: [out, target]", "in: [out]")), line=10, node="loss", field="in",
           says="takes 2 input(s)")


def test_duplicate_name():
    text = _edit("  act1: {op: relu, in: conv1}\n",
                 "  act1: {op: relu, in: conv1}\n  act1: {op: sigmoid, in: conv1}\n")
    _check(_error(text), line=8, node="act1", field=None, says="duplicate key 'act1' (first on line 7)")


def test_name_shared_by_node_and_input():
    text = _edit("  act1: {op: relu, in: conv1}\n", "  noisy: {op: relu, in: conv1}\n")
    _check(_error(text), line=7, node="noisy", field=None, says="already used by an input")


def test_cycle():
    text = _edit("in: noisy, in_channels: 3", "in: act1, in_channels: 8")
    text = text.replace("in_channels: 8, out_channels: 8", "in_channels: 8, out_channels: 8")
    _check(_error(text), line=6, node="conv1", field="in", says="cycle: conv1 -> act1 -> conv1")


@pytest.mark.parametrize("value", ['"3"', "3.0", "true", "[3, 3, 3]", "[3]", "[3, true]", "[3, 2.5]",
                                   "{h: 3, w: 3}", "same"])
def test_wrong_type(value):
    _check(_error(_edit("kernel: 3, padding: 1}\n  act1", f"kernel: {value}, padding: 1}}\n  act1")),
           line=6, node="conv1", field="kernel",
           says="expected an integer or a pair [h, w] of integers, got ")


def test_sizes_as_pairs_padding_same_and_groups_load():
    text = _edit("kernel: 3, padding: 1}\n  act1", "kernel: [3, 1], padding: same, groups: 1}\n  act1")
    text = text.replace("out_channels: 3, kernel: 3, padding: 1}",
                        "out_channels: 3, kernel: [1, 3], stride: [1, 1], padding: [0, 1]}")
    spec = parse_spec(text)
    first, second = spec.node("conv1").op, spec.node("conv2").op
    assert (first.kernel, first.padding, first.pads()) == ((3, 1), "same", (1, 1, 0, 0))
    assert (second.kernel, second.stride, second.padding) == ((1, 3), (1, 1), (0, 1))


@pytest.mark.parametrize(("old", "new", "field", "says"), [
    ("padding: 1}\n  act1", "padding: [1, -1]}\n  act1", "padding", "must be >= 0, got -1"),
    ("padding: 1}\n  act1", "padding: [1, 1, 1, 1]}\n  act1", "padding",
     "expected an integer or a pair [h, w] of integers or 'same' or 'valid', got [1, 1, 1, 1]"),
    ("padding: 1}\n  act1", "padding: full}\n  act1", "padding", "got 'full'"),
    ("padding: 1}\n  act1", "padding: same, stride: 2}\n  act1", "padding",
     "'same' needs stride 1 (as in torch), got stride 2"),
    ("kernel: 3, padding: 1}\n  act1", "kernel: [0, 3], padding: 1}\n  act1", "kernel",
     "must be positive, got 0"),
    ("padding: 1}\n  act1", "padding: 1, groups: 2}\n  act1", "groups",
     "must divide in_channels (3) and out_channels (8), got 2"),
    ("padding: 1}\n  act1", "padding: 1, dilation: [1, 0]}\n  act1", "dilation", "must be positive"),
])
def test_bad_size_pairs_padding_and_groups(old, new, field, says):
    _check(_error(_edit(old, new)), line=6, node="conv1", field=field, says=says)


def test_wrong_bool():
    _check(_error(_edit("padding: 1}\n  act1", "padding: 1, bias: 1}\n  act1")), line=6,
           node="conv1", field="bias", says="expected true or false")


@pytest.mark.parametrize("field,value", [("out_channels", 0), ("kernel", -1)])
def test_non_positive_size(field, value):
    text = GOOD.replace(f"{field}: {'8' if field == 'out_channels' else '3'}, ", f"{field}: {value}, ", 1)
    _check(_error(text), line=6, node="conv1", field=field, says="must be positive")


def test_negative_padding():
    _check(_error(_edit("padding: 1}\n  act1", "padding: -2}\n  act1")), line=6, node="conv1",
           field="padding", says="must be >= 0")


def test_channel_mismatch():
    text = _edit("in: act1, in_channels: 8", "in: act1, in_channels: 4")
    _check(_error(text), line=8, node="conv2", field="in_channels",
           says="input has 8 channels, the node declares 4")


def test_spatial_shape_mismatch():
    text = _edit("out_channels: 3, kernel: 3, padding: 1}", "out_channels: 3, kernel: 3, stride: 2, padding: 1}")
    _check(_error(text), line=10, node="loss", field="in",
           says="prediction has shape (1, 3, 16, 16) but target has shape (1, 3, 32, 32)")


def test_kernel_larger_than_input():
    text = _edit("out_channels: 8, kernel: 3, padding: 1", "out_channels: 8, kernel: 40, padding: 1")
    _check(_error(text), line=6, node="conv1", field="kernel", says="does not fit")


def test_input_channels_must_match_spec():
    spec = parse_spec(GOOD, file="net.yaml")
    with pytest.raises(ng.SpecError, match="node 'noisy'.*expected an \\(N, 3, H, W\\)"):
        ng.compile(spec, (1, 4, 16, 16))


def test_loss_must_be_scalar():
    _check(_error(_edit("loss: loss\n", "loss: out\n")), line=9, node="out", field="loss",
           says="'loss' must name a node with a scalar result")


def test_unknown_output():
    _check(_error(_edit("output: out", "output: nowhere")), line=11, node=None, field="output",
           says="unknown node 'nowhere'")


def test_unknown_top_level_key():
    _check(_error(GOOD + "extra: 1\n"), line=13, node=None, field="extra",
           says="unknown top-level key 'extra'")


def test_unknown_training_setting():
    _check(_error(GOOD + "train: {batch: 4, epoch: 5}\n"), line=13, node=None,
           field="train.epoch", says="unknown training setting 'epoch'")


def test_bad_optimizer_value():
    _check(_error(GOOD + "train:\n  optimizer: {name: sgd, lr: -1}\n"), line=14, node=None,
           field="train.optimizer.lr", says="expected a number >= 0")


def test_object_tags_are_refused():
    text = _edit("name: tiny", "name: !!python/object/apply:os.system ['echo hacked']")
    _check(_error(text), line=1, node=None, field=None, says="invalid YAML")


def test_invalid_yaml_syntax():
    _check(_error(_edit("act1: {op: relu, in: conv1}", "act1: {op: relu, in: conv1")), line=8,
           node=None, field=None, says="invalid YAML")


def test_not_a_mapping():
    _check(_error("- just\n- a list\n"), line=1, node=None, field=None, says="a spec is a mapping")


def test_unreadable_file(tmp_path):
    with pytest.raises(ng.SpecError, match="missing.yaml: cannot read spec"):
        ng.load_spec(tmp_path / "missing.yaml")


def test_binary_file(tmp_path):
    path = tmp_path / "weights.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ng.SpecError, match="weights.yaml: spec is not UTF-8"):
        ng.load_spec(path)
