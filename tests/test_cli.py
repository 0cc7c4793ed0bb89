"""The main job end to end: train, resume, evaluate, denoise, sweep, and bad input."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from n2ngraph.app import data as datasets
from n2ngraph.app.checkpoint import load_checkpoint
from n2ngraph.runtime.program import Program
from n2ngraph.app.cli import main

from helpers import ROOT, fails

SPEC = str(ROOT / "specs" / "noise2noise.yaml")
QUICK = ["--pairs", "64", "--batch", "4", "--val-count", "16", "--no-progress", "--lr", "0.5"]


def _train(run, *extra) -> int:
    return main([SPEC, "--train", "--run", str(run), "--epochs", "2", *QUICK, *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "full"
    assert _train(run) == 0
    return run


def test_training_writes_a_complete_run_directory(trained):
    for name in ("config.json", "spec.yaml", "metrics.csv", "last.safetensors",
                 "best.safetensors", "history.png", "examples.png"):
        assert (trained / name).is_file(), name
    rows = (trained / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss,val_psnr,input_psnr")
    assert len(rows) == 3
    params, momentum, state, spec_text = load_checkpoint(trained / "last.safetensors")
    assert {"conv1.weight", "conv1.bias", "conv4.weight"} <= set(params)
    assert state["epoch"] == 2 and "conv1:" in spec_text


def test_an_interrupted_run_resumes_bit_identically(trained, tmp_path):
    run = tmp_path / "interrupted"
    assert _train(run, "--max-steps", "11") == 0  # stops mid-epoch 1
    assert not (run / "metrics.csv").exists()
    assert main(["--resume", str(run), "--max-steps", "9", "--no-progress"]) == 0  # into epoch 2
    assert main(["--resume", str(run), "--no-progress"]) == 0
    expected, _, _, _ = load_checkpoint(trained / "last.safetensors")
    resumed, _, state, _ = load_checkpoint(run / "last.safetensors")
    assert state["epoch"] == 2
    for name, value in expected.items():
        assert torch.equal(resumed[name], value), name
    column = [r.split(",")[1] for r in (trained / "metrics.csv").read_text().splitlines()]
    assert column == [r.split(",")[1] for r in (run / "metrics.csv").read_text().splitlines()]


def test_a_resumed_run_keeps_the_arithmetic_it_was_started_with(tmp_path, capsys):
    """A float64 run resumed without --float64 goes on in float64 (config.json records
    it), bit-identically; a flag the run was not trained with is refused."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main([SPEC, "--train", "--run", str(whole), "--epochs", "1", *QUICK, "--float64"]) == 0
    assert main([SPEC, "--train", "--run", str(split), "--epochs", "1", *QUICK, "--float64",
                 "--max-steps", "7"]) == 0
    assert main(["--resume", str(split), "--no-progress"]) == 0
    expected, _, _, _ = load_checkpoint(whole / "last.safetensors")
    resumed, _, _, _ = load_checkpoint(split / "last.safetensors")
    for name, value in expected.items():
        assert value.dtype == torch.float64 and torch.equal(resumed[name], value), name
    capsys.readouterr()
    assert main(["--resume", str(split), "--no-progress", "--tf32"]) == 2
    assert "--tf32" in capsys.readouterr().err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_stops_after_the_step_and_resumes_bit_identically(trained, tmp_path, monkeypatch,
                                                                   capsys, signum):
    steps = []
    original = Program.train_step

    def step_then_signal(self, *inputs):
        loss = original(self, *inputs)
        steps.append(loss)
        if len(steps) == 3:  # arrives in the middle of the loop, as a kill would
            os.kill(os.getpid(), signum)
        return loss

    run = tmp_path / "killed"
    with monkeypatch.context() as patched:
        patched.setattr(Program, "train_step", step_then_signal)
        assert _train(run) == 128 + signum  # 143, 130: a shell's `train && eval` stops
    _, _, state, _ = load_checkpoint(run / "last.safetensors")
    assert (state["epoch"], state["step"]) == (0, 3)
    assert "continue with --resume" in capsys.readouterr().out
    assert main(["--resume", str(run), "--no-progress"]) == 0
    expected, _, _, _ = load_checkpoint(trained / "last.safetensors")
    resumed, _, _, _ = load_checkpoint(run / "last.safetensors")
    assert all(torch.equal(resumed[name], value) for name, value in expected.items())


def test_momentum_state_survives_a_resume(tmp_path):
    args = [SPEC, "--train", "--epochs", "1", *QUICK]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    spec_text = (ROOT / "specs" / "noise2noise.yaml").read_text().replace(
        "momentum: 0.0, dampening: 0.0", "momentum: 0.9, dampening: 0.0")
    spec = tmp_path / "momentum.yaml"
    spec.write_text(spec_text)
    args[0] = str(spec)
    assert main([*args, "--run", str(straight)]) == 0
    assert main([*args, "--run", str(stopped), "--max-steps", "5"]) == 0
    assert main(["--resume", str(stopped), "--no-progress"]) == 0
    a, ma, _, _ = load_checkpoint(straight / "last.safetensors")
    b, mb, _, _ = load_checkpoint(stopped / "last.safetensors")
    assert ma and all(torch.equal(ma[k], mb[k]) for k in ma)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_eval_reports_input_and_output_psnr(trained, capsys):
    assert main([SPEC, "--eval", "--weights", str(trained), "--val-count", "16"]) == 0
    out = capsys.readouterr().out
    assert "PSNR" in out and "(input) ->" in out


