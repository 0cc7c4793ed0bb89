"""The seed's module API (n2ngraph.compat) against torch, and the compiler feature under it
(Program.vjp: a backward seeded by a given output gradient)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import n2ngraph as ng
from helpers import ROOT
from n2ngraph import compat
from n2ngraph.app import pretrained
from n2ngraph.app.checkpoint import CheckpointError, save_checkpoint
from n2ngraph.compat import (MSE, SGD, Conv2d, Model, NearestUpsampling, ReLU, Sequential,
                             Sigmoid, TransposeConv2d, Upsampling)
from torch_reference import TorchNet

F64 = dict(rtol=1e-10, atol=1e-12)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny GEMMs (conftest.py says why)


def _double(module):
    """The module's parameters replaced by float64 copies (the seed API has no .double())."""
    for role in ("weight", "bias"):
        if getattr(module, role, None) is not None:
            setattr(module, role, getattr(module, role).double())
    return module


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_(True) for t in tensors]


# ---- each module against torch: forward, input gradient, parameter gradients ----------------

CONVS = [
    (lambda: Conv2d(3, 4, 3), lambda x, w, b: F.conv2d(x, w, b)),
    (lambda: Conv2d(2, 3, (3, 3), stride=2, padding=1, dilation=1),
     lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1)),
    (lambda: Conv2d(3, 2, 2, stride=1, padding=2, dilation=2, bias=False),
     lambda x, w, b: F.conv2d(x, w, None, padding=2, dilation=2)),
    (lambda: TransposeConv2d(3, 2, 3, stride=2, padding=1, output_padding=1),
     lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1)),
    (lambda: TransposeConv2d(2, 3, 2, stride=2, bias=False),
     lambda x, w, b: F.conv_transpose2d(x, w, None, stride=2)),
    (lambda: Upsampling(3, 2, 3, padding=1),
     lambda x, w, b: F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w, b, padding=1)),
    (lambda: Upsampling(2, 2, 3, stride=2, scale_factor=3),
     lambda x, w, b: F.conv2d(F.interpolate(x, scale_factor=3, mode="nearest"), w, b, stride=2)),
]


@pytest.mark.parametrize(("make", "oracle"), CONVS, ids=lambda v: "")
def test_parametrised_module_matches_torch(make, oracle):
    module = _double(make())
    gen = torch.Generator().manual_seed(0)
    channels = module.weight.shape[0 if isinstance(module, TransposeConv2d) else 1]
    x = torch.randn(2, channels, 6, 5, dtype=torch.float64, generator=gen)
    y = module.forward(x)
    x_, w_ = _leaves(x, module.weight)
    b_ = _leaves(module.bias)[0] if module.bias is not None else None
    expected = oracle(x_, w_, b_)
    torch.testing.assert_close(y, expected, **F64)
    g = torch.randn(expected.shape, dtype=torch.float64, generator=gen)
    grad_x = module.backward(g)
    expected.backward(g)
    torch.testing.assert_close(grad_x, x_.grad, **F64)
    pairs = module.param()
    owned = [t for t in (module.weight, module.bias) if t is not None]
    assert len(pairs) == len(owned) and all(p is t for (p, _), t in zip(pairs, owned))
    torch.testing.assert_close(pairs[0][1], w_.grad, **F64)
    if b_ is not None:
        torch.testing.assert_close(pairs[1][1], b_.grad, **F64)


@pytest.mark.parametrize(("module", "oracle"), [
    (ReLU(), torch.relu),
    (Sigmoid(), torch.sigmoid),
    (NearestUpsampling(2), lambda x: F.interpolate(x, scale_factor=2, mode="nearest")),
    (NearestUpsampling((3, 3)), lambda x: F.interpolate(x, scale_factor=3, mode="nearest")),
], ids=["relu", "sigmoid", "nearest2", "nearest3"])
def test_parameterless_module_matches_torch(module, oracle):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=gen)
    (x_,) = _leaves(x)
    expected = oracle(x_)
    torch.testing.assert_close(module.forward(x), expected, **F64)
    assert module.forward(x).dtype == torch.float64 and module.param() == []
    g = torch.randn(expected.shape, dtype=torch.float64, generator=gen)
    expected.backward(g)
    torch.testing.assert_close(module.backward(g), x_.grad, **F64)


