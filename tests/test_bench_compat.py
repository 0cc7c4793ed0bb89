"""tools/bench_compat runs end to end and prints its table (tiny sizes, no speed
asserted: speed lives in the benchmark), and its three contenders train the same
network from the same weights (else the table would compare unlike things)."""

from __future__ import annotations

import pytest
import torch

import bench_compat_lib

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bench_compat_prints_a_row_per_net(capsys):
    assert bench_compat_lib.main(["--pairs", "8", "--rounds", "1", "--threads", "1",
                                  "--nets", "3-4-8-4-3,3-6-6-6-3"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert rows[0] == ("| net | compat | torch.nn | train_step | compat / torch.nn "
                       "| train_step / torch.nn |")
    assert [r.split("|")[1].strip() for r in rows[2:]] == ["3-4-8-4-3", "3-6-6-6-3"]
    for row in rows[2:]:
        cells = [c.strip() for c in row.split("|")[2:-1]]
        assert len(cells) == 5
        assert all(float(c.replace(",", "")) > 0 for c in cells[:3])
        assert all(c.endswith("x") and float(c[:-1]) > 0 for c in cells[3:])


def test_the_contenders_train_alike():
    contenders = bench_compat_lib.Contenders("3-4-8-4-3", 2)
    start = {name: [p.clone() for p in ps] for name, ps in contenders.params().items()}
    assert all(torch.equal(a, b) for theirs in start.values() for a, b in zip(start["compat"], theirs))
    x, t = bench_compat_lib.pairs(4)
    for run in bench_compat_lib.epochs(contenders, (x, t), 2).values():
        run()
    after = contenders.params()
    for name in ("torch.nn", "train_step"):
        for ours, theirs in zip(after["compat"], after[name], strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert not torch.equal(after["compat"][0], start["compat"][0])  # it did train


def test_bench_compat_refuses_a_net_it_cannot_build(capsys):
    with pytest.raises(SystemExit, match="3-a-b-c-3"):
        bench_compat_lib.main(["--nets", "3-4-4-3"])
