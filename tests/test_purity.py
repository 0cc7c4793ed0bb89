"""The rule that makes n2ngraph what it is: inside the package, no autograd, no
torch.nn modules or functional kernels but fold/unfold, no torch.optim, no compilers,
none of the framework's convolution, pooling, interpolation or loss kernels."""

from __future__ import annotations

import re

from helpers import ROOT

FORBIDDEN = re.compile(
    r"torch\.autograd|requires_grad|\.backward\(|torch\.func\b|functorch|torch\.compile"
    r"|torch\.jit|torch\.optim|torch\.nn\.(?!functional\.(fold|unfold)\b)\w+"
    r"|import torch\.nn as|from torch import nn|from torch\.nn import"
    r"|\bF\.(?!(fold|unfold)\b)\w+\(|functional\.(?!(fold|unfold)\b)\w+\("
    r"|torch\.(conv[a-z0-9_]*|convolution|max_pool\w*|avg_pool\w*|adaptive_\w+|upsample\w*"
    r"|mse_loss|l1_loss|smooth_l1_loss|binary_cross_entropy\w*|cross_entropy)\("
    r"|\b_C\._nn|aten\.\w*backward|torch\.ops\.aten"
)


def _offences() -> list[str]:
    found = []
    for path in sorted((ROOT / "n2ngraph").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if FORBIDDEN.search(code):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return found


def test_package_uses_only_plain_tensor_ops():
    assert _offences() == []


def test_the_grep_catches_what_it_should(tmp_path):
    for bad in ["torch.nn.functional.conv2d(x, w)", "F.interpolate(x)", "x.requires_grad_()",
                "loss.backward()", "torch.optim.SGD(p)", "from torch import nn",
                "torch.conv2d(x, w)", "torch.ops.aten.convolution_backward", "torch.compile(f)",
                "torch.nn.Conv2d(3, 3, 3)", "torch.max_pool2d(x, 2)"]:
        assert FORBIDDEN.search(bad), bad
    for fine in ["torch.nn.functional.unfold(x, 3)", "torch.mm(a, b, out=c)", "F.fold(x, 4, 3)",
                 "torch.sigmoid(x, out=y)", "x.as_strided((2,), (1,))"]:
        assert not FORBIDDEN.search(fine), fine
