"""Denoising big photos keeps memory flat: a photo is decoded, denoised tile by tile and
written before the next is read, and only a tile is ever in floating point, so the
peak grows with a photo's 8-bit pixels alone (in and out), not with copies of it in
float32 (README: "memory stays flat")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from n2ngraph.app import data as datasets
from n2ngraph.app.cli import main

from helpers import ROOT

SPEC = str(ROOT / "specs" / "noise2noise.yaml")

BYTES_PER_PIXEL = 16
"""What the peak may grow by for each pixel a photo gains: its 8-bit pixels in (3
bytes) and out (3), and the image codec's own copies while it decodes or encodes (4);
holding the photo in float32 as well costs 12 bytes a copy, and the old code held
three or four (about 50 bytes a pixel)."""


def _smooth_photo(path: Path, side: int) -> None:
    """A photo-like picture (smooth colours and some grain) that PNG compresses quickly."""
    rows, cols = np.mgrid[0:side, 0:side] / side
    waves = np.stack([np.sin(6 * cols + 3 * rows), np.cos(5 * rows), np.sin(4 * (rows + cols))], 0)
    grain = torch.randn((3, side, side), generator=torch.Generator().manual_seed(side)) * 20
    pixels = (128 + 100 * torch.from_numpy(waves) + grain).round().clamp(0, 255).to(torch.uint8)
    datasets.save_photo(path, pixels)


def _peak_mib(photo: Path, out: Path) -> subprocess.Popen:
    """A child process denoising ``photo`` with the seed net in 128-pixel tiles (one
    thread), its peak resident memory printed by tools/peak_memory."""
    command = [sys.executable, str(ROOT / "tools" / "peak_memory"), "-m", "n2ngraph.run", SPEC,
               "--denoise", str(photo), "--out", str(out), "--tile", "128", "--threads", "1"]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _result_mib(child: subprocess.Popen) -> float:
    stdout, stderr = child.communicate(timeout=300)
    assert child.returncode == 0, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("peak memory: ") and last.endswith(" MiB"), stderr
    return float(last.split()[2])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_the_peak_grows_with_a_photos_8_bit_pixels_alone(tmp_path):
    """512x512 and 1024x1024 (4x the pixels), side by side in two child processes."""
    small, large = tmp_path / "small.png", tmp_path / "large.png"
    _smooth_photo(small, 512)
    _smooth_photo(large, 1024)
    children = [_peak_mib(small, tmp_path / "out-small"), _peak_mib(large, tmp_path / "out-large")]
    small_mib, large_mib = (_result_mib(child) for child in children)
    allowed = BYTES_PER_PIXEL * (1024**2 - 512**2) / 2**20
    print(f"peak {small_mib:.1f} MiB (512x512), {large_mib:.1f} MiB (1024x1024), "
          f"allowed +{allowed:.1f}")
    assert large_mib - small_mib < allowed, (small_mib, large_mib, allowed)
    assert datasets.load_photo(tmp_path / "out-large" / "large.png").shape == (3, 1024, 1024)


def test_photos_are_read_one_at_a_time_after_all_are_checked(tmp_path, monkeypatch, capsys):
    """Each photo is decoded, denoised and written before the next is read; every input
    is first checked to be an image (from its header), so a file that is not one stops
    the run before any output is written."""
    names = ["a", "b", "c"]
    for i, name in enumerate(names):
        photo = torch.full((3, 20 + i, 24), 9 * i, dtype=torch.uint8)
        datasets.save_photo(tmp_path / f"{name}.png", photo)
    events = []
    load, save = datasets.load_photo, datasets.save_photo
    monkeypatch.setattr(datasets, "load_photo",
                        lambda p: events.append(("read", Path(p).stem)) or load(p))
    monkeypatch.setattr(datasets, "save_photo",
                        lambda p, x: events.append(("write", Path(p).stem)) or save(p, x))
    inputs = [str(tmp_path / f"{name}.png") for name in names]
    assert main([SPEC, "--denoise", *inputs, "--out", str(tmp_path / "out")]) == 0
    assert events == [(step, name) for name in names for step in ("read", "write")]
    for i, name in enumerate(names):
        assert datasets.load_photo(tmp_path / "out" / f"{name}.png").shape == (3, 20 + i, 24)

    (tmp_path / "fake.png").write_text("not an image")
    events.clear()
    capsys.readouterr()
    assert main([SPEC, "--denoise", inputs[0], str(tmp_path / "fake.png"), "--out",
                 str(tmp_path / "out2")]) == 2
    assert "fake.png" in capsys.readouterr().err
    assert events == [] and not (tmp_path / "out2").exists()
