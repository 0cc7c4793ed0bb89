"""n2ngraph.compat as a drop-in for the course framework (issue 20): what students' own
module tests do, against torch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from n2ngraph.compat import (MSE, SGD, Conv2d, ReLU, Sequential, Sigmoid, TransposeConv2d,
                             Upsampling)

F64 = dict(rtol=1e-10, atol=1e-12)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny GEMMs (conftest.py says why)


# ---- 1. tensors that require grad -----------------------------------------------------------

@pytest.mark.parametrize("make", [ReLU, Sigmoid, lambda: Conv2d(3, 2, 3, padding=1),
                                  lambda: TransposeConv2d(3, 2, 2, stride=2),
                                  lambda: Upsampling(3, 2, 3, padding=1),
                                  lambda: Sequential(Conv2d(3, 3, 3, padding=1), ReLU())],
                         ids=["relu", "sigmoid", "conv", "tconv", "upsampling", "sequential"])
def test_tensors_that_require_grad_work_and_stay_usable(make):
    module = make()
    for owner in module.modules if isinstance(module, Sequential) else [module]:
        for role in ("weight", "bias"):
            if getattr(owner, role, None) is not None:
                setattr(owner, role, nn.Parameter(getattr(owner, role).clone()))
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    y = module.forward(x)
    assert not y.requires_grad and y.grad_fn is None
    grad_x = module.backward(torch.ones_like(y))
    assert grad_x.shape == x.shape and not grad_x.requires_grad
    (x * 2).sum().backward()  # the caller's tensor still works with autograd
    torch.testing.assert_close(x.grad, torch.full_like(x, 2.0))
    if module.param():
        sgd = SGD(module.param(), lr=0.1)
        before = [p.detach().clone() for p, _ in module.param()]
        sgd.step()
        for (p, g), old in zip(module.param(), before):
            torch.testing.assert_close(p.detach(), old - 0.1 * g)
            assert isinstance(p, nn.Parameter) and p.grad is None


def test_conv_with_parameter_weights_matches_torch():
    torch_conv = nn.Conv2d(3, 2, 3, padding=1).double()
    conv = Conv2d(3, 2, 3, padding=1)
    conv.weight, conv.bias = torch_conv.weight, torch_conv.bias
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    expected = torch_conv(x)
    torch.testing.assert_close(conv.forward(x), expected.detach(), **F64)
    g = torch.randn_like(expected)
    expected.backward(g)
    torch.testing.assert_close(conv.backward(g), x.grad, **F64)
    torch.testing.assert_close(conv.grad_weight, torch_conv.weight.grad, **F64)
    torch.testing.assert_close(conv.grad_bias, torch_conv.bias.grad, **F64)


def test_mse_takes_tensors_that_require_grad():
    p = torch.rand(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    t = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    criterion = MSE()
    loss = criterion.forward(p, t)
    expected = F.mse_loss(p, t)
    torch.testing.assert_close(loss, expected.detach(), **F64)
    expected.backward()
    torch.testing.assert_close(criterion.backward(), p.grad, **F64)


# ---- 2. MSE's reduction and the gradient it is seeded with -----------------------------------

@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse_reduction_matches_torch(reduction):
    gen = torch.Generator().manual_seed(2)
    p, t = torch.rand(2, 2, 3, 4, 5, dtype=torch.float64, generator=gen)
    p_ = p.clone().requires_grad_(True)
    expected = F.mse_loss(p_, t, reduction=reduction)
    criterion = MSE(reduction=reduction)
    torch.testing.assert_close(criterion.forward(p, t), expected.detach(), **F64)
    expected.backward()
    for seed in [(), (torch.empty(1, dtype=torch.float64).fill_(1.0),),
                 (torch.tensor(1.0, dtype=torch.float64),)]:
        torch.testing.assert_close(criterion.backward(*seed), p_.grad, **F64)
    torch.testing.assert_close(criterion.backward(torch.full((1,), 2.0)), 2 * p_.grad, **F64)


def test_mse_misuse_gets_a_clear_error():
    with pytest.raises(ValueError, match="reduction='none'"):
        MSE(reduction="none")
    criterion = MSE()
    with pytest.raises(ValueError, match="same shape"):
        criterion.forward(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 1))
    criterion.forward(torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2))
    with pytest.raises(ValueError, match=r"0-d or \(1,\)"):
        criterion.backward(torch.ones(2))


# ---- 3. Sequential as a container, with a user's module, and the backward chain by hand ------

class Double:
    """A student's own module: not compiled, called in between."""

    def forward(self, x):
        self.calls = getattr(self, "calls", 0) + 1
        return 2 * x

    def backward(self, grad):
        return 2 * grad

    def param(self):
        return []