def test_mse_matches_torch():
    gen = torch.Generator().manual_seed(2)
    prediction, target = torch.rand(2, 2, 3, 4, 5, dtype=torch.float64, generator=gen)
    criterion = MSE()
    p_, t_ = _leaves(prediction, target)
    expected = F.mse_loss(p_, t_)
    loss = criterion.forward(prediction, target)
    assert loss.shape == () and loss.dtype == torch.float64
    torch.testing.assert_close(loss, expected.detach(), **F64)
    expected.backward()
    torch.testing.assert_close(criterion.backward(), p_.grad, **F64)
    torch.testing.assert_close(criterion.backward(torch.tensor(3.0)), 3 * p_.grad, **F64)


def test_parameter_gradients_accumulate_until_zero_grad():
    conv = _double(Conv2d(2, 2, 3, padding=1))
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    g = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    conv.forward(x)
    conv.backward(g)
    once = conv.grad_weight.clone()
    conv.backward(g)
    torch.testing.assert_close(conv.grad_weight, 2 * once, **F64)
    conv.zero_grad()
    assert not conv.grad_weight.any() and not conv.grad_bias.any()


def test_the_program_reads_the_module_tensors():
    """An in-place edit is seen without recompiling; a tensor assigned in place of the
    weight is seen too (the program is rebuilt around it)."""
    conv = Conv2d(2, 3, 3)
    x = torch.randn(1, 2, 5, 5)
    conv.forward(x)
    program = conv._build.program
    with torch.no_grad():
        conv.weight.mul_(-2)
    torch.testing.assert_close(conv.forward(x), F.conv2d(x, conv.weight, conv.bias))
    assert conv._build.program is program
    conv.weight = torch.randn(3, 2, 3, 3)
    torch.testing.assert_close(conv.forward(x), F.conv2d(x, conv.weight, conv.bias))
    assert conv._build.program is not program


# ---- Sequential: one compiled network, trained by SGD, against torch.nn ---------------------

def _seed_net():
    return Sequential(Conv2d(3, 8, 3, stride=2, padding=1), ReLU(),
                      Conv2d(8, 8, 3, stride=2, padding=1), ReLU(),
                      Upsampling(8, 8, 3, padding=1), ReLU(),
                      TransposeConv2d(8, 3, 2, stride=2), Sigmoid())


def _torch_twin(net: Sequential) -> nn.Sequential:
    layers = []
    for m in net.modules:
        if isinstance(m, Upsampling):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(8, 8, 3, padding=1)]
        elif isinstance(m, TransposeConv2d):
            layers.append(nn.ConvTranspose2d(8, 3, 2, stride=2))
        elif isinstance(m, Conv2d):
            layers.append(nn.Conv2d(m.op.in_channels, m.op.out_channels, 3, stride=2, padding=1))
        else:
            layers.append(nn.ReLU() if isinstance(m, ReLU) else nn.Sigmoid())
    twin = nn.Sequential(*layers).double()
    ours = [p for p, _ in net.param()]
    with torch.no_grad():
        for theirs, mine in zip(twin.parameters(), ours, strict=True):
            theirs.copy_(mine)
    return twin


@pytest.mark.parametrize("momentum", [0.0, 0.9], ids=["plain", "momentum"])
def test_sequential_trained_by_sgd_matches_torch_nn(momentum):
    torch.manual_seed(0)
    net = _seed_net()
    for m in net.modules:
        _double(m)
    twin = _torch_twin(net)
    criterion = MSE()
    sgd = SGD(net.param(), lr=0.5, momentum=momentum, dampening=0.1 if momentum else 0.0)
    torch_sgd = torch.optim.SGD(twin.parameters(), lr=0.5, momentum=momentum,
                                dampening=0.1 if momentum else 0.0)
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        x, target = torch.rand(2, 4, 3, 16, 12, dtype=torch.float64, generator=gen)
        loss = criterion.forward(net.forward(x), target)
        sgd.zero_grad()
        net.backward(criterion.backward())
        sgd.step()
        torch_sgd.zero_grad()
        torch_loss = F.mse_loss(twin(x), target)
        torch_loss.backward()
        torch_sgd.step()
        torch.testing.assert_close(loss, torch_loss.detach(), **F64)
    for (ours, _), theirs in zip(net.param(), twin.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs.detach(), **F64)
    # one network, one program: every module's nodes, in order
    assert [n.name for n in net._build.spec.nodes][:2] == ["net.0", "net.1"]
    assert len(net._build.spec.nodes) == 9


