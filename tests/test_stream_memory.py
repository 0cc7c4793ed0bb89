"""Training memory stays flat as the data grows: ten times the pairs, or ten times the
photos in a folder, and the peak resident memory of a training process stays where it
was (issue 19). Before streaming, an epoch's pairs were drawn whole (the seed recipe's
50,000: +427 MiB over 5,000) and a folder was decoded whole.

Each run is a child process (its peak, VmHWM, is its own), two side by side; the
numbers measured are in docs/reliability.md."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import ROOT

SPEC = str(ROOT / "specs" / "noise2noise.yaml")
RUN = ["--crop", "32", "--batch", "4", "--val-count", "8", "--epochs", "1", "--threads", "1",
       "--no-progress"]

CHILD = """
import sys
from pathlib import Path

from n2ngraph.app.cli import main

if sys.argv[1] != "default":
    from n2ngraph.app import folder
    folder.CACHE_BYTES = int(sys.argv[1])
status = main(sys.argv[2:])
peak = next(line for line in Path("/proc/self/status").read_text().splitlines()
            if line.startswith("VmHWM:"))
print(f"peak memory: {int(peak.split()[1]) / 1024:.1f} MiB", file=sys.stderr)
sys.exit(status)
"""
"""A run of the command line (cli.main) that prints its peak as tools/peak_memory does,
with the folder cache (folder.CACHE_BYTES) set to ``argv[1]`` bytes unless "default"."""

CACHE_BYTES = 4 * 2**20
"""The photo cache of the folder runs: smaller than the 200-photo folder (38 MiB decoded),
so the test shows the folder is not held whole; the default is 256 MiB."""

MARGIN_MIB = 10
"""What the larger run's peak may exceed the smaller's by: noise (the two runs differ in
little but the data); holding the data whole costs far more (see the tests)."""

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(),
                                reason="reads VmHWM from /proc")


def _start(cache: str, argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, cache, *argv], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _peaks(*argvs: list[str], cache: str = "default") -> list[float]:
    """The peak MiB of each run, the runs side by side."""
    children = [_start(cache, argv) for argv in argvs]
    peaks = []
    for child in children:
        _, stderr = child.communicate(timeout=300)
        assert child.returncode == 0, stderr
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("peak memory: ") and last.endswith(" MiB"), stderr
        peaks.append(float(last.split()[2]))
    return peaks


def test_the_peak_stays_flat_when_the_pairs_grow_tenfold(tmp_path):
    """5,000 and 50,000 pairs of 32x32 (5 and 49 chunks an epoch), 300 steps each (more
    than a chunk): the pairs held are the chunks in flight either way."""
    small, large = _peaks(*[[SPEC, "--train", "--run", str(tmp_path / f"p{n}"), "--pairs", str(n),
                             "--max-steps", "300", *RUN] for n in (5_000, 50_000)])
    print(f"peak {small:.1f} MiB (5,000 pairs), {large:.1f} MiB (50,000 pairs)")
    assert large - small < MARGIN_MIB, (small, large)


def _photo_folders(tmp_path: Path) -> tuple[Path, Path]:
    """A folder of 200 photos of 256x256 (random pixels, stored uncompressed: quick to
    write), and one of the first 20 of them."""
    large, small = tmp_path / "two-hundred", tmp_path / "twenty"
    large.mkdir()
    small.mkdir()
    rng = np.random.default_rng(0)
    for i in range(200):
        pixels = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(large / f"{i:03d}.png", compress_level=0)
        if i < 20:
            os.link(large / f"{i:03d}.png", small / f"{i:03d}.png")
    return small, large


def test_the_peak_stays_flat_when_the_folder_grows_tenfold(tmp_path):
    """20 and 200 photos of 256x256 (3.8 and 38 MiB decoded): the 200 are read a few at a
    time (16 a chunk, 8 for the validation crops), the cache holding 4 MiB of them."""
    folders = _photo_folders(tmp_path)
    small, large = _peaks(*[[SPEC, "--train", "--run", str(tmp_path / f"run-{folder.name}"),
                             "--data", str(folder), "--pairs", "2000", "--max-steps", "300", *RUN]
                            for folder in folders], cache=str(CACHE_BYTES))
    print(f"peak {small:.1f} MiB (20 photos), {large:.1f} MiB (200 photos)")
    assert large - small < MARGIN_MIB, (small, large)
