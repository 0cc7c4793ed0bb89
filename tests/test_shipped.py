"""What ships inside the package: every spec is the repository's, and every weights
file belongs to a shipped spec and loads into it."""

from __future__ import annotations

import pytest

import n2ngraph as ng
from n2ngraph.app import pretrained
from n2ngraph.app.checkpoint import check_params_fit

from helpers import ROOT

SHIPPED_SPECS = sorted(pretrained.SPECS.glob("*.yaml"))
SHIPPED_WEIGHTS = sorted(pretrained.WEIGHTS.glob("*.safetensors"))


def test_the_seed_net_and_the_unet_ship_with_weights():
    assert {p.stem for p in SHIPPED_WEIGHTS} >= {"noise2noise", "unet"}


@pytest.mark.parametrize("path", SHIPPED_SPECS, ids=lambda p: p.stem)
def test_a_shipped_spec_is_the_repository_spec(path):
    assert path.read_text() == (ROOT / "specs" / path.name).read_text()


@pytest.mark.parametrize("path", SHIPPED_WEIGHTS, ids=lambda p: p.stem)
def test_shipped_weights_load_into_their_shipped_spec(path):
    spec = ng.load_spec(pretrained.spec_path(path.stem))
    params = pretrained.load_pretrained(path.stem)
    program = ng.Program(spec)
    check_params_fit(path, params, program.state_dict(), spec.name)
    program.load_state_dict(params)


# PSNR gained on held-out crops at sigma 25 when the weights were shipped (README):
# seed net 20.63 -> 27.88 dB, U-Net 20.63 -> 32.14 dB on 1,000 crops. A smaller sample
# here, so the floors leave about a dB of room; wrong or corrupted weights, or a kernel
# that no longer computes what they were trained with, fall far below them.
GAIN_FLOOR_DB = {"noise2noise": 6.0, "unet": 10.0}


@pytest.mark.parametrize("name", sorted(GAIN_FLOOR_DB))
def test_shipped_weights_denoise_the_held_out_photos(name):
    from n2ngraph.app import data as datasets
    from n2ngraph.app.train import evaluate

    spec = ng.load_spec(pretrained.spec_path(name))
    program = ng.Program(spec)
    program.load_state_dict(pretrained.load_pretrained(name))
    _, val = datasets.embedded_split()
    noisy, clean = datasets.validation_set(val, 48, 64, "gaussian:25", seed=0)
    before, after = evaluate(program, noisy, clean)
    assert after - before >= GAIN_FLOOR_DB[name], (before, after)
