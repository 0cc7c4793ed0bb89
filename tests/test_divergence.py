"""A run whose loss or gradients go nan or inf stops, naming the step, the epoch and the
first value that went non-finite (found by re-running the steps kept with a check after
every kernel, runtime/divergence.py), exit status 3; no checkpoint ever holds a nan or
an inf, and those written before stay as they were."""

from __future__ import annotations

import re
import textwrap

import pytest
import torch
from safetensors.torch import load_file

import n2ngraph as ng
from n2ngraph.app import train as training
from n2ngraph.app.checkpoint import CheckpointError, save_checkpoint
from n2ngraph.app.cli import main
from n2ngraph.compiler.parse import parse_spec
from n2ngraph.compiler.spec import OptimizerSpec
from n2ngraph.runtime.divergence import Recent, locate

from helpers import ROOT, one_line

SPEC = str(ROOT / "specs" / "noise2noise.yaml")
TINY = ["--pairs", "16", "--batch", "4", "--crop", "16", "--val-count", "8", "--no-progress"]


def _train(run, *extra) -> int:
    return main([SPEC, "--train", "--run", str(run), "--epochs", "2", *TINY, *extra])


def _all_finite(run) -> bool:
    return all(bool(torch.isfinite(t).all()) for path in run.glob("*.safetensors")
               for t in load_file(path).values())


# ---- a diverging run ----------------------------------------------------------------


def test_a_run_that_diverges_stops_naming_step_epoch_and_node(tmp_path, capsys):
    """Diverged in its first epoch: only the starting checkpoint (written before the first
    step) exists, untouched, and it says so."""
    run = tmp_path / "run"
    assert _train(run, "--lr", "1e20") == 3
    err = one_line(capsys)
    assert re.search(r"training diverged: the loss of epoch 1, step \d+ is nan; re-run with "
                     r"checks, at epoch 1, step \d+, node '\w+' \(conv2d, forward, line \d+\) "
                     r"went non-finite first; " + re.escape(str(run / "last.safetensors")) +
                     r" is kept as before", err), err
    assert [p.name for p in run.glob("*.safetensors")] == ["last.safetensors"]
    assert _all_finite(run) and not (run / "metrics.csv").exists()


def test_a_run_good_for_an_epoch_keeps_its_checkpoints_when_it_diverges(tmp_path, capsys,
                                                                         monkeypatch):
    """The learning rate jumps to 1e20 in epoch 2: the checkpoints of epoch 1 stay, to the
    byte, and none is written with a nan."""
    run, written = tmp_path / "run", {}

    def jump(schedule, base, step, per_epoch, total):
        if step == per_epoch:  # the first step of epoch 2: epoch 1's checkpoints are written
            written.update({p.name: p.read_bytes() for p in run.glob("*.safetensors")})
        return base if step < per_epoch else 1e20

    monkeypatch.setattr(training, "learning_rate", jump)
    assert _train(run, "--lr", "0.5") == 3
    err = one_line(capsys)
    assert "the loss of epoch 2, step" in err and "node '" in err, err
    assert f"{run / 'last.safetensors'} and {run / 'best.safetensors'} are kept as before" in err
    assert set(written) == {"last.safetensors", "best.safetensors"}
    for name, content in written.items():
        assert (run / name).read_bytes() == content, name
    assert _all_finite(run)
    assert len((run / "metrics.csv").read_text().splitlines()) == 2  # header, epoch 1


def test_an_inf_a_finite_loss_hides_stops_the_run_before_a_checkpoint_holds_it(tmp_path, capsys,
                                                                         monkeypatch):
    """conv1.bias set to -inf after step 2: relu reads -inf as 0, so every loss stays
    finite; the end of the epoch finds it before validating or saving anything."""
    original, losses = ng.Program.train_step, []

    def step_then_break(self, *inputs):
        losses.append(original(self, *inputs))
        if len(losses) == 2:
            self.params["conv1.bias"][0] = float("-inf")
        return losses[-1]

    monkeypatch.setattr(ng.Program, "train_step", step_then_break)
    run = tmp_path / "run"
    assert _train(run, "--lr", "0.5") == 3
    err = one_line(capsys)
    assert "training diverged: parameter 'conv1.bias' is non-finite after epoch 1, step 4; " \
           "re-run with checks, parameter 'conv1.bias' was already non-finite when epoch 1, " \
           f"step 3 started; {run / 'last.safetensors'} is kept as before" in err, err
    assert len(losses) == 4 and all(abs(loss) < 1 for loss in losses)
    # only the starting checkpoint, written before the first step, finite
    assert [p.name for p in run.glob("*.safetensors")] == ["last.safetensors"]
    assert _all_finite(run) and not (run / "metrics.csv").exists()


