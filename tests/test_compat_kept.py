"""A compat module's backward reads the values its forward kept (issue 20): in a training
loop each step computes the forward once, and wherever the kept values may be stale
the backward recomputes them; both ways give the same bits (runtime/vjp.py)."""

from __future__ import annotations

import attrs
import pytest
import torch
from torch import nn

import n2ngraph as ng
from helpers import SPECS
from n2ngraph.compat import MSE, SGD, Conv2d, ReLU, Sequential, Sigmoid, Upsampling
from n2ngraph.runtime import vjp as vjp_module
from n2ngraph.runtime.plans import forward_steps

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny GEMMs (conftest.py says why)


def _net(seed: int = 0) -> Sequential:
    """The course's shape of net, small, float32 (where rounding would show)."""
    torch.manual_seed(seed)
    return Sequential(Conv2d(3, 6, 3, stride=2, padding=1), ReLU(),
                      Conv2d(6, 8, 3, stride=2, padding=1), ReLU(),
                      Upsampling(8, 6, 3, padding=1), ReLU(), Upsampling(6, 3, 3, padding=1),
                      Sigmoid())


def _data(n: int = 2, size: int = 8, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(n, 3, size, size, generator=gen) for _ in range(3)]


@pytest.fixture
def paths(monkeypatch) -> list[str]:
    """'reverse' or 'whole' for each 'vjp' plan run: only the reverse half (on kept
    values), or forward and reverse."""
    seen: list[str] = []
    reverse, whole = vjp_module.VjpPlan.reverse, vjp_module.VjpPlan.whole

    def spy_reverse(plan, grad):
        seen.append("reverse")
        return reverse(plan, grad)

    def spy_whole(plan, inputs, grad):
        seen.append("whole")
        return whole(plan, inputs, grad)
    monkeypatch.setattr(vjp_module.VjpPlan, "reverse", spy_reverse)
    monkeypatch.setattr(vjp_module.VjpPlan, "whole", spy_whole)
    return seen


def _backward(net, g) -> list[torch.Tensor]:
    """d/dx and every parameter gradient of one backward from zero."""
    for _, grad in net.param():
        grad.zero_()
    return [net.backward(g)] + [grad.clone() for _, grad in net.param()]


def _recomputed(net, x, g) -> list[torch.Tensor]:
    """What ``_backward`` gives by the recompute path: forward, kept values dropped."""
    net.forward(x)
    net._build.program._kept = None
    return _backward(net, g)


def _same_bits(ours, theirs) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


def test_each_training_step_computes_the_forward_once(paths, monkeypatch):
    """The first step has no backward plan yet: the forward runs the inference plan and
    the backward recomputes it. From then on the forward runs the backward's plan's
    first half and the backward only its second half (MSE's from the first step)."""
    inference = []
    forward = ng.Program.forward
    monkeypatch.setattr(ng.Program, "forward", lambda p, x, out=None: inference.append(1) or forward(p, x, out))
    net, criterion = _net(), MSE()
    sgd = SGD(net.param(), lr=0.1)
    x, t, _ = _data()
    for step in range(4):
        criterion.forward(net.forward(x), t)
        sgd.zero_grad()
        net.backward(criterion.backward())
        sgd.step()
    # per step: MSE's backward, then the net's
    assert paths == ["reverse", "whole"] + ["reverse", "reverse"] * 3
    assert len(inference) == 1


def test_training_on_kept_values_matches_recomputing_bit_for_bit():
    """Two identical nets trained side by side with momentum, one reading its kept
    values, the other made to recompute: the same losses and weights, to the bit."""
    nets = [_net(), _net()]
    criteria = [MSE(), MSE()]
    sgds = [SGD(n.param(), lr=0.5, momentum=0.9) for n in nets]
    for step in range(4):
        x, t, _ = _data(seed=step)
        losses = []
        for net, criterion, sgd, recompute in zip(nets, criteria, sgds, (False, True)):
            losses.append(criterion.forward(net.forward(x), t))
            if recompute:
                net._build.program._kept = None
            sgd.zero_grad()
            net.backward(criterion.backward())
            sgd.step()
        assert torch.equal(*losses)
    for (a, _), (b, _) in zip(*(n.param() for n in nets)):
        assert torch.equal(a, b)


