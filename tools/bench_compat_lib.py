"""``tools/bench_compat``: the course's module API against torch.nn, side by side.

    tools/bench_compat [--pairs 2000] [--rounds 3] [--threads 1] [--batch 4]
                       [--nets 3-12-48-12-3,3-48-48-48-3]

Each net is the course's shape of denoiser, its four channel widths named by the net
(``3-a-b-c-3``): Conv2d(3, a, 3, stride 2, padding 1), ReLU, Conv2d(a, b, 3, stride 2,
padding 1), ReLU, Upsampling(b, c, 3, padding 1), ReLU, Upsampling(c, 3, 3, padding 1),
Sigmoid (an Upsampling is nearest x2 then the conv). One epoch of ``--pairs`` random
32x32 pairs in batches of ``--batch`` is trained three ways, with the seed's recipe
(SGD, its learning rate and momentum, ``specs/noise2noise.yaml``) and MSE:

- **compat**: ``n2ngraph.compat`` as a course student writes it: ``net.forward``,
  ``criterion.forward``, ``optimizer.zero_grad``, ``net.backward(criterion.backward())``,
  ``optimizer.step``;
- **torch.nn**: the same network in torch.nn, run by autograd and torch.optim.SGD;
- **train_step**: n2ngraph's own compiled step (``n2ngraph.compile(spec).train_step``)
  on the same network written as a spec.

All three start from the same weights and read the same tensors, in one process; the
epochs are timed in interleaved rounds whose order rotates, and the median round is
reported (``tools/bench_lib.interleaved``), in samples per second, with each one's
ratio to torch.nn.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_lib import ROOT, interleaved, machine  # noqa: E402

import n2ngraph as ng  # noqa: E402
from n2ngraph import compat  # noqa: E402

NETS = ("3-12-48-12-3", "3-48-48-48-3")
CONTENDERS = ("compat", "torch.nn", "train_step")


def widths(net: str) -> tuple[int, int, int]:
    """(a, b, c) of a net named ``3-a-b-c-3``."""
    parts = net.split("-")
    if len(parts) != 5 or parts[0] != "3" or parts[-1] != "3" or not all(p.isdigit() for p in parts):
        raise SystemExit(f"tools/bench_compat: net {net!r} is not of the form 3-a-b-c-3")
    return tuple(int(p) for p in parts[1:4])


def recipe():
    """The seed's optimizer settings (SGD, lr, momentum), from its spec."""
    return ng.load_spec(ROOT / "specs" / "noise2noise.yaml").train.optimizer


# ---- the three contenders --------------------------------------------------------------

def compat_net(a: int, b: int, c: int) -> compat.Sequential:
    return compat.Sequential(
        compat.Conv2d(3, a, 3, stride=2, padding=1), compat.ReLU(),
        compat.Conv2d(a, b, 3, stride=2, padding=1), compat.ReLU(),
        compat.Upsampling(b, c, 3, padding=1), compat.ReLU(),
        compat.Upsampling(c, 3, 3, padding=1), compat.Sigmoid())


def torch_net(a: int, b: int, c: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, a, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(a, b, 3, stride=2, padding=1), nn.ReLU(),
        nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(b, c, 3, padding=1), nn.ReLU(),
        nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, 3, 3, padding=1), nn.Sigmoid())


def spec_text(a: int, b: int, c: int) -> str:
    """The same network (and the seed's recipe) as an n2ngraph spec."""
    seed = (ROOT / "specs" / "noise2noise.yaml").read_text()
    nodes = (f"nodes:\n"
             f"  conv1: {{op: conv2d, in: noisy, in_channels: 3, out_channels: {a}, kernel: 3, stride: 2, padding: 1}}\n"
             f"  relu1: {{op: relu, in: conv1}}\n"
             f"  conv2: {{op: conv2d, in: relu1, in_channels: {a}, out_channels: {b}, kernel: 3, stride: 2, padding: 1}}\n"
             f"  relu2: {{op: relu, in: conv2}}\n"
             f"  up1: {{op: upsample_nearest, in: relu2, scale: 2}}\n"
             f"  conv3: {{op: conv2d, in: up1, in_channels: {b}, out_channels: {c}, kernel: 3, padding: 1}}\n"
             f"  relu3: {{op: relu, in: conv3}}\n"
             f"  up2: {{op: upsample_nearest, in: relu3, scale: 2}}\n"
             f"  conv4: {{op: conv2d, in: up2, in_channels: {c}, out_channels: 3, kernel: 3, padding: 1}}\n"
             f"  denoised: {{op: sigmoid, in: conv4}}\n"
             f"  loss: {{op: mse, in: [denoised, target]}}\n")
    head, rest = seed.split("nodes:", 1)
    return head + nodes + rest[rest.index("\noutput:") + 1:]


