"""The passes between spec and executor: joint graph, schedule, memory plan."""

from __future__ import annotations

import itertools

import networkx as nx
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import n2ngraph as ng
from helpers import ROOT

SHAPE = (2, 3, 16, 16)


def _compiled(path, kind="train", shape=SHAPE, dtype=torch.float32,
              codegen: bool = True) -> ng.Compiled:
    spec = ng.load_spec(path)
    prog = ng.compile(spec, shape, dtype=dtype, codegen=codegen)
    first = spec.inputs[0].name
    shapes = prog.input_shapes(shape) if kind == "train" else {first: tuple(shape)}
    return prog.compiled(kind, shapes)


def test_joint_graph_prunes_gradients_nobody_needs():
    graph = _compiled(ROOT / "specs" / "noise2noise.yaml").graph
    assert "grad:noisy" not in graph and "grad:target" not in graph
    assert ("conv1", "x") in graph.pruned
    assert ("loss", "target") in graph.pruned
    assert set(graph.grads) == {f"conv{i}.{r}" for i in range(1, 5) for r in ("weight", "bias")}
    assert nx.is_directed_acyclic_graph(graph.dag)


def test_fan_out_gradients_meet_in_an_accumulate_node():
    graph = _compiled(ROOT / "specs" / "skipnet.yaml").graph
    node = graph["grad:enc_act"]
    assert node.kind == "accumulate"
    assert sorted(v for _, v in node.args) == ["grad:enc_act@down.x", "grad:enc_act@skip.b"]
    # the residual's input branch needs no gradient: pruned, not computed
    assert ("denoised", "b") in graph.pruned and "grad:noisy" not in graph


def test_schedule_is_topological_and_runs_forward_first(spec_path):
    compiled = _compiled(spec_path)
    order = compiled.schedule.order
    position = {v: i for i, v in enumerate(order)}
    for u, v in compiled.graph.dag.edges:
        if u in position:
            assert position[u] < position[v]
    kinds = [compiled.graph[v].kind for v in order]
    first_backward = kinds.index("seed")
    assert all(k == "op" for k in kinds[:first_backward])
    assert all(k != "op" for k in kinds[first_backward:])


def _check_no_overlap(compiled: ng.Compiled) -> None:
    plan = compiled.plan
    inplace = set(plan.inplace)
    by_buffer: dict[int, list[str]] = {}
    for key, buffer in plan.slots.items():
        by_buffer.setdefault(buffer, []).append(key)
    for keys in by_buffer.values():
        for a, b in itertools.combinations(keys, 2):
            (a0, a1), (b0, b1) = plan.intervals[a], plan.intervals[b]
            if a1 < b0 or b1 < a0:
                continue
            # the one allowed overlap: a result written over an input it kills
            assert (a, b) in inplace or (b, a) in inplace, (a, plan.intervals[a], b, plan.intervals[b])
            later, earlier = (a, b) if (a, b) in inplace else (b, a)
            assert plan.intervals[earlier][1] == plan.intervals[later][0]
    # and the executor's views agree with the plan: distinct buffers never overlap
    spans = sorted((t.data_ptr(), t.data_ptr() + t.numel() * t.element_size())
                   for t in compiled.executable.buffers if t.numel())
    for (s0, e0), (s1, _) in zip(spans, spans[1:]):
        assert e0 <= s1


@pytest.mark.parametrize("kind", ["train", "infer"])
def test_memory_plan_never_shares_storage_between_live_values(spec_path, kind):
    compiled = _compiled(spec_path, kind)
    _check_no_overlap(compiled)
    assert compiled.plan.planned_bytes < compiled.plan.unshared_bytes


def test_in_place_ops_take_over_the_buffer_they_kill():
    compiled = _compiled(ROOT / "specs" / "noise2noise.yaml")
    pairs = dict(compiled.plan.inplace)
    assert pairs["relu1"] == "conv1"
    assert pairs["denoised"] == "conv4"
    assert pairs["grad:conv3"] == "grad:relu3"  # relu VJP over its output gradient
    values = compiled.executable.values
    assert values["relu1"].data_ptr() == values["conv1"].data_ptr()


def test_weight_gradients_read_the_forwards_column_matrix_kept_alive_for_them():
    """Where one tile holds the batch, a conv's weight gradient reuses the forward's
    im2col matrix: the plan hands it the forward's workspace and keeps that alive until
    then (the overlap check above covers the longer life), and the numbers do not
    change (test_network_parity trains these plans against torch). Without generated
    kernels, so that conv3 unfolds its input too (with them it runs by Winograd)."""
    compiled = _compiled(ROOT / "specs" / "noise2noise.yaml", shape=(4, 3, 32, 32), codegen=False)
    plan, order = compiled.plan, compiled.schedule.order
    kept = [v for v in order if v.endswith(".weight") and plan.workspaces[v].get("col", "").startswith(
        v[len("grad:"):-len(".weight")] + "#")]
    assert kept == ["grad:conv3.weight", "grad:conv2.weight", "grad:conv1.weight"]
    for grad in kept:
        key = plan.workspaces[grad]["col"]
        assert plan.intervals[key] == (order.index(key.split("#")[0]), order.index(grad))
    _check_no_overlap(compiled)
    big = _compiled(ROOT / "specs" / "noise2noise.yaml", shape=(64, 3, 32, 32), codegen=False)
    assert not any(w.get("col", "").split("#")[0] != v for v, w in big.plan.workspaces.items()
                   if "col" in w)