def _write_weight(net, x):
    with torch.no_grad():
        net[0].weight.mul_(0.5)
    return x


def _write_bias_through_a_view(net, x):
    net[2].bias[:1].add_(1.0)
    return x


def _write_input(net, x):
    x.add_(0.25)
    return x


def _assign_weight(net, x):
    net[4].weight = net[4].weight * 2
    return x


def _replace_weight_data(net, x):
    net[0].weight.data = net[0].weight.detach() * 3
    return x


def _forward_another_input(net, x):
    other = _data(seed=9)[0]
    net.forward(other)
    return other


def _forward_a_child(net, x):
    net[0].forward(_data(seed=10)[0])
    return x


def _change_threads(net, x):
    torch.set_num_threads(2)  # the one_thread fixture sets 1 back
    return x


STALE = [  # (what happens between forward and backward, the path the backward takes)
    (_write_weight, "whole"), (_write_bias_through_a_view, "whole"), (_write_input, "whole"),
    (_assign_weight, "whole"), (_replace_weight_data, "whole"), (_change_threads, "whole"),
    (_forward_another_input, "reverse"),  # kept again, for the input backward is at
    (_forward_a_child, "reverse"),  # the child's own program: the net's values still hold
]


@pytest.mark.parametrize(("between", "path"), STALE, ids=[f.__name__[1:] for f, _ in STALE])
def test_a_backward_after_a_change_gives_what_a_recompute_gives(between, path, paths):
    net = _net()
    x, _, g = _data()
    net.forward(x)
    net.backward(g)  # the backward plan at this shape now exists
    net.forward(x)
    at = between(net, x)
    paths.clear()
    got = _backward(net, g)
    assert paths == [path]
    _same_bits(got, _recomputed(net, at, g))


def test_a_second_backward_recomputes(paths):
    net = _net()
    x, _, g = _data()
    net.forward(x)
    net.backward(g)
    net.forward(x)
    paths.clear()
    first, second = _backward(net, g), _backward(net, g)
    assert paths == ["reverse", "whole"]
    _same_bits(first, second)


def test_mse_sees_a_prediction_written_after_its_forward(paths):
    criterion = MSE()
    p, t, _ = _data()
    criterion.forward(p, t)
    p.mul_(2)
    grad = criterion.backward()
    criterion.forward(p, t)
    assert torch.equal(criterion.backward(), grad)
    assert paths == ["whole", "reverse"]
    torch.testing.assert_close(grad, 2 * (p - t) / p.numel())


def test_the_kept_forward_gives_the_inference_plans_bits():
    """The forward before any backward (the inference plan) and after one (the backward
    plan's first half) are the same kernels: the same output, to the bit."""
    net = _net()
    x, _, g = _data()
    before = net.forward(x)
    net.backward(g)
    assert torch.equal(net.forward(x), before)


def test_a_shape_never_backpropagated_runs_the_lean_inference_plan():
    """Evaluating a large batch builds no backward plan (its buffers would hold every
    activation and gradient), even after training at another shape."""
    net = _net()
    x, _, g = _data()
    net.forward(x)
    net.backward(g)
    big = torch.rand(16, 3, 16, 16)
    net.forward(big)
    kinds = sorted((c.kind, c.value_shape("x")) for c in net._build.program.compilations)
    assert kinds == [("infer", (2, 3, 8, 8)), ("infer", (16, 3, 16, 16)), ("vjp", (2, 3, 8, 8))]


