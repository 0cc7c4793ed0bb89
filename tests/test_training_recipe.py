"""The training recipe beyond plain SGD: Adam, learning-rate schedules, gradient
clipping, augmentation, and runs that use them resuming bit-identically."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import n2ngraph as ng
from n2ngraph.app import data as datasets
from n2ngraph.app.checkpoint import load_checkpoint
from n2ngraph.runtime import flat
from n2ngraph.runtime.optim import Adam, ClipGradNorm, learning_rate, make_optimizer
from n2ngraph.app.cli import main
from n2ngraph.compiler.parse import parse_spec
from n2ngraph.compiler.spec import OptimizerSpec, ScheduleSpec

from helpers import DEVICES, ROOT, assert_params_close, relative, step_both
from torch_reference import TorchNet, torch_optimizer

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
SPEC = ROOT / "specs" / "noise2noise.yaml"

ADAM = {
    "adam": (OptimizerSpec(name="adam", lr=1e-3, betas=(0.9, 0.99)), None),
    "amsgrad-l2": (OptimizerSpec(name="adam", lr=3e-3, weight_decay=1e-2, amsgrad=True), None),
    "clipped": (OptimizerSpec(name="adam", lr=2e-3), 1e-3),
}


# ---- Adam and clipping against torch, whole networks -----------------------------------


def clip(ref, max_norm):
    norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm)
    assert norm > max_norm  # the clipping is exercised, not a no-op


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(ADAM))
@pytest.mark.parametrize("name", ["noise2noise", "skipnet"])
def test_ten_adam_steps_match_torch(name, case, dtype, device):
    """torch.optim.Adam (single-tensor path) and clip_grad_norm_, with the learning rate
    changed every step as a schedule does."""
    spec = ng.load_spec(ROOT / "specs" / f"{name}.yaml")
    config, max_norm = ADAM[case]
    shape = (4, 3, 16, 16)
    prog = ng.compile(spec, shape, dtype=dtype, device=device, seed=3, optimizer=config,
                      clip_grad_norm=max_norm)
    ref = TorchNet(spec).to(device=device, dtype=dtype)
    ref.load_state_dict(prog.state_dict())
    opt = torch_optimizer(ref.parameters(), config)
    gen = torch.Generator().manual_seed(0)
    tol = TOLERANCE[dtype]
    for step in range(10):
        lr = config.lr * (1 - step / 20)
        prog.optimizer.set_lr(lr)
        for group in opt.param_groups:
            group["lr"] = lr
        x = torch.rand(shape, generator=gen, dtype=dtype).to(device)
        t = torch.rand(shape, generator=gen, dtype=dtype).to(device)
        step_both(prog, ref, opt, x, t, tol, step,
                  after_backward=(lambda: clip(ref, max_norm)) if max_norm else None)
    assert_params_close(prog, ref, tol)
    for pname, p in ref.named_parameters():
        for ours, theirs in (("exp_avg", "exp_avg"), ("exp_avg_sq", "exp_avg_sq")):
            assert relative(prog.optimizer.buffers[ours][pname], opt.state[p][theirs]) < tol


OPTIMIZERS = {
    "adam": OptimizerSpec(name="adam", lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1),
    "amsgrad": OptimizerSpec(name="adam", lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1,
                             amsgrad=True),
    "sgd": OptimizerSpec(name="sgd", lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.01),
    "nesterov": OptimizerSpec(name="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    # SGD without weight decay or Nesterov: where apart, one foreach op per step of the rule
    "sgd-lists": OptimizerSpec(name="sgd", lr=0.1, momentum=0.9, dampening=0.2),
    "sgd-plain-lists": OptimizerSpec(name="sgd", lr=0.1),
}


@pytest.mark.parametrize("packed", [False, True], ids=["apart", "packed"])
@pytest.mark.parametrize("config", list(OPTIMIZERS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_optimizers_are_bit_identical_to_torch_on_cpu(dtype, config, packed):
    """Same ops in the same order: not merely close, equal; also where the parameters
    are packed into one flat buffer and each op runs once over all of them (with sizes
    that put vector loops' ends in other places than torch's per-tensor loops)."""
    gen = torch.Generator().manual_seed(1)
    shapes = {"w": (6, 5), "b": (6,), "w2": (24, 24, 3, 3), "b2": (19,)}
    params = {k: torch.randn(s, generator=gen, dtype=dtype) for k, s in shapes.items()}
    if packed:
        params = flat.packed(params)
    grads = flat.packed_like(params)
    assert (flat.flat_view(list(grads.values())) is not None) == packed
    ref = [v.clone() for v in params.values()]
    config_name, config = config, OPTIMIZERS[config]
    ours, theirs = make_optimizer(params, grads, config), torch_optimizer(ref, config)
    assert len(ours.units) == (1 if packed else len(shapes))
    assert (getattr(ours, "_lists", None) is not None) == (not packed and "lists" in config_name)
    for _ in range(15):
        for (k, g), r in zip(grads.items(), ref):
            g.copy_(torch.randn(g.shape, generator=gen, dtype=dtype))
            r.grad = g.clone()
        ours.step()
        theirs.step()
    assert all(torch.equal(params[k], r) for k, r in zip(params, ref))


@pytest.mark.parametrize("packed", [False, True], ids=["apart", "packed"])
@pytest.mark.parametrize("max_norm", [0.3, 1e3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_clipping_is_torchs_clip_grad_norm(dtype, max_norm, packed):
    gen = torch.Generator().manual_seed(2)
    shapes = [(4, 3, 3, 3), (4,), (2, 7)]
    grads = {f"p{i}": torch.randn(s, generator=gen, dtype=dtype) for i, s in enumerate(shapes)}
    if packed:
        grads = flat.packed(grads)
    ref = [torch.zeros(s, dtype=dtype) for s in shapes]
    for r, g in zip(ref, grads.values()):
        r.grad = g.clone()
    before = {k: g.clone() for k, g in grads.items()}
    expected_norm = torch.nn.utils.clip_grad_norm_(ref, max_norm)
    norm = ClipGradNorm(grads, max_norm)()
    assert torch.equal(norm, expected_norm)
    for r, g in zip(ref, grads.values()):
        assert torch.equal(g, r.grad)
    clipped = max_norm < expected_norm
    assert clipped == (not all(torch.equal(before[k], g) for k, g in grads.items()))


@pytest.mark.parametrize("spec_path", [SPEC, ROOT / "specs" / "skipnet.yaml"], ids=["n2n", "skip"])
def test_adam_with_clipping_allocates_nothing_in_steady_state(spec_path):
    spec = ng.load_spec(spec_path)
    shape = (2, 3, 16, 16)
    prog = ng.compile(spec, shape, clip_grad_norm=0.01,
                      optimizer=OptimizerSpec(name="adam", weight_decay=1e-4, amsgrad=True))
    x, t = torch.rand(shape), torch.rand(shape)
    for _ in range(2):
        prog.train_step(x, t)
    prog.optimizer.set_lr(5e-4)  # a schedule changing it costs nothing either
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        prog.train_step(x, t)
    allocations = [(e.name, e.cpu_memory_usage) for e in prof.events() if e.cpu_memory_usage > 0]
    assert allocations == []


def test_adam_refuses_a_checkpoint_without_its_moments():
    params = {"w": torch.zeros(3)}
    adam = Adam(params, {"w": torch.zeros(3)}, OptimizerSpec(name="adam"))
    adam.load_state_dict({"steps": 0, "tensors": {}})  # a fresh start needs nothing
    with pytest.raises(KeyError, match="exp_avg.w"):
        adam.load_state_dict({"steps": 5, "tensors": {"exp_avg_sq.w": torch.ones(3)}})


# ---- learning-rate schedules -------------------------------------------------------


def _torch_lrs(make_scheduler, base: float, steps: int, step_every: int) -> list[float]:
    """The lr torch's scheduler gives each of ``steps`` updates, stepped every
    ``step_every`` updates (an epoch, or 1)."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    scheduler = make_scheduler(opt)
    lrs = []
    for s in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if (s + 1) % step_every == 0:
            scheduler.step()
    return lrs


