"""Noise levels drawn per pair (``gaussian:0-50``) and mixtures of kinds
(``gaussian:0-50+poisson:5-50``): parsing, the draw, quantisation, determinism."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from n2ngraph.app import data as datasets
from n2ngraph.app.noise import Noise, NoiseMix, NoiseRange, noisy_photo, parse_noise
from n2ngraph.app.pairs import EpochPlan, PhotoPairs

from helpers import ROOT, fails

SPEC = str(ROOT / "specs" / "noise2noise.yaml")


def grey(count: int, value: int = 128, side: int = 32) -> torch.Tensor:
    return torch.full((count, 3, side, side), value, dtype=torch.uint8)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- parsing ---------------------------------------------------------------------------

def test_ranges_and_mixtures_read_as_written():
    assert parse_noise("gaussian:0-50") == NoiseMix([NoiseRange("gaussian", 0, 50)])
    mix = parse_noise(" Gaussian : 0 - 50 + POISSON:5-50 ")
    assert mix == NoiseMix([NoiseRange("gaussian", 0, 50), NoiseRange("poisson", 5, 50)])
    assert str(mix) == "gaussian:0-50+poisson:5-50"
    assert str(parse_noise("gaussian:15+poisson:30")) == "gaussian:15+poisson:30"
    assert str(parse_noise("poisson:1e-3-5")) == "poisson:0.001-5"  # an exponent's minus
    assert str(parse_noise("gaussian:1e+1-2e+1+bernoulli:0.5")) == "gaussian:10-20+bernoulli:0.5"
    assert parse_noise("gaussian:25") == Noise("gaussian", 25)  # one level: as always


@pytest.mark.parametrize("text, needle", [
    ("gaussian:50-0", "runs backwards"), ("gaussian:0-5000", "bad level 5000"),
    ("poisson:0-50", "bad level 0"), ("bernoulli:0.5-1", "bad level 1"),
    ("gaussian:0-50+", "accepted"), ("gaussian:0-50+none", "accepted"),
    ("gaussian:0-50+salt:3", "accepted"), ("gaussian:0--50", "accepted"),
    ("gaussian:-5-5", "accepted"), ("gaussian:0-50-60", "accepted"), ("none:0-5", "accepted"),
])
def test_bad_ranges_say_what_is_wrong_on_one_line(text, needle):
    with pytest.raises(ValueError) as error:
        parse_noise(text)
    message = str(error.value)
    assert needle in message and "accepted: gaussian:SIGMA" in message and "\n" not in message


def test_a_bad_range_on_the_command_line_is_one_line(capsys):
    fails(capsys, [SPEC, "--summary", "--noise", "gaussian:50-0"], "--noise gaussian:50-0",
          "runs backwards")


parts = st.sampled_from([("gaussian", 0, 1000), ("poisson", 1e-3, 1e6), ("bernoulli", 0, 0.999)])


@st.composite
def mixtures(draw):
    chosen = []
    for kind, lo, hi in draw(st.lists(parts, min_size=1, max_size=3)):
        a, b = sorted(draw(st.floats(lo, hi, allow_nan=False)) for _ in range(2))
        chosen.append(NoiseRange(kind, a, b))
    return NoiseMix(chosen)


@settings(max_examples=50, deadline=None)
@given(mixtures())
def test_mixture_strings_round_trip(mix):
    assert parse_noise(str(mix)) == mix


# ---- the draw --------------------------------------------------------------------------

def _sigma(noisy: torch.Tensor, value: int = 128) -> torch.Tensor:
    """Each image's noise sigma, from its pixels' spread about the grey it was."""
    return (noisy.double() - value).flatten(1).square().mean(1).sqrt()


def test_sigma_is_drawn_per_pair_uniformly_and_shared_by_its_two_views():
    a, b = datasets.training_pairs({"grey": grey(1, side=64)[0]}, 600, 32,
                                   parse_noise("gaussian:0-50"), gen())
    sa, sb = _sigma(a), _sigma(b)
    assert (sa - sb).abs().max() < 3  # one sigma for both views (a 32x32x3 estimate: +-2)
    assert not torch.equal(a, b)  # but independent noise
    assert sa.min() < 3 and sa.max() > 47 and sa.max() < 52  # spans [0, 50], stays in it
    assert abs(sa.mean() - 25) < 2.5  # uniform: mean 25, a third of them in each third
    thirds = torch.histc(sa.float(), bins=3, min=0, max=50)
    assert thirds.min() > 160, thirds


def test_a_mixture_draws_a_kind_per_pair_for_both_views():
    """Poisson at peak 5 on grey 128 lands on multiples of 51; gaussian:10 does not."""
    a, b = datasets.training_pairs({"grey": grey(1, side=64)[0]}, 400, 16,
                                   parse_noise("gaussian:10+poisson:5"), gen(3))

    def is_poisson(x):
        return (x.flatten(1) % 51 == 0).all(1)
    assert torch.equal(is_poisson(a), is_poisson(b))
    share = is_poisson(a).double().mean().item()
    assert 0.4 < share < 0.6, share


def test_noise_is_rounded_and_clipped_to_8_bits_as_a_saved_photo_is():
    clean = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8, generator=gen(1))
    mix = parse_noise("gaussian:20-80")
    got = mix.apply(clean, gen(7))
    g = gen(7)
    _, level = mix.draw(50, g)
    values = torch.randn(clean.shape, generator=g) * level.float().view(-1, 1, 1, 1) + clean
    assert torch.equal(got, values.round().clamp(0, 255).to(torch.uint8))
    assert (values > 255).any() and (values < 0).any()  # some were clipped


def test_poisson_ranges_use_each_pairs_peak():
    noisy = parse_noise("poisson:1-100").apply(grey(200, 200), gen(2))
    spread = _sigma(noisy, 200)  # a Poisson count's sd is sqrt(rate): 255*sqrt(v/255/peak)
    expected_low, expected_high = 255 * (200 / 255 / 100) ** 0.5, 255 * (200 / 255) ** 0.5
    assert spread.min() > 0.8 * expected_low and spread.max() < 1.1 * expected_high


def test_pairs_stay_a_function_of_seed_epoch_and_chunk():
    photos = {"grey": grey(1, side=64)[0], "ramp": torch.arange(64 * 64).remainder(256)
              .to(torch.uint8).view(1, 64, 64).expand(3, 64, 64).clone()}
    plan = EpochPlan(64, 8, 16 * 16)
    source = PhotoPairs(photos, plan, 16, parse_noise("gaussian:0-50+poisson:5-50"), seed=4)
    a, b = source.draw(1, 0)
    again = PhotoPairs(photos, plan, 16, parse_noise("gaussian:0-50+poisson:5-50"), seed=4)
    a2, b2 = again.draw(1, 0)
    assert torch.equal(a, a2) and torch.equal(b, b2)
    rows = again.draw(1, 0, range(2, 5))  # a share of each batch is that share of the whole
    assert torch.equal(rows[0], a[:, 2:5]) and torch.equal(rows[1], b[:, 2:5])
    assert not torch.equal(a, source.draw(2, 0)[0])


def test_validation_with_a_range_is_the_same_set_every_time():
    _, val = datasets.embedded_split()
    first = datasets.validation_set(val, 20, 16, "gaussian:0-50", seed=0)
    second = datasets.validation_set(val, 20, 16, parse_noise("gaussian:0-50"), seed=0)
    assert all(torch.equal(x, y) for x, y in zip(first, second))


def test_a_fixed_level_draws_what_it_always_drew():
    """``--eval --noise gaussian:15``: a photo's noise as before noise ranges came in."""
    clean = torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8, generator=gen(5))
    noise = parse_noise("gaussian:15")
    before = torch.randn((1, 3, 20, 24), generator=gen(2 * 7919 + 3)) * 15 + clean
    assert torch.equal(noisy_photo(clean, noise, 2, 3), before.round().clamp(0, 255).byte())
    views = datasets.noisy_views(clean[None].expand(4, -1, -1, -1), noise, gen(1), views=2)
    g = gen(1)
    assert torch.equal(views[0], noise.apply(clean[None].expand(4, -1, -1, -1), g))
    assert torch.equal(views[1], noise.apply(clean[None].expand(4, -1, -1, -1), g))
