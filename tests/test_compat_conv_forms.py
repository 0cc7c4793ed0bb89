"""n2ngraph.compat's convolutions in every argument form torch takes (issue 20, item 5):
sizes as ints or (h, w) pairs, dilation, padding "same" and "valid", groups, against
torch.nn, alone and in a Sequential (with a user's module in the middle), with tensors
that require grad, and the course-style backward chain by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from n2ngraph.compat import (MSE, SGD, Conv2d, ConvTranspose2d, ReLU, Sequential,
                             TransposeConv2d, Upsampling)
from test_compat_dropin import F64, Double

pytestmark = [pytest.mark.usefixtures("one_thread"),  # tiny GEMMs (conftest.py says why)
              pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")]

# (kind, arguments after in_channels=4 and out_channels=6): each built by n2ngraph and torch
FORMS = {
    "conv-ints": ("conv", dict(kernel_size=3, stride=2, padding=1, dilation=1)),
    "conv-pairs": ("conv", dict(kernel_size=(2, 3), stride=(1, 2), padding=(0, 1))),
    "conv-dilation": ("conv", dict(kernel_size=3, padding=(2, 1), dilation=(2, 1))),
    "conv-same-odd": ("conv", dict(kernel_size=(3, 5), padding="same")),
    "conv-same-even": ("conv", dict(kernel_size=(2, 4), padding="same", dilation=(1, 2))),
    "conv-valid": ("conv", dict(kernel_size=(3, 2), padding="valid", bias=False)),
    "conv-groups": ("conv", dict(kernel_size=3, padding=1, groups=2)),
    "conv-groups-strided": ("conv", dict(kernel_size=(3, 2), stride=(2, 1), groups=2)),
    "conv-depthwise": ("conv", dict(kernel_size=3, padding="same", groups=4, out_channels=8)),
    "tconv-pairs": ("tconv", dict(kernel_size=(2, 3), stride=(2, 1), padding=(0, 1),
                                  output_padding=(1, 0))),
    "tconv-dilation": ("tconv", dict(kernel_size=3, stride=2, dilation=(1, 2),
                                     output_padding=(1, 1))),
    "tconv-groups": ("tconv", dict(kernel_size=3, stride=2, padding=1, output_padding=1, groups=2)),
    "upsampling-pairs": ("upsampling", dict(kernel_size=(3, 3), padding=(1, 1))),
    "upsampling-same-groups": ("upsampling", dict(kernel_size=3, padding="same", groups=2)),
    "upsampling-rect-x3": ("upsampling", dict(kernel_size=(2, 3), padding="same", scale_factor=3)),
}


def _twins(form: str, in_channels: int = 4):
    """The n2ngraph module of ``form`` and its torch.nn twin, in float64, sharing the
    twin's parameters (nn.Parameters: tensors that require grad)."""
    kind, arguments = FORMS[form]
    arguments = {"in_channels": in_channels, "out_channels": 6, **arguments}
    if kind == "conv":
        ours, theirs = Conv2d(**arguments), nn.Conv2d(**arguments)
    elif kind == "tconv":
        ours, theirs = TransposeConv2d(**arguments), nn.ConvTranspose2d(**arguments)
    else:
        scale = arguments.pop("scale_factor", 2)
        ours = Upsampling(**arguments, scale_factor=scale)
        theirs = nn.Sequential(nn.Upsample(scale_factor=scale, mode="nearest"), nn.Conv2d(**arguments))
    theirs = theirs.double()
    conv = theirs[1] if kind == "upsampling" else theirs
    ours.weight, ours.bias = conv.weight, conv.bias
    return ours, theirs


def _input(seed: int, channels: int = 4) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, channels, 7, 6, dtype=torch.float64, generator=gen).requires_grad_(True)


def _expected_grads(expected, x, parameters, g):
    """torch's gradients of ``expected`` seeded with ``g``: the input's, then each
    parameter's."""
    return torch.autograd.grad(expected, [x, *parameters], g)


@pytest.mark.parametrize("form", list(FORMS))
def test_each_form_alone_matches_torch(form):
    ours, theirs = _twins(form)
    x = _input(1)
    expected = theirs(x)
    y = ours.forward(x)
    assert not y.requires_grad
    torch.testing.assert_close(y, expected.detach(), **F64)
    g = torch.randn(expected.shape, dtype=torch.float64)
    grad_x, *grads = _expected_grads(expected, x, [p for p, _ in ours.param()], g)
    torch.testing.assert_close(ours.backward(g), grad_x, **F64)
    for (_, got), want in zip(ours.param(), grads, strict=True):
        torch.testing.assert_close(got, want, **F64)


def _net(form: str, with_user: bool):
    """[form's module, ReLU, (a user's module), a 'same' 1x3 conv back to 3 channels],
    as n2ngraph's Sequential and as torch's."""
    ours, theirs = _twins(form)
    channels = ours.op.out_channels
    tail = Conv2d(channels, 3, (1, 3), padding="same")
    tail_twin = nn.Conv2d(channels, 3, (1, 3), padding="same").double()
    tail.weight, tail.bias = tail_twin.weight, tail_twin.bias
    middle = [Double()] if with_user else []
    twin_middle = [_Twice()] if with_user else []
    return (Sequential(ours, ReLU(), *middle, tail),
            nn.Sequential(theirs, nn.ReLU(), *twin_middle, tail_twin))