def test_step_schedule_is_torchs_steplr_stepped_per_epoch():
    schedule, per_epoch, epochs = ScheduleSpec(name="step", step_size=2, gamma=0.3), 5, 7
    expected = _torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, 2, gamma=0.3), 0.7,
                          per_epoch * epochs, per_epoch)
    ours = [learning_rate(schedule, 0.7, s, per_epoch, per_epoch * epochs)
            for s in range(per_epoch * epochs)]
    assert ours == pytest.approx(expected, rel=1e-12)
    assert len(set(ours)) == 4  # 0.7, 0.21, 0.063, 0.0189: it does step


def test_cosine_schedule_is_torchs_cosine_annealing_over_the_run():
    schedule, total = ScheduleSpec(name="cosine", eta_min=0.01), 60
    expected = _torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(
        o, T_max=total, eta_min=0.01), 0.5, total, 1)
    ours = [learning_rate(schedule, 0.5, s, 6, total) for s in range(total)]
    assert ours == pytest.approx(expected, rel=1e-10)
    assert ours[0] == 0.5 and ours[-1] < 0.02


def _nvlabs_rampdown(i, iteration_count, ramp_down_perc, learning_rate):
    """compute_ramped_down_lrate from NVlabs/noise2noise train.py, in plain Python."""
    ramp_down_start_iter = iteration_count * (1 - ramp_down_perc)
    if i >= ramp_down_start_iter:
        t = ((i - ramp_down_start_iter) / ramp_down_perc) / iteration_count
        smooth = (0.5 + math.cos(t * math.pi) / 2) ** 2
        return learning_rate * smooth
    return learning_rate