def pairs(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` random 32x32 pairs: two noisy views of the same random patch."""
    gen = torch.Generator().manual_seed(seed)
    clean = torch.rand(count, 3, 32, 32, generator=gen)
    return tuple((clean + 0.1 * torch.randn(clean.shape, generator=gen)).clamp_(0, 1)
                 for _ in range(2))


class Contenders:
    """The three, built for one net from the same weights: ``steps[name](x, t)`` is one
    training step of each."""

    def __init__(self, net: str, batch: int):
        a, b, c = widths(net)
        opt = recipe()
        torch.manual_seed(0)
        self.course = compat_net(a, b, c)
        weights = [p.detach().clone() for p, _ in self.course.param()]
        self.twin = torch_net(a, b, c)
        with torch.no_grad():
            for theirs, ours in zip(self.twin.parameters(), weights, strict=True):
                theirs.copy_(ours)
        self.program = ng.compile(ng.parse_spec(spec_text(a, b, c)), (batch, 3, 32, 32))
        self.program.load_state_dict(dict(zip(self.program.params, weights, strict=True)))
        settings = dict(lr=opt.lr, momentum=opt.momentum, dampening=opt.dampening)
        self.criterion, self.sgd = compat.MSE(), compat.SGD(self.course.param(), **settings)
        self.torch_sgd = torch.optim.SGD(self.twin.parameters(), **settings)
        self.torch_loss = nn.MSELoss()
        self.steps = {"compat": self.course_step, "torch.nn": self.torch_step,
                      "train_step": self.program.train_step}

    def course_step(self, x, t) -> None:
        """The course's loop, as a student writes it."""
        self.criterion.forward(self.course.forward(x), t)
        self.sgd.zero_grad()
        self.course.backward(self.criterion.backward())
        self.sgd.step()

    def torch_step(self, x, t) -> None:
        self.torch_sgd.zero_grad()
        self.torch_loss(self.twin(x), t).backward()
        self.torch_sgd.step()

    def params(self) -> dict[str, list[torch.Tensor]]:
        """Each contender's parameters, in network order (to check they train alike)."""
        return {"compat": [p for p, _ in self.course.param()],
                "torch.nn": [p.detach() for p in self.twin.parameters()],
                "train_step": list(self.program.params.values())}


def epochs(contenders: Contenders, data, batch: int) -> dict:
    """{name: one epoch of that contender over ``data``}."""
    inputs, targets = data

    def epoch(step):
        def run():
            for start in range(0, len(inputs), batch):
                step(inputs[start:start + batch], targets[start:start + batch])
        return run
    return {name: epoch(step) for name, step in contenders.steps.items()}


def bench(net: str, data, args) -> dict[str, float]:
    """Samples per second of each contender: the median of interleaved epochs."""
    contenders = Contenders(net, args.batch)
    warm = (data[0][:3 * args.batch], data[1][:3 * args.batch])  # plans, caches
    for run in epochs(contenders, warm, args.batch).values():
        run()
    timed = epochs(contenders, data, args.batch)
    seconds = interleaved(timed, rounds=args.rounds, steps=1, device="cpu")
    return {name: len(data[0]) / s for name, s in seconds.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="tools/bench_compat", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=2000, help="pairs in an epoch")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3, help="interleaved epochs per contender")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--nets", default=",".join(NETS), help="comma-separated 3-a-b-c-3 names")
    args = p.parse_args(argv)
    if args.pairs < args.batch or args.batch < 1 or args.rounds < 1 or args.threads < 1:
        raise SystemExit("tools/bench_compat: --pairs must be at least --batch, and "
                         "--batch, --rounds and --threads at least 1")
    nets = [n for n in args.nets.split(",") if n]
    for net in nets:
        widths(net)
    torch.set_num_threads(args.threads)
    data = pairs(args.pairs)
    print(f"machine: {machine()}")
    print(f"one epoch of {args.pairs} random 32x32 pairs, batch {args.batch}, the seed's SGD; "
          f"median of {args.rounds} interleaved rounds\n")
    print("| net | " + " | ".join(CONTENDERS) + " | compat / torch.nn | train_step / torch.nn |")
    print("|" + "---|" * (len(CONTENDERS) + 3))
    for net in nets:
        rate = bench(net, data, args)
        cells = " | ".join(f"{rate[n]:,.0f}" for n in CONTENDERS)
        print(f"| {net} | {cells} | {rate['compat'] / rate['torch.nn']:.2f}x | "
              f"{rate['train_step'] / rate['torch.nn']:.2f}x |", flush=True)
    return 0