class _Twice(nn.Module):
    def forward(self, x):
        return 2 * x


@pytest.mark.parametrize("with_user", [False, True], ids=["compat", "user-module"])
@pytest.mark.parametrize("form", list(FORMS))
def test_each_form_in_a_sequential_matches_torch_whole_and_by_hand(form, with_user):
    """net.backward, then each child's backward called by hand in reverse order (the
    course's chain): both give torch's input and parameter gradients."""
    net, twin = _net(form, with_user)
    x = _input(2)
    expected = twin(x)
    torch.testing.assert_close(net.forward(x), expected.detach(), **F64)
    g = torch.randn(expected.shape, dtype=torch.float64)
    parameters = [p for p, _ in net.param()]
    grad_x, *grads = _expected_grads(expected, x, parameters, g)
    torch.testing.assert_close(net.backward(g), grad_x, **F64)
    for (_, got), want in zip(net.param(), grads, strict=True):
        torch.testing.assert_close(got, want, **F64)
    for module in (net[0], net[-1]):
        module.zero_grad()
    net.forward(x)
    grad = g
    for module in reversed(list(net)):
        grad = module.backward(grad)
    torch.testing.assert_close(grad, grad_x, **F64)
    for (_, got), want in zip(net.param(), grads, strict=True):
        torch.testing.assert_close(got, want, **F64)


@pytest.mark.parametrize("form", ["conv-same-even", "conv-depthwise", "tconv-groups",
                                  "upsampling-same-groups"])
def test_sgd_steps_on_each_form_follow_torch(form):
    """Three steps of SGD with momentum on the MSE, n2ngraph's modules and torch's
    from the same start: the same parameters after each."""
    net, twin = _net(form, with_user=False)
    for module in (net[0], net[-1]):  # parameters of their own, no longer the twin's
        module.weight = nn.Parameter(module.weight.detach().clone())
        module.bias = nn.Parameter(module.bias.detach().clone()) if module.bias is not None else None
    ours = SGD(net.param(), lr=0.1, momentum=0.9)
    theirs = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    x, criterion = _input(3), MSE()
    for _ in range(3):
        for module in (net[0], net[-1]):
            module.zero_grad()
        y = net.forward(x)
        target = torch.full_like(y, 0.5)
        criterion.forward(y, target)
        net.backward(criterion.backward())
        ours.step()
        theirs.zero_grad()
        F.mse_loss(twin(x), target).backward()
        theirs.step()
        for (p, _), q in zip(net.param(), twin.parameters(), strict=True):
            torch.testing.assert_close(p.detach(), q.detach(), **F64)


def test_sizes_are_taken_as_torch_takes_them_and_bad_ones_name_the_argument():
    """Lists and numpy integers as torch's modules take them; a bad form is a
    ValueError naming torch's argument and the value given."""
    conv = Conv2d(4, 6, [2, np.int64(3)], stride=np.int64(1), padding=[1, 0], groups=2)
    assert (conv.op.kernel, conv.op.padding, conv.weight.shape) == ((2, 3), (1, 0), (6, 2, 2, 3))
    assert Conv2d(4, 6, 3, padding="valid").op == Conv2d(4, 6, 3).op
    assert ConvTranspose2d(4, 6, 3, groups=2, dtype=torch.float64).weight.shape == (4, 3, 3, 3)
    for make, message in [
        (lambda: Conv2d(4, 6, (3, 3, 3)), "kernel_size=(3, 3, 3): expected an int or a pair"),
        (lambda: Conv2d(4, 6, 0), "kernel_size=0: must be positive"),
        (lambda: Conv2d(4, 6, 3, stride=(1, True)), "stride=(1, True): expected an int or a pair"),
        (lambda: Conv2d(4, 6, 3, padding="full"), "or 'same' or 'valid'"),
        (lambda: Conv2d(4, 6, 3, stride=2, padding="same"), "'same' needs stride 1"),
        (lambda: Conv2d(4, 6, 3, groups=4), "groups=4: must divide in_channels (4) and out_channels (6)"),
        (lambda: Conv2d(4, 6, 3, dilation=(1, -1)), "dilation=(1, -1): must be positive"),
        (lambda: TransposeConv2d(4, 6, 3, padding="same"), "padding='same': expected an int or a pair"),
        (lambda: ConvTranspose2d(4, 6, 3, stride=(2, 1), output_padding=1),
         "output_padding=1: must be smaller than the stride (2x1) or the dilation (1) along each side, got 1"),
        (lambda: Upsampling(4, 6, 3, groups=3), "groups=3"),
        (lambda: Conv2d(4, 6, 3, padding_mode="circular"), "zeros only"),
    ]:
        with pytest.raises(ValueError) as info:
            make()
        assert message in str(info.value), str(info.value)