@pytest.mark.parametrize("with_user", [False, True], ids=["compat", "user-module"])
def test_kept_and_recomputed_agree_for_the_chain_by_hand_and_user_modules(with_user, paths):
    """Twice the same step without an update: the first recomputes in every plan, the
    second reads kept values (each child's own plan when called by hand; each compiled
    part's around a user's module); the same bits both times."""

    class Double:
        def forward(self, x):
            return 2 * x

        def backward(self, grad):
            return 2 * grad

    net = _net()
    if with_user:
        net = Sequential(*net.modules[:4], Double(), *net.modules[4:])
    x, _, g = _data()
    runs = []
    for _ in range(2):
        net.forward(x)
        for _, grad in net.param():
            grad.zero_()
        by_hand = g
        for module in reversed(list(net)):
            by_hand = module.backward(by_hand)
        runs.append([by_hand] + [grad.clone() for _, grad in net.param()])
        net.forward(x)
        runs.append(_backward(net, g))
    _same_bits(runs[0], runs[2])
    _same_bits(runs[1], runs[3])
    assert "reverse" in paths[len(paths) // 2:]


def test_program_vjp_forward_then_vjp_is_vjp():
    """The runtime alone, a spec with two inputs read (MSE): the halves give the
    whole's bits, and a vjp on other tensors recomputes."""
    spec = ng.parse_spec("""
inputs: {prediction: {channels: 3}, target: {channels: 3}}
nodes:
  act: {op: sigmoid, in: prediction}
  loss: {op: mse, in: [act, target]}
output: loss
loss: loss
""")
    program = ng.Program(spec)
    p, t, _ = _data()
    seed = torch.tensor(1.0)
    whole = program.vjp([p, t], seed)
    loss = program.vjp_forward([p, t])
    assert program.has_vjp_plan([p, t])
    assert torch.equal(program.vjp([p, t], seed), whole)
    program.vjp_forward([p, t])
    assert torch.equal(program.vjp([p.clone(), t], seed), whole)  # other tensors: recomputed
    assert loss.shape == ()


@pytest.mark.parametrize("spec_path", SPECS, ids=[p.stem for p in SPECS])
def test_every_plan_runs_its_forward_ops_first(spec_path):
    """What lets a plan stop after its forward half: ``forward_steps`` counts the
    forward ops at the head of every schedule and refuses a schedule that runs one
    after a backward op."""
    spec = ng.load_spec(spec_path)
    program = ng.Program(spec)
    shapes = program.input_shapes((1, spec.inputs[0].channels, 16, 16))
    for kind in ("train", "vjp", "infer"):
        wanted = {k: v for k, v in shapes.items() if kind == "train" or k == spec.inputs[0].name}
        compiled = program.compiled(kind, wanted)
        ops = [v for v in compiled.schedule.order if compiled.graph[v].kind == "op"]
        assert compiled.forward_steps == len(ops)
        assert list(compiled.schedule.order[:len(ops)]) == ops
    first = spec.inputs[0].name
    vjp_plan = program.compiled("vjp", {first: shapes[first]})
    order = vjp_plan.schedule.order
    late = attrs.evolve(vjp_plan.schedule, order=order[1:] + order[:1])  # a forward op last
    with pytest.raises(RuntimeError, match="after a backward one"):
        forward_steps(vjp_plan.graph, late)


def test_an_in_place_write_through_data_is_not_seen_as_autograd_does_not_see_it(paths):
    """torch counts no version for a write through ``.data``: autograd's backward then
    mixes the activations it saved with the written weights, and so does the kept path
    (the recompute path would not: the one case where the two differ, as documented)."""
    torch.manual_seed(3)
    theirs = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Sigmoid(),
                           nn.Conv2d(3, 2, 3, padding=1)).double()
    ours = Sequential(Conv2d(2, 3, 3, padding=1), Sigmoid(), Conv2d(3, 2, 3, padding=1))
    twins = ((ours[0], theirs[0]), (ours[2], theirs[2]))
    for module, twin in twins:
        module.weight, module.bias = twin.weight.detach().clone(), twin.bias.detach().clone()
    x, g = torch.rand(2, 1, 2, 5, 5, dtype=torch.float64)
    ours.forward(x)
    ours.backward(g)  # the backward plan at this shape now exists
    ours.forward(x)
    x_ = x.clone().requires_grad_(True)
    y = theirs(x_)
    for module, twin in twins:
        module.weight.data.mul_(2)
        twin.weight.data.mul_(2)
    paths.clear()
    got = _backward(ours, g)
    assert paths == ["reverse"]
    y.backward(g)
    expected = [x_.grad] + [p.grad for p in theirs.parameters()]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