def test_eval_on_a_folder_of_photos(trained, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    photos = datasets.embedded_photos()
    datasets.save_photo(folder / "a.png", photos["astronaut"][:, :37, :45])
    datasets.save_photo(folder / "b.png", photos["coffee"][:, :40, :33])
    assert main([SPEC, "--eval", "--weights", str(trained / "best.safetensors"), "--data", str(folder)]) == 0
    assert "on 2 photos" in capsys.readouterr().out


def test_denoise_keeps_odd_sizes(trained, tmp_path):
    photo = datasets.embedded_photos()["chelsea"][:, :51, :77]
    datasets.save_photo(tmp_path / "cat.png", photo)
    out = tmp_path / "out"
    assert main([SPEC, "--denoise", str(tmp_path / "cat.png"), "--weights", str(trained), "--out", str(out)]) == 0
    result = datasets.load_photo(out / "cat.png")
    assert result.shape == photo.shape and result.dtype == torch.uint8
    # an existing output is not overwritten without --overwrite
    before = (out / "cat.png").read_bytes()
    assert main([SPEC, "--denoise", str(tmp_path / "cat.png"), "--weights", str(trained), "--out", str(out)]) == 2
    assert (out / "cat.png").read_bytes() == before


def test_fine_tuning_starts_from_the_given_weights(trained, tmp_path):
    run = tmp_path / "tuned"
    # one step at a vanishing learning rate: the parameters are still the trained ones
    assert _train(run, "--from-weights", str(trained), "--max-steps", "1", "--lr", "1e-12") == 0
    start, _, _, _ = load_checkpoint(trained / "best.safetensors")
    tuned, _, state, _ = load_checkpoint(run / "last.safetensors")
    assert state["step"] == 1
    for name, value in start.items():
        torch.testing.assert_close(tuned[name], value, rtol=0, atol=1e-9)
    fresh = tmp_path / "fresh"
    assert _train(fresh, "--max-steps", "1", "--lr", "1e-12") == 0
    untrained, _, _, _ = load_checkpoint(fresh / "last.safetensors")
    assert not torch.allclose(untrained["conv1.weight"], start["conv1.weight"])
    assert str(trained / "best.safetensors") in (run / "config.json").read_text()


def test_fine_tuning_from_missing_or_foreign_weights_writes_nothing(trained, tmp_path, capsys):
    run = tmp_path / "r"
    fails(capsys, [SPEC, "--train", "--run", str(run), "--from-weights", str(tmp_path / "no.safetensors"),
                    *QUICK], "no.safetensors")
    unet = str(ROOT / "specs" / "unet.yaml")
    fails(capsys, [unet, "--train", "--run", str(run), "--from-weights", str(trained), *QUICK],
           "best.safetensors")
    assert not run.exists()


def test_eval_and_denoise_with_the_self_ensemble(trained, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    datasets.save_photo(folder / "a.png", datasets.embedded_photos()["astronaut"][:, :37, :45])
    assert main([SPEC, "--eval", "--weights", str(trained), "--data", str(folder), "--ensemble"]) == 0
    assert "mean of 8 orientations" in capsys.readouterr().out
    out = tmp_path / "out"
    assert main([SPEC, "--denoise", str(folder / "a.png"), "--weights", str(trained), "--out",
                 str(out), "--ensemble"]) == 0
    assert datasets.load_photo(out / "a.png").shape == (3, 37, 45)


def test_sweep_writes_its_figure(tmp_path):
    run = tmp_path / "sweep"
    assert main([SPEC, "--sweep", "--run", str(run), "--lrs", "0.1,1", "--batches", "4,8",
                 "--epochs", "1", "--pairs", "32", "--val-count", "8", "--no-progress"]) == 0
    assert (run / "sweep.png").is_file()
    assert len((run / "sweep.csv").read_text().splitlines()) == 5


# ---- bad input: one line, exit 2, nothing clobbered ----------------------------------


def test_existing_run_directory_is_refused(trained, capsys):
    before = (trained / "last.safetensors").read_bytes()
    fails(capsys, [SPEC, "--train", "--run", str(trained), *QUICK], str(trained), "already exists")
    assert (trained / "last.safetensors").read_bytes() == before


def test_missing_and_corrupt_spec(tmp_path, capsys):
    fails(capsys, [str(tmp_path / "nope.yaml"), "--train"], "nope.yaml", "cannot read spec")
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes: [\n")
    fails(capsys, [str(bad), "--train", "--run", str(tmp_path / "r")], "bad.yaml", "invalid YAML")
    assert not (tmp_path / "r").exists()


def test_weights_for_another_spec(trained, capsys):
    fails(capsys, [str(ROOT / "specs" / "skipnet.yaml"), "--eval", "--weights", str(trained)],
           "best.safetensors", "another network")


def test_corrupt_and_missing_weights(tmp_path, capsys):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    fails(capsys, [SPEC, "--eval", "--weights", str(junk)], "junk.safetensors")
    fails(capsys, [SPEC, "--eval", "--weights", str(tmp_path / "none.safetensors")], "none.safetensors")


def test_bad_images(trained, tmp_path, capsys):
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    fails(capsys, [SPEC, "--denoise", str(fake), "--weights", str(trained), "--out", str(tmp_path / "o")],
           "fake.png")
    fails(capsys, [SPEC, "--denoise", str(tmp_path / "gone.png"), "--weights", str(trained),
                    "--out", str(tmp_path / "o")], "gone.png")
    assert not (tmp_path / "o").exists()


def test_bad_pkl(tmp_path, capsys):
    wrong = tmp_path / "train_data.pkl"
    torch.save((torch.zeros(4, 1, 32, 32, dtype=torch.uint8),) * 2, wrong)
    fails(capsys, [SPEC, "--train", "--run", str(tmp_path / "r"), "--data", str(wrong), *QUICK],
           "train_data.pkl")
    wrong.write_bytes(b"garbage")
    fails(capsys, [SPEC, "--train", "--run", str(tmp_path / "r"), "--data", str(wrong), *QUICK],
           "train_data.pkl")
    assert not (tmp_path / "r").exists()


def test_bad_options(tmp_path, capsys):
    fails(capsys, [SPEC, "--train", "--noise", "pink:3", "--run", str(tmp_path / "r")], "--noise")
    fails(capsys, [SPEC, "--train", "--epochs", "0", "--run", str(tmp_path / "r")], "--epochs")
    fails(capsys, [SPEC, "--denoise", "x.png", "--weights", "w"], "--out")
    fails(capsys, ["--resume", str(tmp_path)], "config.json")


def test_training_from_exported_course_pkl_files(tmp_path, capsys):
    assert main([SPEC, "--export", str(tmp_path), "--pairs", "40", "--val-count", "8"]) == 0
    a, b = datasets.load_pairs(tmp_path / "train_data.pkl")
    noisy, clean = datasets.load_pairs(tmp_path / "val_data.pkl")
    assert a.shape == b.shape == (40, 3, 32, 32) and noisy.shape == clean.shape == (8, 3, 32, 32)
    assert not torch.equal(a, b)  # two independent noisy views, never the same pixels
    fails(capsys, [SPEC, "--export", str(tmp_path), "--pairs", "40"], "exists")
    run = tmp_path / "run"
    assert main([SPEC, "--train", "--run", str(run), "--epochs", "1", "--data",
                 str(tmp_path / "train_data.pkl"), *QUICK]) == 0
    assert (run / "best.safetensors").is_file()


def test_a_user_error_prints_no_traceback_from_the_shell(tmp_path):
    result = subprocess.run([sys.executable, "-m", "n2ngraph.run", str(tmp_path / "x.yaml"), "--train"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_help_documents_every_mode():
    result = subprocess.run([sys.executable, "-m", "n2ngraph.run", "--help"], capture_output=True,
                            text=True, cwd=ROOT)
    for mode in ("--train", "--resume", "--eval", "--denoise", "--sweep", "examples:"):
        assert mode in result.stdout


def test_profile_times_every_node_forward_and_backward(capsys):
    assert main([SPEC, "--profile", "--batch", "2", "--steps", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    table = out.split("profile: median of 2 steps", 1)[1].splitlines()
    rows = {line.split()[0]: line for line in table[2:] if line.strip()}
    for node in ("conv1", "relu1", "conv2", "up1", "conv3", "up2", "conv4", "denoised", "loss"):
        assert node in rows, node
        assert len(re.findall(r"\d\.\d{3}ms", rows[node])) == 2, rows[node]
    assert "(optimizer)" in rows


def test_threads_must_be_positive(capsys):
    assert main([SPEC, "--summary", "--steps", "0", "--threads", "0"]) == 2
    assert "--threads" in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--epochs", "9"], ["--lr", "0.1"], ["--batch", "8"],
                                    ["--data", "photos"], ["--seed", "3"], ["--run", "elsewhere"],
                                    ["--from-weights", "shipped"]], ids=lambda o: o[0])
def test_a_setting_given_with_resume_is_refused_not_ignored(tmp_path, capsys, option):
    """A resumed run continues as it started: a setting given with it would be dropped
    without a word, so it is refused, naming the option."""
    run = tmp_path / "run"
    assert main([SPEC, "--train", "--run", str(run), "--epochs", "1", "--pairs", "16",
                 "--batch", "4", "--crop", "16", "--val-count", "8", "--max-steps", "1",
                 "--no-progress"]) == 0
    before = (run / "last.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["--resume", str(run), "--no-progress", *option]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {option[0]}: a resumed run keeps the settings") and "\n" not in err
    assert (run / "last.safetensors").read_bytes() == before
