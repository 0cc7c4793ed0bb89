"""tools/bench runs end to end (tiny sizes, no timing asserted: speed lives in the
benchmark, not in tests), its memory child reports what it measured, and --ops counts."""

from __future__ import annotations

import bench_lib

from helpers import ROOT
from n2ngraph.codegen import build


def test_bench_prints_a_row_per_workload(capsys):
    spec = str(ROOT / "specs" / "noise2noise.yaml")
    assert bench_lib.main([spec, "--batches", "2", "--image", "16", "--rounds", "1",
                           "--steps", "1", "--no-compile", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    codegen = "n2ngraph no-codegen | " if build.compiler() is not None else ""
    assert rows[0].startswith(f"| workload | n2ngraph | {codegen}eager |")
    assert any(r.startswith("| train bs 2 |") for r in rows)
    assert any(r.startswith("| inference 16x16 |") for r in rows)
    assert "memory at batch 2: peak RSS added by training steps: n2ngraph" in out
    assert "n2ngraph planned" in out


def test_bench_counts_the_ops_of_a_step_and_the_gpu_plan_has_fewer(capsys):
    """--ops counts instead of timing; the plan for a GPU (untiled convs) runs a batch
    of 64x64 crops in fewer ops than the CPU's tensor-op plan of cache-sized tiles, and
    --unfold changes n2ngraph's conv schedule."""
    spec = str(ROOT / "specs" / "unet.yaml")
    counts = {}
    for plan in ("cpu", "cuda"):
        assert bench_lib.main([spec, "--ops", "--batches", "2", "--schedule-of", plan,
                               "--threads", "1", "--no-codegen"]) == 0
        out = capsys.readouterr().out
        assert f"n2ngraph's plan for {plan}" in out
        (row,) = [line for line in out.splitlines() if line.startswith("| train bs 2 |")]
        counts[plan] = [int(cell) for cell in row.split("|")[2:4]]
    assert counts["cuda"][1] == counts["cpu"][1] > 0  # eager's step is eager's step
    assert 0 < counts["cuda"][0] < counts["cpu"][0]
    # --unfold changes n2ngraph's schedule: one im2col GEMM per kernel, not nine per tap
    assert bench_lib.main([spec, "--ops", "--batches", "2", "--schedule-of", "cuda",
                           "--threads", "1", "--unfold", "input"]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if "| train bs 2 |" in line]
    assert 0 < int(row.split("|")[2]) < counts["cuda"][0]


def test_gpu_check_refuses_clearly_without_a_gpu(tmp_path):
    """tools/gpu_check runs the CUDA tests and GPU benchmarks; where no GPU is, it says
    so and exits 2 before running anything."""
    import subprocess

    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the check would run for real")
    done = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check"), str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "no CUDA device" in done.stderr
    assert not any((tmp_path / "out").iterdir())
