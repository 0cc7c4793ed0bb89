"""Numbers that would make a run diverge on purpose (nan, inf) are refused wherever they
are read: the command line's float options and --sweep --lrs (one line, exit
2), a spec's training settings and op attributes (a SpecError naming line and field), a
run directory's config.json, and the Python API."""

from __future__ import annotations

import json

import pytest

import n2ngraph as ng
from n2ngraph.app.cli import main
from n2ngraph.compiler.parse import parse_spec
from n2ngraph.compiler.spec import OptimizerSpec

from helpers import ROOT, one_line

SPEC = str(ROOT / "specs" / "noise2noise.yaml")
TINY = ["--pairs", "16", "--batch", "4", "--crop", "16", "--val-count", "8", "--no-progress"]


@pytest.mark.parametrize("argv", [["--lr", "nan"], ["--lr", "inf"], ["--lr", "1e999"],
                                  ["--clip-grad-norm", "inf"], ["--clip-grad-norm", "nan"]])
def test_non_finite_options_are_refused(tmp_path, capsys, argv):
    assert main([SPEC, "--train", "--run", str(tmp_path / "r"), "--epochs", "1", *TINY,
                 *argv]) == 2
    err = one_line(capsys)
    assert argv[0] in err and "must be a finite number" in err, err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("lrs", ["0.1,nan", "inf", "0.1,-1"])
def test_sweep_learning_rates_are_checked_before_any_run(tmp_path, capsys, lrs):
    assert main([SPEC, "--sweep", "--lrs", lrs, "--batches", "4", "--run", str(tmp_path / "s"),
                 *TINY]) == 2
    assert "--lrs" in one_line(capsys)
    assert not (tmp_path / "s").exists()


SPEC_TEXT = (ROOT / "specs" / "noise2noise.yaml").read_text()


@pytest.mark.parametrize("old, new, field", [
    ("lr: 1.5", "lr: .inf", "train.optimizer.lr"),
    ("lr: 1.5", "lr: .nan", "train.optimizer.lr"),
    ("lr: 1.5", "lr: 1e999", "train.optimizer.lr"),
    ("momentum: 0.0", "momentum: -.inf", "train.optimizer.momentum"),
    ("init: uniform", "init: uniform\n  clip_grad_norm: .inf", "train.clip_grad_norm"),
    ("init: uniform", "init: uniform\n  schedule: {name: cosine, eta_min: .nan}",
     "train.schedule.eta_min"),
    ("relu1:    {op: relu, in: conv1}",
     "relu1:    {op: leaky_relu, in: conv1, negative_slope: .nan}", "negative_slope"),
])
def test_non_finite_spec_settings_are_refused(old, new, field):
    assert old in SPEC_TEXT
    with pytest.raises(ng.SpecError, match="expected a finite number") as info:
        parse_spec(SPEC_TEXT.replace(old, new), file="net.yaml")
    assert info.value.field == field and info.value.line


def test_a_non_finite_learning_rate_in_a_run_directory_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([SPEC, "--train", "--run", str(run), "--epochs", "1", *TINY,
                 "--max-steps", "1"]) == 0
    record = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(dict(record, lr=float("nan"))))
    assert main(["--resume", str(run), "--no-progress"]) == 2
    err = one_line(capsys)
    assert str(run / "config.json") in err and "lr nan: must be a finite number" in err, err


def test_a_non_finite_learning_rate_from_python_is_refused():
    with pytest.raises(ValueError, match="finite"):
        OptimizerSpec(lr=float("inf"))
    with pytest.raises(ValueError, match="finite"):
        ng.compile(ng.load_spec(SPEC)).optimizer.set_lr(float("nan"))
