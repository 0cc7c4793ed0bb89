"""--eval and --denoise without --weights use the weights shipped for the spec
(``n2ngraph.app.pretrained.weights_path``); a spec with none is one clear line of error.

The shipped file is stood in for by a checkpoint of a tiny U-Net run made here, so the
tests depend neither on the lead's weights nor on their quality."""

from __future__ import annotations

import pytest
import torch

from n2ngraph.app import data as datasets
from n2ngraph.app import pretrained
from n2ngraph.app.cli import main

from helpers import ROOT

UNET = str(ROOT / "specs" / "unet.yaml")
DNCNN = str(ROOT / "specs" / "dncnn.yaml")
TINY = ["--epochs", "1", "--pairs", "16", "--batch", "8", "--crop", "16", "--val-count", "8",
        "--no-progress"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "unet"
    assert main([UNET, "--train", "--run", str(run), *TINY]) == 0
    return run / "best.safetensors"


@pytest.fixture
def shipped(checkpoint, monkeypatch):
    """The checkpoint stands in for the U-Net's shipped weights; other specs have none."""
    monkeypatch.setattr(pretrained, "weights_path",
                        lambda name: checkpoint if name == "unet" else checkpoint.with_name("none"))
    return checkpoint


def _photo(tmp_path):
    photo = datasets.embedded_photos()["chelsea"][:, :29, :43]  # not multiples of 8
    datasets.save_photo(tmp_path / "cat.png", photo)
    return photo


def test_denoise_without_weights_uses_the_shipped_ones(shipped, tmp_path, capsys):
    photo = _photo(tmp_path)
    default, explicit = tmp_path / "default", tmp_path / "explicit"
    assert main([UNET, "--denoise", str(tmp_path / "cat.png"), "--out", str(default)]) == 0
    assert str(shipped) in capsys.readouterr().out  # says which weights it used
    assert main([UNET, "--denoise", str(tmp_path / "cat.png"), "--weights", str(shipped),
                 "--out", str(explicit)]) == 0
    result = datasets.load_photo(default / "cat.png")
    assert result.shape == photo.shape
    assert torch.equal(result, datasets.load_photo(explicit / "cat.png"))


def test_eval_without_weights_uses_the_shipped_ones(shipped, capsys):
    assert main([UNET, "--eval", "--val-count", "8"]) == 0
    default = capsys.readouterr().out.splitlines()[-1]
    assert main([UNET, "--eval", "--val-count", "8", "--weights", str(shipped)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == default
    assert "PSNR" in default


@pytest.mark.parametrize("mode", ["--eval", "--denoise"])
def test_a_spec_without_shipped_weights_asks_for_them(shipped, mode, tmp_path, capsys):
    _photo(tmp_path)
    argv = [DNCNN, "--eval"] if mode == "--eval" else [
        DNCNN, "--denoise", str(tmp_path / "cat.png"), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "'dncnn'" in err and "--weights" in err
    assert not (tmp_path / "out").exists()