def test_rampdown_is_the_noise2noise_papers():
    total = 200
    ours = [learning_rate(ScheduleSpec(name="rampdown"), 3e-4, s, 20, total) for s in range(total)]
    assert ours == [_nvlabs_rampdown(s, total, 0.3, 3e-4) for s in range(total)]
    assert ours[139] == 3e-4 and ours[140] == 3e-4 and ours[141] < 3e-4 and ours[-1] < 1e-7
    ramped = ScheduleSpec(name="rampdown", rampdown_fraction=0.5, rampup_fraction=0.1)
    lrs = [learning_rate(ramped, 1.0, s, 20, total) for s in range(total)]
    assert lrs[:20] == pytest.approx([(s + 1) / 20 for s in range(20)])  # linear up to 1
    assert lrs[20:101] == [1.0] * 81
    assert lrs[101:] == [_nvlabs_rampdown(s, total, 0.5, 1.0) for s in range(101, total)]


def test_constant_schedule_keeps_the_rate_exactly():
    assert {learning_rate(ScheduleSpec(), 1.5, s, 10, 100) for s in range(100)} == {1.5}


# ---- the recipe in a spec ----------------------------------------------------------

NET = """\
name: tiny
inputs: {noisy: {channels: 3}, target: {channels: 3}}
nodes:
  conv1: {op: conv2d, in: noisy, in_channels: 3, out_channels: 3, kernel: 3, padding: 1}
  loss: {op: mse, in: [conv1, target]}
output: conv1
loss: loss
train:
"""


def _recipe(text: str):
    return parse_spec(NET + text, file="net.yaml").train


def _recipe_error(text: str) -> ng.SpecError:
    with pytest.raises(ng.SpecError) as info:
        parse_spec(NET + text, file="net.yaml")
    return info.value


def test_recipe_reads_adam_schedule_clipping_and_augment():
    r = _recipe("  optimizer: {name: adam, lr: 1e-3, betas: [0.9, 0.99], eps: 1e-8, weight_decay: 0}\n"
                "  schedule: {name: rampdown, rampdown_fraction: 0.3, rampup_fraction: 0.05}\n"
                "  clip_grad_norm: 1\n  augment: true\n")
    assert r.optimizer == OptimizerSpec(name="adam", lr=1e-3, betas=(0.9, 0.99))
    assert r.schedule == ScheduleSpec(name="rampdown", rampup_fraction=0.05)
    assert r.clip_grad_norm == 1.0 and r.augment is True
    assert _recipe("  optimizer: {name: adam}\n").optimizer.lr == 1e-3  # torch's default
    seed = ng.load_spec(SPEC).train
    assert seed.schedule.name == "constant" and seed.clip_grad_norm is None and not seed.augment


