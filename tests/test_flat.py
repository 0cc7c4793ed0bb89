"""Parameters, gradients and optimizer state packed into flat buffers (n2ngraph/runtime/flat.py):
what counts as packed, and that a Program's update is a handful of ops however many
parameters the network has."""

from __future__ import annotations

import pytest
import torch

import n2ngraph as ng
from bench_lib import KernelCount
from n2ngraph.app.checkpoint import load_checkpoint, save_checkpoint
from n2ngraph.runtime.flat import flat_view, packed, packed_like
from n2ngraph.compiler.spec import OptimizerSpec

from helpers import ROOT


def test_packed_tensors_are_views_of_one_buffer_in_order():
    tensors = {"a": torch.arange(6.0).view(2, 3), "b": torch.tensor([7.0]), "c": torch.ones(2, 2)}
    views = packed(tensors)
    assert list(views) == ["a", "b", "c"]
    assert all(torch.equal(views[k], t) for k, t in tensors.items())
    whole = flat_view(list(views.values()))
    assert whole is not None and whole.shape == (11,)
    whole[6] = -1.0  # writes through to the view it holds
    assert views["b"].item() == -1.0 and tensors["b"].item() == 7.0
    again = packed_like(views, zero=True)
    assert flat_view(list(again.values())) is not None
    assert all(t.shape == views[k].shape and not t.any() for k, t in again.items())


@pytest.mark.parametrize("case", ["apart", "gap", "reordered", "strided", "other dtype"])
def test_tensors_that_do_not_tile_one_buffer_are_not_flat(case):
    buffer = torch.zeros(20)
    tensors = {
        "apart": [torch.zeros(3), torch.zeros(4)],
        "gap": [buffer[0:3], buffer[4:8]],
        "reordered": [buffer[3:7], buffer[0:3]],
        "strided": [buffer[0:6].view(2, 3).t(), buffer[6:9]],
        "other dtype": [buffer[0:4], buffer.view(torch.int32)[4:8]],
    }[case]
    assert flat_view(tensors) is None
    like = packed_like(dict(enumerate(tensors)))
    assert flat_view(list(like.values())) is None  # one tensor each, as the originals


@pytest.mark.parametrize("spec", ["noise2noise", "unet"])
def test_a_programs_update_is_a_few_ops_for_any_number_of_parameters(spec):
    """Adam over the U-Net's 30 parameter tensors launches as many ops as over one."""
    prog = ng.compile(ng.load_spec(ROOT / "specs" / f"{spec}.yaml"), (2, 3, 16, 16),
                      optimizer=OptimizerSpec(name="adam", weight_decay=1e-4))
    for tensors in (prog.params, prog.grads, *prog.optimizer.buffers.values()):
        assert flat_view(list(tensors.values())) is not None
    assert len(prog.optimizer.units) == 1 and len(prog.params) >= 8
    prog.train_step(torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16))
    with KernelCount() as counter:
        prog.optimizer.step()
    assert counter.count <= 10  # weight decay, 2 moments, sqrt, 2 for the denominator, the step


def test_a_packed_program_saves_and_loads_its_checkpoint(tmp_path):
    """The parameters are views of one buffer: each is written and read back as itself."""
    spec = ng.load_spec(ROOT / "specs" / "noise2noise.yaml")
    prog = ng.compile(spec, (2, 3, 16, 16))
    save_checkpoint(tmp_path / "w.safetensors", prog.state_dict(), spec_text="name: noise2noise",
                    optimizer=prog.optimizer.state_dict()["tensors"])
    params, _, _, _ = load_checkpoint(tmp_path / "w.safetensors")
    assert all(torch.equal(params[k], v) for k, v in prog.params.items())