def _f64(*modules):
    for m in modules:
        for role in ("weight", "bias"):
            if getattr(m, role, None) is not None:
                setattr(m, role, getattr(m, role).double())
    return modules


def test_sequential_is_indexed_iterated_and_measured():
    a, b, c = ReLU(), Conv2d(2, 2, 1), Sigmoid()
    net = Sequential(a, b, c)
    assert len(net) == 3 and net[0] is a and net[-1] is c and list(net) == [a, b, c]
    assert list(net[1:]) == [b, c] and isinstance(net[1:], Sequential)


def test_a_users_module_inside_a_sequential():
    conv1, conv2 = _f64(Conv2d(3, 4, 3, padding=1), Conv2d(4, 2, 3, padding=1))
    user = Double()
    net = Sequential(conv1, ReLU(), user, conv2, Sigmoid())
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, generator=gen)
    x_, w1, b1, w2, b2 = (t.detach().clone().requires_grad_(True)
                          for t in (x, conv1.weight, conv1.bias, conv2.weight, conv2.bias))
    expected = torch.sigmoid(F.conv2d(2 * torch.relu(F.conv2d(x_, w1, b1, padding=1)), w2, b2,
                                      padding=1))
    torch.testing.assert_close(net.forward(x), expected.detach(), **F64)
    assert user.calls == 1
    g = torch.randn(expected.shape, dtype=torch.float64, generator=gen)
    expected.backward(g)
    torch.testing.assert_close(net.backward(g), x_.grad, **F64)
    for ours, theirs in zip(net.param(), (w1, b1, w2, b2), strict=True):
        torch.testing.assert_close(ours[1], theirs.grad, **F64)


@pytest.mark.parametrize("with_user", [False, True], ids=["compat", "user-module"])
def test_the_backward_chain_by_hand_after_sequential_forward(with_user):
    conv1, conv2 = _f64(Conv2d(3, 4, 3, padding=1), Conv2d(4, 2, 3, padding=1))
    middle = [Double()] if with_user else []
    net = Sequential(conv1, ReLU(), *middle, conv2, Sigmoid())
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, generator=gen)
    y = net.forward(x)
    g = torch.randn(y.shape, dtype=torch.float64, generator=gen)
    grad = g
    for module in reversed(list(net)):
        grad = module.backward(grad)
    by_hand = (grad, conv1.grad_weight.clone(), conv2.grad_bias.clone())
    for m in (conv1, conv2):
        m.zero_grad()
    net.forward(x)
    whole = (net.backward(g), conv1.grad_weight, conv2.grad_bias)
    for a, b in zip(by_hand, whole):
        torch.testing.assert_close(a, b, **F64)


def test_sequential_refuses_what_has_no_backward():
    with pytest.raises(TypeError, match="no forward and backward"):
        Sequential(Conv2d(3, 3, 3), nn.ReLU())


# ---- 4. tensors of other ranks ------------------------------------------------------------

@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4), ()], ids=["1d", "2d", "3d", "0d"])
@pytest.mark.parametrize(("make", "oracle"), [(ReLU, torch.relu), (Sigmoid, torch.sigmoid)],
                         ids=["relu", "sigmoid"])
