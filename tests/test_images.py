"""Whole photos: geometric self-ensemble and the padding that lets any size through."""

from __future__ import annotations

import pytest
import torch

import n2ngraph as ng
from n2ngraph.app.images import denoise, denoise_float, mirror_pad, self_ensemble
from n2ngraph.app.train import evaluate

from helpers import ROOT


def _orientations(x):
    """The eight flips and quarter turns of x, written out here independently."""
    turns = [x, x.transpose(2, 3).flip(2), x.flip(2).flip(3), x.transpose(2, 3).flip(3)]
    return turns + [t.flip(3) for t in turns]


def _not_equivariant(x):
    """A map that prefers one orientation: a running sum along the rows, weighted by row."""
    rows = torch.arange(1, x.shape[2] + 1, dtype=x.dtype).view(1, 1, -1, 1)
    return x.cumsum(3) * rows


@pytest.mark.parametrize("shape", [(1, 3, 5, 5), (2, 3, 4, 7)], ids=str)
def test_the_ensemble_is_equivariant_even_when_the_map_is_not(shape):
    x = torch.randn(shape, dtype=torch.float64)
    y = self_ensemble(_not_equivariant, x)
    assert y.shape == x.shape
    assert not torch.allclose(y, _not_equivariant(x))
    for transformed_x, transformed_y in zip(_orientations(x), _orientations(y)):
        torch.testing.assert_close(self_ensemble(_not_equivariant, transformed_x), transformed_y)


def test_an_equivariant_map_is_left_unchanged():
    x = torch.randn(2, 3, 6, 4, dtype=torch.float64)
    torch.testing.assert_close(self_ensemble(torch.tanh, x), torch.tanh(x))


def test_the_ensemble_averages_what_the_map_says_in_each_orientation():
    x = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    corner = lambda t: torch.zeros_like(t).index_fill_(2, torch.tensor([0]), 1.0)  # top row = 1
    # the top row, turned back from every orientation, covers each border row and column
    # twice out of eight: edges 1/4 each (corners twice that), the centre never
    expected = torch.tensor([[0.5, 0.25, 0.5], [0.25, 0.0, 0.25], [0.5, 0.25, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(self_ensemble(corner, x)[0, 0], expected)


@pytest.mark.parametrize("chunk", [3, 7, 16])
def test_validation_in_uneven_chunks_runs_one_plan_and_loses_no_crop(chunk):
    model = ng.compile(ng.load_spec(ROOT / "specs" / "noise2noise.yaml"), None, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    noisy = torch.randint(0, 256, (16, 3, 8, 8), generator=gen, dtype=torch.uint8)
    clean = torch.randint(0, 256, (16, 3, 8, 8), generator=gen, dtype=torch.uint8)
    whole = evaluate(model, noisy, clean, dtype=torch.float64, chunk=16)
    before = len(model.compilations)
    assert evaluate(model, noisy, clean, dtype=torch.float64, chunk=chunk) == pytest.approx(whole, rel=1e-12)
    assert len(model.compilations) - before == (0 if chunk == 16 else 1)  # one plan, every chunk


def _seed_net():
    spec = ng.load_spec(ROOT / "specs" / "noise2noise.yaml")
    return spec, ng.compile(spec, None, dtype=torch.float64)


@pytest.mark.parametrize("size", [(70, 130), (150, 40), (96, 96)], ids=str)
def test_a_large_photo_in_tiles_is_the_whole_photo_away_from_its_border(size):
    """The seed net reads about 11 pixels around each output: with 16 pixels of margin a
    tile's pixels are computed from exactly what the whole photo would give them; only
    within the margin of the photo's own border do mirrored surroundings differ from the
    network's zero padding."""
    spec, model = _seed_net()
    x = torch.rand(1, 3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    whole = denoise_float(model, spec, x, tile=None)
    before = len(model.compilations)
    tiled = denoise_float(model, spec, x, tile=32, margin=16)
    assert len(model.compilations) - before == 1  # every window the same size: one plan
    assert tiled.shape == x.shape
    torch.testing.assert_close(tiled[:, :, 16:-16, 16:-16], whole[:, :, 16:-16, 16:-16],
                               rtol=0, atol=1e-12)
    assert (tiled - whole).abs().max() < 0.1


def test_a_photo_within_one_window_is_not_tiled():
    spec, model = _seed_net()
    x = torch.rand(2, 3, 20, 28, dtype=torch.float64)
    torch.testing.assert_close(denoise_float(model, spec, x, tile=8, margin=8),
                               denoise_float(model, spec, x, tile=None), rtol=0, atol=0)


def test_denoise_rounds_the_tiled_result_to_eight_bits():
    spec, model = _seed_net()
    photo = torch.randint(0, 256, (1, 3, 85, 67), dtype=torch.uint8)
    out = denoise(model, spec, photo, dtype=torch.float64, tile=32, margin=16)
    assert out.dtype == torch.uint8 and out.shape == photo.shape
    expected = denoise_float(model, spec, photo.double() / 255, tile=32, margin=16)
    assert torch.equal(out, (expected.clamp(0, 1) * 255).round().to(torch.uint8))


@pytest.mark.parametrize("size", [(1, 1), (2, 5), (7, 3)], ids=str)
def test_mirror_pad_is_torchs_reflect_on_every_side(size):
    from torch_reference import Pad as TorchPad

    x = torch.randn(1, 2, *size, dtype=torch.float64)
    h, w = size
    below = TorchPad(8, "reflect")(x)
    assert torch.equal(mirror_pad(x, *below.shape[2:]), below)
    above = TorchPad(8, "reflect")(x.flip(2, 3)).flip(2, 3)  # mirrored above and left
    assert torch.equal(mirror_pad(x, *above.shape[2:], above.shape[2] - h, above.shape[3] - w), above)