def test_a_finished_run_names_only_the_checkpoints_it_wrote(tmp_path, capsys, monkeypatch):
    """No epoch with a finite validation PSNR: no best.safetensors, and the last line
    does not name one."""
    monkeypatch.setattr(training, "evaluate", lambda *a, **k: (20.0, float("nan")))
    run = tmp_path / "run"
    assert _train(run, "--epochs", "1") == 0
    out = capsys.readouterr().out
    assert not (run / "best.safetensors").exists()
    assert "best.safetensors" not in out and str(run / "last.safetensors") in out


def test_a_checkpoint_with_a_nan_is_never_written(tmp_path):
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, {"w": torch.ones(3)}, spec_text="x")
    before = path.read_bytes()
    for params, optimizer in [({"w": torch.tensor([1.0, float("nan")])}, None),
                              ({"w": torch.ones(3)}, {"momentum.w": torch.full((3,), float("inf"))})]:
        with pytest.raises(CheckpointError, match="last.safetensors: not written: '.*w' holds nan"):
            save_checkpoint(path, params, spec_text="x", optimizer=optimizer)
        assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]


def test_a_sweep_goes_on_past_a_learning_rate_that_diverges(tmp_path, capsys):
    sweep = tmp_path / "s"
    assert main([SPEC, "--sweep", "--lrs", "1e20,0.5", "--batches", "4", "--run", str(sweep),
                 "--epochs", "1", *TINY]) == 0
    out = capsys.readouterr().out
    assert "lr 1e+20, batch 4: training diverged" in out and "best: lr 0.5, batch 4" in out
    assert _all_finite(sweep / "lr1e+20-batch4") and _all_finite(sweep / "lr0.5-batch4")


# ---- finding the first non-finite value ---------------------------------------------

TWO = textwrap.dedent("""\
    name: two
    inputs:
      x: {channels: 1}
      t: {channels: 1}
    nodes:
      a: {op: conv2d, in: x, in_channels: 1, out_channels: 1, kernel: 1, bias: false}
      b: {op: conv2d, in: a, in_channels: 1, out_channels: 1, kernel: 1, bias: false}
      loss: {op: mse, in: [b, t]}
    output: b
    loss: loss
    """)
X, T = torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)


def _two(a: float, b: float, lr: float = 0.1) -> ng.Program:
    """b(a(x)) = a b x with x = 1, target 0, float32: a = 3e38 is finite, a b overflows
    when b >= 2, and with b = 2e-38 only the gradient of b.weight (2 a^2 b) does."""
    program = ng.compile(parse_spec(TWO), (1, 1, 4, 4), optimizer=OptimizerSpec(lr=lr))
    program.load_state_dict({"a.weight": torch.full((1, 1, 1, 1), a),
                             "b.weight": torch.full((1, 1, 1, 1), b)})
    return program


def test_the_first_value_to_overflow_is_found_in_the_forward():
    assert _two(3e38, 10.0).first_nonfinite(X, T) == ("b", "node 'b' (conv2d, forward, line 7)")
    assert _two(1.0, 1.0).first_nonfinite(X, T) is None


def test_the_first_value_to_overflow_is_found_in_the_backward():
    program = _two(3e38, 2e-38)
    assert program.loss(X, T) == 36.0  # the forward stays finite
    value, what = program.first_nonfinite(X, T)
    assert value == "grad:b.weight" and "backward of node 'b'" in what


def test_a_parameter_set_to_inf_is_named():
    program = _two(1.0, 1.0)
    program.params["a.weight"].fill_(float("inf"))
    assert program.first_nonfinite(X, T) == ("a.weight", "parameter 'a.weight'")


def _two_steps(program) -> Recent:
    recent = Recent(program.state_dict())
    for step in (1, 2):
        recent.keep(f"step {step}", (X, T))
        loss = program.train_step(X, T)
    assert loss != loss or abs(loss) == float("inf")  # step 2's loss is what is noticed
    return recent


def test_a_gradient_that_overflowed_while_the_loss_stayed_finite_is_found_a_step_back():
    """Step 1's loss is 36 but its gradient of b.weight is inf: its update leaves b.weight
    inf, and step 2's loss is nan. The step to blame is step 1, not step 2."""
    program = _two(3e38, 2e-38)
    finding = locate(program, _two_steps(program))
    assert (finding.label, finding.value) == ("step 1", "grad:b.weight"), finding
    assert finding.message.startswith("at step 1, 'grad:b.weight' (backward of node 'b'")
    # left as step 1 started, not as the diverged update left them
    assert torch.equal(program.params["b.weight"], torch.full((1, 1, 1, 1), 2e-38))


def test_an_update_that_overflowed_is_named():
    program = _two(1.0, 1.0, lr=3e38)
    finding = locate(program, _two_steps(program))
    assert (finding.label, finding.value) == ("step 1", "a.weight"), finding
    assert "its sgd update made parameter 'a.weight' non-finite" in finding.message