def test_elementwise_modules_take_any_rank(make, oracle, shape):
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(shape, dtype=torch.float64, generator=gen)
    x_ = x.clone().requires_grad_(True)
    expected = oracle(x_)
    module = make()
    y = module.forward(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, expected.detach(), **F64)
    g = torch.randn(shape, dtype=torch.float64, generator=gen)
    expected.backward(g)
    torch.testing.assert_close(module.backward(g), x_.grad, **F64)


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4)], ids=["1d", "2d", "3d"])
def test_mse_takes_any_rank(shape):
    p, t = torch.rand((2, *shape), dtype=torch.float64)
    p_ = p.clone().requires_grad_(True)
    expected = F.mse_loss(p_, t)
    criterion = MSE()
    torch.testing.assert_close(criterion.forward(p, t), expected.detach(), **F64)
    expected.backward()
    torch.testing.assert_close(criterion.backward(), p_.grad, **F64)


@pytest.mark.parametrize("make", [lambda: Conv2d(3, 2, 3, padding=1),
                                  lambda: TransposeConv2d(3, 2, 2, stride=2)], ids=["conv", "tconv"])
def test_convolutions_take_an_unbatched_image(make):
    module = make()
    x = torch.randn(3, 5, 4)
    batched = module.forward(x[None])
    y = module.forward(x)
    assert y.shape == batched.shape[1:]
    torch.testing.assert_close(y, batched[0])
    g = torch.randn(y.shape)
    unbatched = module.backward(g)
    assert unbatched.shape == x.shape
    torch.testing.assert_close(unbatched, _batched_grad(module, x, g))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        module.forward(torch.zeros(3, 5))


def _batched_grad(module, x, g):
    module.forward(x[None])
    return module.backward(g[None])[0]


# ---- 6. SGD's default, parameters replaced, dtypes mixed -----------------------------------

def test_sgd_default_lr_is_torchs():
    import inspect
    default = inspect.signature(torch.optim.SGD.__init__).parameters["lr"].default
    assert inspect.signature(SGD.__init__).parameters["lr"].default == default
    conv = Conv2d(2, 2, 1)
    conv.grad_weight.fill_(1.0)
    before = conv.weight.clone()
    SGD(conv.param()).step()
    torch.testing.assert_close(conv.weight, before - default)


def test_sgd_updates_the_tensor_assigned_after_it_was_built():
    conv = Conv2d(2, 2, 3, padding=1)
    sgd = SGD(conv.param(), lr=0.5)
    old = conv.weight
    kept = old.clone()
    conv.weight = torch.randn(2, 2, 3, 3)
    fresh = conv.weight.clone()
    x = torch.randn(1, 2, 4, 4)
    conv.forward(x)
    conv.backward(torch.ones(1, 2, 4, 4))
    sgd.step()
    torch.testing.assert_close(conv.weight, fresh - 0.5 * conv.grad_weight)
    assert torch.equal(old, kept)


def test_a_float64_input_to_float32_modules_is_refused():
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="float64.*float32"):
        Conv2d(2, 2, 3).forward(x)
    with pytest.raises(RuntimeError, match="float64.*float32"):
        Sequential(ReLU(), Conv2d(2, 2, 3)).forward(x)
    assert ReLU().forward(x).dtype == torch.float64


def test_sgd_refuses_what_is_not_pairs():
    with pytest.raises(TypeError, match="pair 0"):
        SGD([torch.zeros(3)], lr=0.1)


# ---- 7. Model.load_pretrained_model honours bestmodel.pth ----------------------------------

