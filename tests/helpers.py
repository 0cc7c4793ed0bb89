"""Paths and devices shared by the tests."""

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# the torch.nn oracle lives with the tools (it also trains side by side with n2ngraph)
import sys  # noqa: E402

sys.path.insert(0, str(ROOT / "tools"))


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||: the distance the parity tests hold below a tolerance."""
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def step_both(prog, ref, opt, x, t, tol: float, step, after_backward=None) -> None:
    """One training step of an n2ngraph Program and of its torch.nn twin ``ref`` with
    optimizer ``opt`` on the same batch; asserts the loss and every gradient agree.
    ``after_backward`` runs on the torch side between backward and the update."""
    loss = prog.train_step(x, t)
    opt.zero_grad()
    expected = ref.objective(x, t)
    expected.backward()
    if after_backward is not None:
        after_backward()
    for name, p in ref.named_parameters():
        assert relative(prog.grads[name], p.grad) < tol, (step, name)
    opt.step()
    assert loss == pytest.approx(expected.item(), rel=tol), step


def assert_params_close(prog, ref, tol: float) -> None:
    for name, p in ref.named_parameters():
        assert relative(prog.params[name], p.detach()) < tol, name


def one_line(capsys) -> str:
    """What the command line wrote to stderr since the last read: one line, an error,
    no traceback (the promise every user error keeps)."""
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def fails(capsys, argv, *needles) -> str:
    """Runs the command line on ``argv``: exit status 2 and one line holding every needle."""
    from n2ngraph.app.cli import main

    capsys.readouterr()
    assert main(argv) == 2
    err = one_line(capsys)
    for needle in needles:
        assert needle in err, err
    return err
