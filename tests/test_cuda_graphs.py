"""The training step and inference replayed as CUDA graphs (executor.Replay).

The optimizers' recorded path (``update`` reading 0-dim tensors) is checked on the CPU
against their float path; the graphs themselves need a GPU and are checked there
against the same program launching every kernel from Python.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import n2ngraph as ng
from n2ngraph.runtime.optim import make_optimizer
from n2ngraph.compiler.spec import OptimizerSpec

from helpers import ROOT, relative

OPTIMIZERS = {
    "sgd-momentum-dampening": OptimizerSpec(name="sgd", lr=0.1, momentum=0.9, dampening=0.1),
    "sgd-nesterov-l2": OptimizerSpec(name="sgd", lr=0.05, momentum=0.8, nesterov=True,
                                     weight_decay=1e-2),
    "sgd-plain": OptimizerSpec(name="sgd", lr=0.3),
    "adam": OptimizerSpec(name="adam", lr=1e-2, betas=(0.9, 0.99)),
    "adam-amsgrad-l2": OptimizerSpec(name="adam", lr=3e-3, weight_decay=1e-2, amsgrad=True),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(OPTIMIZERS))
def test_update_from_device_scalars_matches_the_float_update(case, dtype):
    """Twelve steps with a learning rate that changes every step: the tensors the
    graph reads carry each step's values, and the update agrees to rounding."""
    gen = torch.Generator().manual_seed(4)
    shapes = {"w": (6, 5), "b": (6,)}
    params = {k: torch.randn(s, generator=gen, dtype=dtype) for k, s in shapes.items()}
    twins = {k: v.clone() for k, v in params.items()}
    grads = {k: torch.empty_like(v) for k, v in params.items()}
    floats = make_optimizer(params, grads, OPTIMIZERS[case])
    tensors = make_optimizer(twins, grads, OPTIMIZERS[case])
    scalars = tensors.device_scalars()
    assert all(s.dim() == 0 for s in scalars)
    for step in range(12):
        for g in grads.values():
            g.copy_(torch.randn(g.shape, generator=gen, dtype=dtype))
        for optimizer in (floats, tensors):
            optimizer.set_lr(OPTIMIZERS[case].lr * (1 - step / 24))
        floats.step()

        def replay():  # what the recorded graph does: the update, reading the device tensors
            assert [s.item() for s in scalars] == pytest.approx(tensors.scalars(), rel=1e-6)
            tensors.recorded_update()
        tensors.step_replayed(replay)
    tol = 1e-13 if dtype == torch.float64 else 1e-5
    for k in params:
        assert relative(twins[k], params[k]) < tol, k
        assert not torch.equal(params[k], torch.zeros_like(params[k]))