@pytest.mark.parametrize("text, line, field, says", [
    ("  optimizer: {name: adam, momentum: 0.9}\n", 9, "train.optimizer.momentum",
     "unknown adam setting 'momentum'"),
    ("  optimizer: {name: sgd, betas: [0.9, 0.9]}\n", 9, "train.optimizer.betas",
     "unknown sgd setting 'betas'"),
    ("  optimizer:\n    name: adam\n    betas: [0.9, 1.5]\n", 11, "train.optimizer.betas",
     "expected two numbers in [0, 1)"),
    ("  optimizer: {name: adamw}\n", 9, "train.optimizer.name", "unknown optimizer 'adamw'"),
    ("  optimizer: {name: adam, amsgrad: 1}\n", 9, "train.optimizer.amsgrad", "expected true or false"),
    ("  schedule: {name: linear}\n", 9, "train.schedule.name", "unknown schedule 'linear'"),
    ("  schedule: {name: step, eta_min: 0.1}\n", 9, "train.schedule.eta_min",
     "unknown step setting 'eta_min'"),
    ("  schedule: {name: step, step_size: 0}\n", 9, "train.schedule.step_size",
     "expected an integer >= 1"),
    ("  schedule:\n    name: rampdown\n    rampdown_fraction: 2\n", 11,
     "train.schedule.rampdown_fraction", "expected a number in [0, 1]"),
    ("  schedule: cosine\n", 9, "train.schedule", "expected a mapping"),
    ("  clip_grad_norm: 0\n", 9, "train.clip_grad_norm", "expected a number > 0"),
    ("  augment: yes please\n", 9, "train.augment", "expected true or false"),
])
def test_bad_recipe_settings_name_line_and_field(text, line, field, says):
    message = str(_recipe_error(text))
    assert message.startswith(f"net.yaml:{line}:"), message
    assert f"field '{field}'" in message and says in message, message


# ---- augmentation -------------------------------------------------------------------


def _symmetries(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 images of x under rotations and mirrors, by torch's own rot90/flip."""
    turns = [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]
    return turns + [t.flip(-1) for t in turns]


def test_augmentation_turns_both_images_of_a_pair_the_same_way():
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (400, 3, 8, 8), generator=gen, dtype=torch.uint8)
    b = torch.randint(0, 256, (400, 3, 8, 8), generator=gen, dtype=torch.uint8)
    before = a.clone(), b.clone()
    out_a, out_b = datasets.augment_pairs(a, b, torch.Generator().manual_seed(5))
    assert torch.equal(a, before[0]) and torch.equal(b, before[1])  # inputs untouched
    used = set()
    for i in range(len(a)):
        ks = [k for k, s in enumerate(_symmetries(a[i])) if torch.equal(s, out_a[i])]
        assert len(ks) == 1, i  # random pixels: exactly one symmetry matches
        assert torch.equal(_symmetries(b[i])[ks[0]], out_b[i]), i  # the same one for b
        used.add(ks[0])
    assert used == set(range(8))
    again = datasets.augment_pairs(a, b, torch.Generator().manual_seed(5))
    assert torch.equal(again[0], out_a) and torch.equal(again[1], out_b)


def test_augmentation_of_non_square_images_only_flips():
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (64, 3, 4, 6), generator=gen, dtype=torch.uint8)
    out_a, out_b = datasets.augment_pairs(a, a.clone(), gen)
    assert out_a.shape == a.shape and torch.equal(out_a, out_b)
    flips = lambda x: [x, x.flip(-1), x.flip(-2), x.flip(-1, -2)]  # noqa: E731
    assert all(any(torch.equal(f, out_a[i]) for f in flips(a[i])) for i in range(len(a)))


