"""tools/bench runs end to end (tiny sizes, no timing asserted: speed lives in the
benchmark, not in tests) and its memory child reports what it measured."""

from __future__ import annotations

import bench_lib

from helpers import ROOT


def test_bench_prints_a_row_per_workload(capsys):
    spec = str(ROOT / "specs" / "noise2noise.yaml")
    assert bench_lib.main([spec, "--batches", "2", "--image", "16", "--rounds", "1",
                           "--steps", "1", "--no-compile", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| workload | n2ngraph | eager |")
    assert any(r.startswith("| train bs 2 |") for r in rows)
    assert any(r.startswith("| inference 16x16 |") for r in rows)
    assert "memory at batch 2: peak RSS added by training steps: n2ngraph" in out
    assert "n2ngraph planned" in out
