"""Weights coming in from outside (--weights, --from-weights, a resumed run, the shipped
weights the compat Model loads, Program.load_state_dict) of another dtype than float32
or float64, or holding a nan or an inf, are refused with the file and the tensor named,
instead of being cast silently; float32 and float64 still load into each other."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import n2ngraph as ng
from n2ngraph.app import pretrained
from n2ngraph.app.checkpoint import CheckpointError, load_checkpoint
from n2ngraph.app.cli import main
from n2ngraph.compat import Model

from helpers import ROOT

SPEC = str(ROOT / "specs" / "noise2noise.yaml")
METADATA = {"format": "n2ngraph-checkpoint-1", "spec": "", "state": "{}"}


def _params() -> dict[str, torch.Tensor]:
    return ng.compile(ng.load_spec(SPEC), seed=3).state_dict()


def _bad(kind: str) -> dict[str, torch.Tensor]:
    """The seed net's parameters with conv2.weight made int32, float16, or given a nan."""
    params = {k: v.clone() for k, v in _params().items()}
    if kind == "nan":
        params["conv2.weight"][0, 0, 0, 0] = float("nan")
    elif kind == "inf":
        params["conv2.weight"][1, 0, 0, 0] = float("-inf")
    else:
        params["conv2.weight"] = params["conv2.weight"].mul(100).to(getattr(torch, kind))
    return params


SAYS = {"int32": "'conv2.weight' is int32, not float32 or float64",
        "float16": "'conv2.weight' is float16, not float32 or float64",
        "nan": "'conv2.weight' holds nan or inf values",
        "inf": "'conv2.weight' holds nan or inf values"}


@pytest.mark.parametrize("kind", list(SAYS))
def test_eval_and_fine_tuning_refuse_such_weights(tmp_path, capsys, kind):
    path = tmp_path / "w.safetensors"
    save_file(_bad(kind), path, metadata=METADATA)
    for argv in ([SPEC, "--eval", "--weights", str(path), "--val-count", "4"],
                 [SPEC, "--train", "--from-weights", str(path), "--run", str(tmp_path / "r"),
                  "--epochs", "1", "--pairs", "16", "--crop", "16", "--val-count", "4",
                  "--no-progress"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"error: {path}: {SAYS[kind]}", err
    assert not (tmp_path / "r").exists()


def test_a_resumed_run_refuses_a_nan_in_its_optimizer_state(tmp_path, capsys):
    run = tmp_path / "run"
    spec = tmp_path / "momentum.yaml"
    spec.write_text((ROOT / "specs" / "noise2noise.yaml").read_text().replace(
        "momentum: 0.0", "momentum: 0.9"))
    assert main([str(spec), "--train", "--run", str(run), "--epochs", "1", "--pairs", "16",
                 "--crop", "16", "--val-count", "4", "--max-steps", "2", "--no-progress"]) == 0
    params, buffers, state, text = load_checkpoint(run / "last.safetensors")
    buffers["momentum.conv1.bias"][0] = float("nan")
    save_file({**params, **{f"optimizer.{k}": v for k, v in buffers.items()}},
              run / "last.safetensors",
              metadata=dict(METADATA, spec=text, state=json.dumps(state)))
    assert main(["--resume", str(run), "--no-progress"]) == 2
    assert "'momentum.conv1.bias' holds nan or inf values" in capsys.readouterr().err


@pytest.mark.parametrize("kind", list(SAYS))
def test_load_state_dict_refuses_them_and_changes_nothing(kind):
    program = ng.compile(ng.load_spec(SPEC), seed=0)
    before = {k: v.clone() for k, v in program.state_dict().items()}
    with pytest.raises(ValueError, match=SAYS[kind]):
        program.load_state_dict(_bad(kind))
    assert all(torch.equal(program.params[k], v) for k, v in before.items())  # all or nothing


def test_the_compat_model_refuses_shipped_weights_with_a_nan(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "WEIGHTS", tmp_path)
    save_file(_bad("nan"), tmp_path / "noise2noise.safetensors", metadata=METADATA)
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'noise2noise.safetensors'}: "
                                              f"'conv2.weight' holds nan"):
        Model().load_pretrained_model()


def test_float32_and_float64_still_load_into_each_other():
    spec = ng.load_spec(SPEC)
    wide = ng.compile(spec, seed=5, dtype=torch.float64)
    narrow = ng.compile(spec, seed=0)
    narrow.load_state_dict(wide.state_dict())
    wide.load_state_dict(narrow.state_dict())
    assert narrow.params["conv1.weight"].dtype == torch.float32
    assert torch.equal(wide.params["conv1.weight"], narrow.params["conv1.weight"].double())
