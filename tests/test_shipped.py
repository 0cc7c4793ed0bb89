"""What ships inside the package: every spec is the repository's, and every weights
file belongs to a shipped spec and loads into it."""

from __future__ import annotations

import pytest

import n2ngraph as ng
from n2ngraph import pretrained
from n2ngraph.checkpoint import check_params_fit

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