def _student_model(folder, monkeypatch, source):
    import importlib.util
    import sys

    (folder / "model.py").write_text(source)
    spec = importlib.util.spec_from_file_location("student_model", folder / "model.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "student_model", module)
    spec.loader.exec_module(module)
    return module.Model


@pytest.mark.parametrize("source", ["from n2ngraph.compat import Model\n",
                                    "from n2ngraph import compat\n\n"
                                    "class Model(compat.Model):\n    pass\n"],
                         ids=["exported", "subclassed"])
def test_model_loads_bestmodel_beside_the_users_model_py(tmp_path, monkeypatch, source):
    import n2ngraph as ng

    model_class = _student_model(tmp_path, monkeypatch, source)
    donor = ng.Program(model_class().spec, seed=321)
    torch.save(donor.state_dict(), tmp_path / "bestmodel.pth")
    model = model_class()
    model.load_pretrained_model()
    for name, value in donor.state_dict().items():
        assert torch.equal(model.program.params[name], value)
    (tmp_path / "bestmodel.pth").unlink()  # none: the shipped weights
    model.load_pretrained_model()
    assert not torch.equal(model.program.params[name], value)


def test_a_bestmodel_that_is_not_a_state_dict_is_a_clear_error(tmp_path, monkeypatch):
    from n2ngraph.app.checkpoint import CheckpointError

    model_class = _student_model(tmp_path, monkeypatch, "from n2ngraph.compat import Model\n")
    torch.save([torch.zeros(1)], tmp_path / "bestmodel.pth")
    with pytest.raises(CheckpointError, match="not a state dict"):
        model_class().load_pretrained_model()
    torch.save(nn.ReLU(), tmp_path / "bestmodel.pth")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        model_class().load_pretrained_model()


# ---- 8. the names students used, with torch's signatures -----------------------------------

def test_conv_transpose2d_alias_takes_torchs_signature():
    from n2ngraph.compat import ConvTranspose2d

    theirs = nn.ConvTranspose2d(3, 2, 3, 2, 1, 1, 1, True, 1, dtype=torch.float64)
    ours = ConvTranspose2d(3, 2, 3, 2, 1, 1, 1, True, 1, dtype=torch.float64)
    assert ours.weight.shape == theirs.weight.shape and ours.weight.dtype == torch.float64
    ours.weight, ours.bias = theirs.weight, theirs.bias
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x).detach(), **F64)
    with pytest.raises(ValueError, match="padding_mode='reflect'"):
        ConvTranspose2d(3, 3, 3, padding_mode="reflect")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse_loss_alias(reduction):
    from n2ngraph.compat import MSELoss

    p, t = torch.rand(2, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(MSELoss(reduction=reduction)(p, t),
                               nn.MSELoss(reduction=reduction)(p, t), **F64)
    with pytest.raises(ValueError, match="deprecated"):
        MSELoss(size_average=True)


def test_upsample_alias():
    from n2ngraph.compat import Upsample

    x = torch.randn(2, 3, 4, 5)
    for factor in (2, 3.0, (2, 2)):
        expected = nn.Upsample(scale_factor=factor, mode="nearest")(x)
        module = Upsample(scale_factor=factor)
        torch.testing.assert_close(module(x), expected)
        assert module.backward(torch.ones_like(expected)).shape == x.shape
    with pytest.raises(ValueError, match="nearest"):
        Upsample(scale_factor=2, mode="bilinear")
    with pytest.raises(ValueError, match="positive integer"):
        Upsample(scale_factor=1.5)
    with pytest.raises(ValueError, match="size"):
        Upsample(size=(8, 8))


def test_a_subclass_that_replaces_forward_is_called_not_compiled():
    class Noisy(ReLU):
        def forward(self, x):
            self.seen = True
            return torch.relu(x) + 1

        def backward(self, grad):
            return grad

    module = Noisy()
    net = Sequential(Conv2d(2, 2, 1), module)
    x = torch.randn(1, 2, 3, 3)
    y = net.forward(x)
    assert module.seen and bool((y >= 1).all())
    assert net.backward(torch.ones_like(y)).shape == x.shape


def test_model_takes_images_that_require_grad():
    from n2ngraph.compat import Model

    images = (torch.rand(1, 3, 8, 8) * 255).requires_grad_(True)
    out = Model().predict(images)
    assert out.shape == images.shape and not out.requires_grad


def test_a_weight_whose_data_is_replaced_is_read_and_updated():
    conv = Conv2d(2, 2, 3, padding=1)
    conv.weight = nn.Parameter(conv.weight.clone())
    sgd = SGD(conv.param(), lr=0.5)
    x = torch.randn(1, 2, 4, 4)
    conv.forward(x)
    conv.weight.data = torch.randn(2, 2, 3, 3)
    fresh = conv.weight.detach().clone()
    torch.testing.assert_close(conv.forward(x), F.conv2d(x, fresh, conv.bias.detach(), padding=1))
    conv.backward(torch.ones(1, 2, 4, 4))
    sgd.step()
    torch.testing.assert_close(conv.weight.detach(), fresh - 0.5 * conv.grad_weight)