def test_memory_report_states_planned_against_unshared_bytes():
    plan = _compiled(ROOT / "specs" / "noise2noise.yaml").plan
    assert "MiB planned vs" in plan.report() and "without reuse" in plan.report()


def test_steady_state_train_step_allocates_nothing(spec_path):
    spec = ng.load_spec(spec_path)
    prog = ng.compile(spec, SHAPE, optimizer=ng.compiler.spec.OptimizerSpec(lr=0.01, momentum=0.9, weight_decay=1e-4))
    x, t = torch.rand(SHAPE), torch.rand(SHAPE)
    for _ in range(2):
        prog.train_step(x, t)
    compiled = prog.compiled("train", prog.input_shapes(SHAPE))
    pointers = {k: v.data_ptr() for k, v in compiled.executable.values.items()}
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        prog.train_step(x, t)
    allocations = [(e.name, e.cpu_memory_usage) for e in prof.events() if e.cpu_memory_usage > 0]
    assert allocations == []
    assert pointers == {k: v.data_ptr() for k, v in compiled.executable.values.items()}
    assert all(prog.grads[k].data_ptr() == compiled.executable.values[f"grad:{k}"].data_ptr()
               for k in prog.grads)


def test_plans_are_cached_per_shape():
    spec = ng.load_spec(ROOT / "specs" / "noise2noise.yaml")
    prog = ng.compile(spec, SHAPE)
    a = prog.forward(torch.rand(1, 3, 24, 24))
    b = prog.forward(torch.rand(1, 3, 24, 24))
    assert a.shape == b.shape == (1, 3, 24, 24)
    assert len([k for k in prog._cache if k[0] == "infer"]) == 1
    prog.forward(torch.rand(1, 3, 40, 40))
    assert len([k for k in prog._cache if k[0] == "infer"]) == 2


def test_forward_returns_a_copy_unless_given_out():
    spec = ng.load_spec(ROOT / "specs" / "noise2noise.yaml")
    prog = ng.compile(spec, SHAPE)
    x = torch.rand(1, 3, 16, 16)
    first = prog.forward(x)
    kept = first.clone()
    prog.forward(torch.rand(1, 3, 16, 16))
    assert torch.equal(first, kept)
    out = torch.empty(1, 3, 16, 16)
    assert prog.forward(x, out=out) is out and torch.equal(out, kept)


def test_train_step_checks_its_inputs():
    spec = ng.load_spec(ROOT / "specs" / "noise2noise.yaml")
    prog = ng.compile(spec, SHAPE)
    with pytest.raises(ValueError, match="expected 2 input"):
        prog.train_step(torch.rand(SHAPE))
    with pytest.raises(ValueError, match="input 'target' has shape"):
        prog.train_step(torch.rand(SHAPE), torch.rand(2, 3, 8, 8))


TRANSPOSED = """
name: transposed
inputs: {noisy: {channels: 3}, target: {channels: 3}}
nodes:
  down: {op: conv2d, in: noisy, in_channels: 3, out_channels: 8, kernel: 3, stride: 2, padding: 1}
  act:  {op: relu, in: down}
  up:   {op: conv_transpose2d, in: act, in_channels: 8, out_channels: 3, kernel: 3, stride: 2,
         padding: 1, output_padding: 1}
  loss: {op: mse, in: [up, target]}
output: up
loss: loss
"""


def _kernel_classes():
    from n2ngraph.kernels.base import Kernel

    found, todo = set(), [Kernel]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo.extend(cls.__subclasses__())
    return found | set(ng.ops.OPS.values()) | {ng.ops.Op}


def test_running_a_plan_prepares_no_kernel_again(monkeypatch):
    """Every kernel (a conv's mirror inside a transposed conv's too) is prepared once, when
    the executor binds the plan; a run only makes the prepared calls."""
    spec = ng.parse_spec(TRANSPOSED)
    prog = ng.compile(spec, (2, 3, 8, 8), dtype=torch.float64)
    x, t = torch.rand(2, 3, 8, 8, dtype=torch.float64), torch.rand(2, 3, 8, 8, dtype=torch.float64)
    prog.forward(x)  # the inference plan, bound before prepare is forbidden

    def prepare_again(self, *args, **kwargs):
        raise AssertionError(f"{type(self).__name__}.prepare called while running")

    for cls in _kernel_classes():
        if "prepare" in vars(cls):
            monkeypatch.setattr(cls, "prepare", prepare_again)
    for _ in range(2):
        prog.train_step(x, t)
        prog.forward(x)


def test_a_compiled_graph_cannot_be_changed():
    """Passes build new graphs; nobody edits one in place: nodes are frozen, the node map
    is read-only, and the networkx view holds only the edges."""
    import attrs

    graph = _compiled(ROOT / "specs" / "noise2noise.yaml").graph
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        graph["conv1"].shape = (1,)
    with pytest.raises(TypeError):
        graph.nodes["conv1"] = graph["conv2"]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        graph.outputs = ()
    with pytest.raises(nx.NetworkXError):
        graph.dag.add_node("x")
    assert all(not data for _, data in graph.dag.nodes(data=True))