class HostReads(TorchDispatchMode):
    """Records the ops that would stop a CUDA graph's recording: reading a value back
    to the host (``.item()``, ``bool(t)``, data-dependent shapes) or making a tensor
    from Python data (a pageable host-to-device copy on a GPU)."""

    SYNCING = {"_local_scalar_dense", "is_nonzero", "equal", "nonzero", "masked_select",
               "unique_dim", "_unique2", "lift_fresh", "lift_fresh_copy"}

    def __init__(self):
        super().__init__()
        self.found, self.ops = [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        if func.overloadpacket.__name__ in self.SYNCING:
            self.found.append(str(func))
        return func(*args, **(kwargs or {}))


class RunsItsBody:
    """Stands in for executor.Replay on the CPU: runs the body a GPU would record,
    watching it for host reads."""

    def __init__(self, body):
        self.body, self.calls, self.graph, self.watches = body, 0, None, []

    def __call__(self):
        with HostReads() as watch:
            self.body()
        self.watches.append(watch)
        self.calls += 1


def test_the_replayed_step_path_matches_the_launched_one_on_the_cpu(monkeypatch):
    """Everything of the GPU path but the recording itself, on the CPU: a stand-in for
    Replay runs its body. Adam, weight decay, clipping and a learning rate that changes
    every step, through device_scalars; inference through its own body."""
    monkeypatch.setattr(ng.runtime.cuda_graphs, "Replay", RunsItsBody)
    spec = ng.load_spec(ROOT / "specs" / "unet.yaml")
    options = {"dtype": torch.float64, "seed": 3, "clip_grad_norm": 0.05,
               "optimizer": OptimizerSpec(name="adam", lr=2e-3, weight_decay=1e-4)}
    launched, replayed = (ng.compile(spec, (2, 3, 32, 32), **options) for _ in range(2))
    replayed.cuda_graphs = True  # what a CUDA device sets
    gen = torch.Generator().manual_seed(0)
    for step in range(5):
        x, t = (torch.rand(2, 3, 32, 32, generator=gen, dtype=torch.float64) for _ in range(2))
        for prog in (launched, replayed):
            prog.optimizer.set_lr(2e-3 / (1 + step))
        assert replayed.train_step(x, t) == pytest.approx(launched.train_step(x, t), rel=1e-12)
    photo = torch.rand(1, 3, 20, 28, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(replayed.forward(photo), launched.forward(photo), rtol=1e-12, atol=1e-12)
    assert [r.calls for r in replayed._graphs.replays.values()] == [4, 1]  # the first step ran bare
    for name, p in launched.params.items():
        assert relative(replayed.params[name], p) < 1e-12, name


@pytest.mark.parametrize("spec_name,options", [
    ("noise2noise", {}),
    ("unet", {"clip_grad_norm": 0.05,
              "optimizer": OptimizerSpec(name="adam", lr=2e-3, weight_decay=1e-4)}),
], ids=["seed-sgd", "unet-adam-clip"])
def test_the_recorded_bodies_never_read_back_to_the_host(spec_name, options, monkeypatch):
    """What a GPU would record, run here under a dispatch mode: the training body
    (kernels, clipping, update) and the inference body make no host read, which on a
    GPU would make the recording fail. The GPU check runs only where a GPU is lent;
    this one runs everywhere."""
    monkeypatch.setattr(ng.runtime.cuda_graphs, "Replay", RunsItsBody)
    spec = ng.load_spec(ROOT / "specs" / f"{spec_name}.yaml")
    prog = ng.compile(spec, (2, 3, 16, 16), seed=1, **options)
    prog.cuda_graphs = True  # what a CUDA device sets
    x, t = torch.rand(2, 2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for _ in range(3):  # the first step runs bare (SGD's branch); the next two are recorded
        prog.train_step(x, t)
    prog.forward(x[:1])
    bodies = [watch for replay in prog._graphs.replays.values() for watch in replay.watches]
    assert len(bodies) == 3 and all(watch.ops > 20 for watch in bodies)
    assert [watch.found for watch in bodies] == [[], [], []]


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _twins(spec_name: str, shape, **options):
    """Float64: Adam's first steps amplify rounding (an update is about lr times the
    gradient's sign), so float32 twins whose GEMMs round differently drift apart."""
    spec = ng.load_spec(ROOT / "specs" / f"{spec_name}.yaml")
    options = {"device": "cuda", "seed": 5, "dtype": torch.float64, **options}
    graphed = ng.compile(spec, shape, **options)
    launched = ng.compile(spec, shape, cuda_graphs=False, **options)
    assert graphed.cuda_graphs and not launched.cuda_graphs
    return graphed, launched


@cuda
@pytest.mark.parametrize("spec_name,options", [
    ("noise2noise", {}),  # SGD with momentum and dampening: its first step has a branch
    ("unet", {"clip_grad_norm": 0.05,
              "optimizer": OptimizerSpec(name="adam", lr=2e-3, weight_decay=1e-4)}),
], ids=["seed-sgd", "unet-adam-clip"])
def test_replayed_training_steps_match_launched_ones(spec_name, options):
    shape = (4, 3, 32, 32)
    graphed, launched = _twins(spec_name, shape, **options)
    gen = torch.Generator().manual_seed(0)
    for step in range(8):
        x, t = (torch.rand(shape, generator=gen, dtype=torch.float64).cuda() for _ in range(2))
        for prog in (graphed, launched):
            prog.optimizer.set_lr(prog.optimizer.config.lr / (1 + step))
        assert graphed.train_step(x, t) == pytest.approx(launched.train_step(x, t), rel=1e-10), step
    replays = list(graphed._graphs.replays.values())
    assert len(replays) == 1 and replays[0].graph is not None  # recorded, and replayed 5 times
    assert replays[0].calls == 7 and graphed.optimizer.steps == launched.optimizer.steps == 8
    for name, p in launched.params.items():
        assert relative(graphed.params[name], p) < 1e-10, name


@cuda
def test_replayed_inference_equals_launched_for_each_shape():
    graphed, launched = _twins("unet", (1, 3, 24, 40))
    gen = torch.Generator().manual_seed(1)
    for shape in [(1, 3, 24, 40), (2, 3, 16, 16), (1, 3, 24, 40)] * 3:
        x = torch.rand(shape, generator=gen, dtype=torch.float64).cuda()
        assert torch.equal(graphed.forward(x), launched.forward(x))
    assert sorted(r.graph is not None for r in graphed._graphs.replays.values()) == [True, True]
