"""Training from single noisy photos (Neighbor2Neighbor): the neighbour sub-sampler, the
loss as an MSE step checked against torch autograd of the paper's formula, the pair
source's determinism, and --pairs-from single through the command line."""

from __future__ import annotations

import json

import attrs
import pytest
import torch

from n2ngraph.app import data as datasets
from n2ngraph.app.checkpoint import load_checkpoint
from n2ngraph.app.cli import main
from n2ngraph.app.neighbours import (NEIGHBOURS, NeighbourLoss, NoisyCopies, SinglePhotos,
                                     draw_choices, subsample)
from n2ngraph.app.noise import parse_noise
from n2ngraph.app.pairs import EpochPlan
from n2ngraph.compiler.parse import load_spec
from n2ngraph.compiler.spec import OptimizerSpec
from n2ngraph.runtime.program import compile

from helpers import ROOT, fails
from torch_reference import TorchModel  # tools/, on the path by helpers

SPEC = str(ROOT / "specs" / "noise2noise.yaml")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- the sub-sampler -------------------------------------------------------------------

def test_the_two_sub_images_take_touching_pixels_of_each_2x2_cell():
    n, c, h, w = 5, 3, 12, 16
    where = torch.arange(n * h * w).view(n, 1, h, w).expand(n, c, h, w)
    images = where + 10**6 * torch.arange(c).view(1, c, 1, 1)  # channel in the millions
    choices = torch.randint(8, (n, 6, 8), generator=gen())
    g1, g2 = subsample(images, choices)
    assert g1.shape == g2.shape == (n, c, h // 2, w // 2)
    assert torch.equal(g1 // 10**6, torch.arange(c).view(1, c, 1, 1).expand_as(g1))  # own channel
    first, second = (g % 10**6 for g in (g1, g2))
    assert torch.equal(first[:, 0], first[:, 2]) and torch.equal(second[:, 0], second[:, 1])
    (r1, c1), (r2, c2) = (((g % (h * w)) // w, g % w) for g in (first, second))
    cell_rows, cell_cols = torch.meshgrid(torch.arange(h // 2), torch.arange(w // 2), indexing="ij")
    for r, col in ((r1, c1), (r2, c2)):  # both inside the cell at their place
        assert torch.equal(r // 2, cell_rows.expand_as(r)) and torch.equal(col // 2, cell_cols.expand_as(col))
    assert ((r1 - r2).abs() + (c1 - c2).abs() == 1).all()  # different, side by side or stacked
    assert torch.equal(first // (h * w), torch.arange(n).view(n, 1, 1, 1).expand_as(first))


def test_each_choice_is_one_of_the_eight_pairs_and_all_are_drawn_alike():
    assert sorted({tuple(sorted(p)) for p in NEIGHBOURS}) == [(0, 1), (0, 2), (1, 3), (2, 3)]
    choices = draw_choices(200, 16, gen(1))
    counts = torch.bincount(choices.flatten().long(), minlength=8)
    assert len(counts) == 8 and (counts - 6400).abs().max() < 400, counts
    assert torch.equal(choices, draw_choices(200, 16, gen(1)))


def test_odd_sides_are_refused():
    with pytest.raises(ValueError, match="even sides"):
        subsample(torch.zeros(1, 3, 5, 6), torch.zeros(1, 2, 3, dtype=torch.uint8))


# ---- the loss --------------------------------------------------------------------------

def test_the_moved_target_is_the_papers_loss_against_torch_autograd():
    """L = |a - b|^2 + gamma |a - b - c|^2 (means): its value and its gradient in a are
    (1 + gamma) times the MSE against b + gamma c / (1 + gamma), plus a constant."""
    g = gen(2)
    a = torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    b, c = (torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(2))
    for gamma in (0.0, 1.0, 2.0, 7.5):
        paper = (a - b).square().mean() + gamma * (a - b - c).square().mean()
        (expected,) = torch.autograd.grad(paper, a)
        target = b + gamma / (1 + gamma) * c
        mse = (a - target).square().mean()
        (ours,) = torch.autograd.grad(mse, a)
        loss = NeighbourLoss(gamma)
        offset = gamma / (1 + gamma) * c.square().mean().item()
        assert loss.total(mse.item(), offset) == pytest.approx(paper.item(), rel=1e-12)
        assert torch.allclose(loss.lr_scale("sgd") * ours, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_step_is_the_step_of_the_papers_loss_in_torch(optimizer):
    """One n2ngraph step (inference pass, moved target, scaled rate) leaves the parameters
    where torch.optim leaves a torch.nn twin after backward of the paper's formula, with
    f(y) under no_grad: exactly for SGD (momentum too); for Adam, whose rate is left
    alone, the twin's eps is (1 + gamma) times ours, the one effect of the loss scale."""
    spec = load_spec(SPEC)
    config = OptimizerSpec(name=optimizer, lr=0.05 if optimizer == "sgd" else 1e-3,
                           momentum=0.9 if optimizer == "sgd" else 0.0)
    loss = NeighbourLoss()
    prog = compile(spec, (4, 3, 8, 8), dtype=torch.float64, seed=3, optimizer=config)
    twin = attrs.evolve(config, eps=config.eps * (1 + loss.gamma))
    ref = TorchModel(spec, optimizer=twin if optimizer == "adam" else config, seed=3,
                     dtype=torch.float64, init_from=prog.state_dict())
    for step in range(3):
        noisy = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=gen(step))
        choices = draw_choices(4, 8, gen(10 + step))
        x, target, offset = loss.batch(prog, noisy, choices, "cpu", torch.float64)
        prog.optimizer.set_lr(config.lr * loss.lr_scale(optimizer))
        ours = loss.total(prog.train_step(x, target), offset)

        y = noisy.double() / 255
        with torch.no_grad():
            f1, f2 = subsample(ref.net(y), choices)
        g1, g2 = subsample(y, choices)
        ref.optimizer.torch.zero_grad()
        out = ref.net(g1)
        paper = (out - g2).square().mean() + loss.gamma * (out - g2 - (f1 - f2)).square().mean()
        paper.backward()
        ref.optimizer.step()
        assert ours == pytest.approx(paper.item(), rel=1e-10)
        for name, p in ref.net.named_parameters():
            assert torch.allclose(prog.params[name], p.detach(), rtol=1e-9, atol=1e-12), (step, name)


# ---- the pair source -------------------------------------------------------------------

def _photos():
    g = gen(4)
    return {f"p{i}": torch.randint(0, 256, (3, 40 + i, 36), dtype=torch.uint8, generator=g)
            for i in range(3)}


def test_noisy_copies_are_fixed_and_do_not_depend_on_the_order_of_lookups():
    photos = _photos()
    copies = NoisyCopies(photos, parse_noise("gaussian:0-50"), seed=1, cache_bytes=0)
    first = {name: copies[name] for name in ("p2", "p0", "p1")}
    again = NoisyCopies(photos, parse_noise("gaussian:0-50"), seed=1)
    for name in ("p0", "p1", "p2", "p0"):
        assert torch.equal(again[name], first[name])
        assert not torch.equal(again[name], photos[name])
    assert again.shape_of("p1") == (3, 41, 36)
    other = NoisyCopies(photos, parse_noise("gaussian:0-50"), seed=2)
    assert not torch.equal(other["p0"], first["p0"])


def test_single_photo_batches_are_a_function_of_seed_epoch_and_chunk():
    photos = _photos()
    plan = EpochPlan(48, 6, 16 * 16)
    source = SinglePhotos(photos, plan, 16, seed=5, augment=True)
    noisy, choices = source.draw(2, 0)
    assert noisy.shape == (len(plan.chunk_steps(0)), 6, 3, 16, 16)
    assert choices.shape == noisy.shape[:2] + (8, 8) and choices.max() < 8
    same = SinglePhotos(photos, plan, 16, seed=5, augment=True).draw(2, 0)
    assert torch.equal(same[0], noisy) and torch.equal(same[1], choices)
    part = SinglePhotos(photos, plan, 16, seed=5, augment=True).draw(2, 0, range(1, 3))
    assert torch.equal(part[0], noisy[:, 1:3]) and torch.equal(part[1], choices[:, 1:3])
    assert not torch.equal(source.draw(3, 0)[1], choices)
    with pytest.raises(ValueError, match="even crop"):
        SinglePhotos(photos, plan, 15, seed=5)


# ---- the command line ------------------------------------------------------------------

QUICK = ["--pairs", "32", "--batch", "4", "--crop", "16", "--val-count", "8", "--no-progress",
         "--lr", "0.3", "--threads", "1"]


def test_training_from_single_photos_writes_a_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([SPEC, "--train", "--pairs-from", "single", "--epochs", "2", "--run", str(run),
                 "--noise", "gaussian:0-50", *QUICK]) == 0
    out = capsys.readouterr().out
    assert "Neighbor2Neighbor" in out and "one noisy copy (gaussian:0-50)" in out
    params, _, state, _ = load_checkpoint(run / "best.safetensors")
    assert "conv1.weight" in params
    assert json.loads((run / "config.json").read_text())["pairs_from"] == "single"
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and all(float(r.split(",")[1]) > 0 for r in rows[1:])


def test_a_stopped_single_photo_run_resumes_bit_identically(tmp_path):
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    args = [SPEC, "--train", "--pairs-from", "single", "--epochs", "2", *QUICK]
    assert main([*args, "--run", str(whole)]) == 0
    assert main([*args, "--run", str(stopped), "--max-steps", "5"]) == 0
    assert main(["--resume", str(stopped), "--no-progress"]) == 0
    expected, _, _, _ = load_checkpoint(whole / "last.safetensors")
    resumed, _, _, _ = load_checkpoint(stopped / "last.safetensors")
    assert all(torch.equal(resumed[k], v) for k, v in expected.items())


def test_a_users_own_noisy_photos_train_and_validate_against_a_second_view(tmp_path, capsys):
    folder = tmp_path / "noisy"
    folder.mkdir()
    for name, photo in _photos().items():
        datasets.save_photo(folder / f"{name}.png", photo)
    run = tmp_path / "run"
    assert main([SPEC, "--train", "--pairs-from", "single", "--noise", "none", "--data",
                 str(folder), "--epochs", "1", "--run", str(run), *QUICK]) == 0
    out = capsys.readouterr().out
    assert "the photos as they are" in out and "against a second noisy view" in out
    assert (run / "last.safetensors").is_file()


def test_single_photo_mistakes_are_one_line(tmp_path, capsys):
    fails(capsys, [SPEC, "--train", "--pairs-from", "single", "--crop", "33", "--run",
                   str(tmp_path / "r")], "--pairs-from single", "even", "33")
    pkl = tmp_path / "train_data.pkl"
    datasets.save_pairs(pkl, *(torch.zeros(4, 3, 8, 8, dtype=torch.uint8) for _ in range(2)))
    fails(capsys, [SPEC, "--train", "--pairs-from", "single", "--data", str(pkl), "--run",
                   str(tmp_path / "r")], "--pairs-from single", "train_data.pkl")
    fails(capsys, [SPEC, "--export", str(tmp_path / "x"), "--pairs-from", "single"], "--export")
    fails(capsys, ["--resume", str(tmp_path / "r"), "--pairs-from", "single"], "--pairs-from")
    assert not (tmp_path / "r").exists() and not (tmp_path / "x").exists()


def test_a_run_directory_with_a_bad_pairs_from_is_one_line(tmp_path, capsys):
    from n2ngraph.app.config import TrainConfig

    run = tmp_path / "run"
    run.mkdir()
    (run / "spec.yaml").write_text((ROOT / "specs" / "noise2noise.yaml").read_text())
    for value, needle in (("triple", "must be one of pairs, single"), ("single", "even")):
        record = {**TrainConfig.from_spec(load_spec(SPEC)).record(), "pairs_from": value,
                  "crop": 31}
        (run / "config.json").write_text(json.dumps(record))
        fails(capsys, ["--resume", str(run)], "config.json", "pairs_from", needle)