def test_training_pairs_augment_after_drawing_the_same_pairs():
    photos = {"p": torch.randint(0, 256, (3, 40, 50), generator=torch.Generator().manual_seed(0),
                                 dtype=torch.uint8)}
    plain_gen, aug_gen = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    a, b = datasets.training_pairs(photos, 50, 16, "gaussian:25", plain_gen)
    assert all(torch.equal(x, y) for x, y in zip((a, b), datasets.training_pairs(
        photos, 50, 16, "gaussian:25", torch.Generator().manual_seed(9), augment=False)))
    aug_a, aug_b = datasets.training_pairs(photos, 50, 16, "gaussian:25", aug_gen, augment=True)
    expected = datasets.augment_pairs(a, b, plain_gen)  # continues where the pairs left off
    assert torch.equal(aug_a, expected[0]) and torch.equal(aug_b, expected[1])
    assert not torch.equal(aug_a, a)


# ---- runs: resume bit-identically with Adam, a schedule, clipping, augmentation ----------

QUICK = ["--pairs", "32", "--batch", "4", "--val-count", "8", "--no-progress"]


def test_adam_schedule_clipping_augmented_run_resumes_bit_identically(tmp_path):
    text = SPEC.read_text().replace(
        "  optimizer: {name: sgd, lr: 1.5, momentum: 0.0, dampening: 0.0}",
        "  optimizer: {name: adam, lr: 0.01, betas: [0.9, 0.99]}\n"
        "  schedule: {name: rampdown, rampdown_fraction: 0.5, rampup_fraction: 0.1}\n"
        "  clip_grad_norm: 0.05\n  augment: true")
    spec = tmp_path / "adam.yaml"
    spec.write_text(text)
    assert "adam" in text and ng.load_spec(spec).train.augment
    args = [str(spec), "--train", "--epochs", "2", *QUICK, "--pairs", "16"]  # 4 steps an epoch
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert main([*args, "--run", str(straight)]) == 0
    assert main([*args, "--run", str(stopped), "--max-steps", "3"]) == 0  # mid epoch 1
    assert main(["--resume", str(stopped), "--max-steps", "3", "--no-progress"]) == 0  # epoch 2
    assert main(["--resume", str(stopped), "--no-progress"]) == 0
    a, buffers_a, state_a, _ = load_checkpoint(straight / "last.safetensors")
    b, buffers_b, state_b, _ = load_checkpoint(stopped / "last.safetensors")
    assert {"exp_avg.conv1.weight", "exp_avg_sq.conv4.bias"} <= set(buffers_a)
    assert set(buffers_a) == set(buffers_b)
    assert all(torch.equal(buffers_a[k], buffers_b[k]) for k in buffers_a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert state_a["optimizer_steps"] == state_b["optimizer_steps"] == 8
    losses = lambda run: [r.split(",")[1] for r in (run / "metrics.csv").read_text().splitlines()]  # noqa: E731
    assert losses(straight) == losses(stopped)


def test_command_line_picks_another_optimizer_schedule_and_crop(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([str(SPEC), "--train", "--epochs", "1", "--run", str(run), "--optimizer", "adam",
                 "--schedule", "cosine", "--clip-grad-norm", "1", "--augment", "--crop", "48",
                 *QUICK]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["optimizer"] == "adam" and config["lr"] == 1e-3  # Adam's default, not 1.5
    assert config["schedule"] == "cosine" and config["clip_grad_norm"] == 1.0
    assert config["augment"] is True and config["crop"] == 48
    _, buffers, _, _ = load_checkpoint(run / "last.safetensors")
    assert "exp_avg.conv1.weight" in buffers
    assert "adam lr 0.001, cosine schedule" in capsys.readouterr().out
    assert main([str(SPEC), "--train", "--run", str(tmp_path / "bad"), "--clip-grad-norm", "-1",
                 *QUICK]) == 2
    assert "--clip-grad-norm" in capsys.readouterr().err