def test_nested_sequential_with_a_shared_module_sums_its_gradients():
    """The same Conv2d twice (inside a nested Sequential): two nodes read one tensor, and
    its gradient is the sum of both uses, as torch has it."""
    conv = _double(Conv2d(3, 3, 3, padding=1))
    net = Sequential(conv, Sequential(ReLU(), conv))
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, generator=gen)
    g = torch.randn(2, 3, 5, 5, dtype=torch.float64, generator=gen)
    x_, w_, b_ = _leaves(x, conv.weight, conv.bias)
    expected = F.conv2d(torch.relu(F.conv2d(x_, w_, b_, padding=1)), w_, b_, padding=1)
    torch.testing.assert_close(net.forward(x), expected, **F64)
    grad_x = net.backward(g)
    expected.backward(g)
    torch.testing.assert_close(grad_x, x_.grad, **F64)
    torch.testing.assert_close(conv.grad_weight, w_.grad, **F64)
    torch.testing.assert_close(conv.grad_bias, b_.grad, **F64)


def test_sequential_compiles_a_plan_per_input_shape():
    net = Sequential(Conv2d(3, 4, 3, padding=1), ReLU())
    for size in (8, 12, 8):
        x = torch.randn(1, 3, size, size)
        assert net.forward(x).shape == (1, 4, size, size)
    assert len([k for k in net._build.program._cache if k[0] == "infer"]) == 2


def test_misuse_gets_a_clear_error():
    with pytest.raises(TypeError, match="not an n2ngraph.compat module"):
        Sequential(Conv2d(3, 3, 3), nn.ReLU())
    with pytest.raises(RuntimeError, match="before forward"):
        ReLU().backward(torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match=r"kernel_size=\(3, 5, 1\): expected an int or a pair"):
        Conv2d(3, 3, (3, 5, 1))
    with pytest.raises(ng.SpecError, match="in_channels"):
        Conv2d(3, 3, 3).forward(torch.zeros(1, 4, 5, 5))


# ---- the compiler feature: Program.vjp --------------------------------------------------------

def test_program_vjp_matches_autograd_through_fan_out():
    """skipnet's input feeds both the encoder and the residual add: its gradient is the
    sum of two contributions, as torch.autograd has it."""
    spec = ng.load_spec(ROOT / "specs" / "skipnet.yaml")
    twin = TorchNet(spec).double()
    params = {k: v.detach().clone() for k, v in twin.state_dict().items()}
    program = ng.Program(spec, dtype=torch.float64, params=params)
    assert all(program.params[k] is params[k] for k in params)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=gen)
    g = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=gen)
    grad_x = program.vjp([x], g)
    (x_,) = _leaves(x)
    twin(x_).backward(g)
    torch.testing.assert_close(grad_x, x_.grad, **F64)
    for name, p in twin.named_parameters():
        torch.testing.assert_close(program.grads[name], p.grad, **F64)
    graph = program.compiled("vjp", {"noisy": (2, 3, 8, 8)}).graph
    assert graph["grad:noisy"].kind == "accumulate"
    assert graph["grad:denoised"].kind == "input"


def test_program_refuses_foreign_params():
    spec = ng.load_spec(ROOT / "specs" / "noise2noise.yaml")
    good = ng.Program(spec).state_dict()
    with pytest.raises(KeyError, match="missing"):
        ng.Program(spec, params={k: v for k, v in good.items() if k != "conv1.bias"})
    with pytest.raises(ValueError, match="conv1.weight"):
        ng.Program(spec, params={**good, "conv1.weight": torch.zeros(24, 3, 5, 5)})
    with pytest.raises(ValueError, match="float64"):
        ng.Program(spec, dtype=torch.float64, params=good)


