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


def coded_photos(sizes=((40, 50), (64, 33), (32, 32))) -> dict[str, torch.Tensor]:
    """Photos whose pixels say where they are: channel 0 the row, 1 the column, 2 the
    photo's number, so any crop can be traced back to its photo and place."""
    photos = {}
    for number, (h, w) in enumerate(sizes):
        rows = torch.arange(h).view(h, 1).expand(h, w)
        cols = torch.arange(w).view(1, w).expand(h, w)
        photos[f"p{number}"] = torch.stack([rows, cols, torch.full((h, w), number)]).to(torch.uint8)
    return photos


def trace(crops: torch.Tensor, photos: dict[str, torch.Tensor]) -> list[tuple[int, int, int]]:
    """(photo number, top, left) of each crop, checking that it is a real window."""
    sizes = [p.shape[1:] for p in photos.values()]
    found = []
    for c in crops.long():
        number, top, left = c[2, 0, 0].item(), c[0, 0, 0].item(), c[1, 0, 0].item()
        size = c.shape[-1]
        assert torch.equal(c[2], torch.full_like(c[2], number))
        assert torch.equal(c[0], (top + torch.arange(size)).view(size, 1).expand(size, size))
        assert torch.equal(c[1], (left + torch.arange(size)).view(1, size).expand(size, size))
        assert top + size <= sizes[number][0] and left + size <= sizes[number][1]
        found.append((number, top, left))
    return found