def test_conv_transpose2d_in_a_spec_trains_like_torch_reference():
    spec = ng.parse_spec("""
inputs: {noisy: {channels: 3}, target: {channels: 3}}
nodes:
  down: {op: conv2d, in: noisy, in_channels: 3, out_channels: 4, kernel: 3, stride: 2, padding: 1}
  act:  {op: relu, in: down}
  up:   {op: conv_transpose2d, in: act, in_channels: 4, out_channels: 3, kernel: 3, stride: 2,
         padding: 1, output_padding: 1}
  loss: {op: mse, in: [up, target]}
output: up
loss: loss
train: {optimizer: {name: sgd, lr: 0.1}}
""")
    program = ng.Program(spec, dtype=torch.float64)
    twin = TorchNet(spec).double()
    twin.load_state_dict(program.state_dict())
    torch_sgd = torch.optim.SGD(twin.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(5)
    for _ in range(2):
        x, target = torch.randn(2, 2, 3, 8, 8, dtype=torch.float64, generator=gen)
        loss = program.train_step(x, target)
        torch_sgd.zero_grad()
        torch_loss = twin.objective(x, target)
        torch_loss.backward()
        torch_sgd.step()
        assert loss == pytest.approx(torch_loss.item(), rel=1e-12)
    for name, p in twin.named_parameters():
        torch.testing.assert_close(program.params[name], p.detach(), **F64)


# ---- Model: the seed's model.py ---------------------------------------------------------------

def _psnr(x, y):
    return 10 * math.log10(255**2 / F.mse_loss(x.double(), y.double()).item())


def _noisy_pairs(n, size=32, sigma=40.0, seed=0):
    """Smooth random images in 0-255 and two independent noisy uint8 views of each."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=gen)
    clean = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False) * 255

    def noisy():
        return (clean + sigma * torch.randn(clean.shape, generator=gen)).clamp(0, 255).round().to(torch.uint8)

    return clean, noisy(), noisy()


def test_model_predicts_any_size_in_0_255():
    model = Model()
    for shape in [(1, 3, 512, 512), (2, 3, 37, 41), (1, 3, 1, 1)]:
        images = torch.randint(0, 256, shape, dtype=torch.uint8)
        out = model.predict(images)
        assert out.shape == shape and out.dtype == torch.float32
        assert 0 <= out.min() and out.max() <= 255
    floats = torch.rand(1, 3, 16, 16) * 255
    kept = floats.clone()
    model.predict(floats)
    assert torch.equal(floats, kept)


def test_model_prediction_is_the_compiled_network_on_unit_images():
    model = Model()
    twin = TorchNet(model.spec)
    twin.load_state_dict(model.program.state_dict())
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        expected = twin(images.float() / 255) * 255
    torch.testing.assert_close(model.predict(images), expected, rtol=1e-5, atol=1e-3)


def test_model_one_epoch_raises_validation_psnr():
    clean_val, noisy_val, _ = _noisy_pairs(32, seed=1)
    _, train_input, train_target = _noisy_pairs(400, seed=2)
    model = Model()
    before = _psnr(model.predict(noisy_val), clean_val)
    model.train(train_input, train_target, num_epochs=1)
    after = _psnr(model.predict(noisy_val), clean_val)
    assert after > before + 3, (before, after)


def test_model_loads_the_weights_the_package_ships(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "WEIGHTS", tmp_path)
    with pytest.raises(CheckpointError, match="no pretrained weights for 'noise2noise'"):
        Model().load_pretrained_model()
    donor = ng.Program(Model().spec, seed=123)
    save_checkpoint(tmp_path / "noise2noise.safetensors", donor.state_dict(), spec_text="")
    model = Model()
    model.load_pretrained_model()
    for name, value in donor.state_dict().items():
        assert torch.equal(model.program.params[name], value)


def test_the_shipped_spec_is_the_repository_spec():
    assert pretrained.spec_path("noise2noise").read_text() == (ROOT / "specs" / "noise2noise.yaml").read_text()
    with pytest.raises(FileNotFoundError, match="shipped: noise2noise"):
        pretrained.spec_path("nonesuch")


def test_the_shipped_weights_denoise_a_held_out_photo():
    """A 256 x 256 crop of 'coffee' (held out of training) under the default noise."""
    from n2ngraph.app.data import embedded_split

    clean = embedded_split()[1]["coffee"][None, :, :256, :256].float()
    gen = torch.Generator().manual_seed(3)
    noisy = (clean + 25 * torch.randn(clean.shape, generator=gen)).clamp(0, 255).round()
    model = Model()
    model.load_pretrained_model()
    assert _psnr(model.predict(noisy.to(torch.uint8)), clean) > _psnr(noisy, clean) + 1


def test_compat_exports_the_seed_names():
    assert set(compat.__all__) >= {"Conv2d", "TransposeConv2d", "NearestUpsampling", "Upsampling",
                                   "ReLU", "Sigmoid", "Sequential", "MSE", "SGD", "Model"}
