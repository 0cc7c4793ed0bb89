"""The oracle: any n2ngraph spec rebuilt from torch.nn modules, run by torch.autograd
and torch.optim.SGD. Not part of the product: the tests compare n2ngraph against it,
and it trains through n2ngraph's own loop so results can be compared side by side:

    python tools/torch_reference.py specs/noise2noise.yaml --run runs/torch-seed [--epochs ...]

Module names are the spec's node names, so ``state_dict`` keys match n2ngraph's and
weights move between the two with ``load_state_dict``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from n2ngraph.spec import OptimizerSpec, Spec  # noqa: E402


class _Add(nn.Module):
    def forward(self, a, b):
        return a + b


def _module(op) -> nn.Module:
    if op.name == "conv2d":
        return nn.Conv2d(op.in_channels, op.out_channels, op.kernel, stride=op.stride,
                         padding=op.padding, dilation=op.dilation, bias=op.bias)
    if op.name == "conv_transpose2d":
        return nn.ConvTranspose2d(op.in_channels, op.out_channels, op.kernel, stride=op.stride,
                                  padding=op.padding, output_padding=op.output_padding,
                                  dilation=op.dilation, bias=op.bias)
    if op.name == "relu":
        return nn.ReLU()
    if op.name == "sigmoid":
        return nn.Sigmoid()
    if op.name == "upsample_nearest":
        return nn.Upsample(scale_factor=op.scale, mode="nearest")
    if op.name == "mse":
        return nn.MSELoss()
    if op.name == "add":
        return _Add()
    raise NotImplementedError(f"no torch.nn counterpart for op {op.name}")


class TorchNet(nn.Module):
    def __init__(self, spec: Spec):
        super().__init__()
        self.spec = spec
        for node in spec.nodes:
            self.add_module(node.name, _module(node.op))

    def values(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        values = dict(zip(self.spec.input_names, inputs))
        for node in self.spec.nodes:
            if all(s in values for s in node.inputs):
                values[node.name] = getattr(self, node.name)(*(values[s] for s in node.inputs))
        return values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.values(x)[self.spec.output]

    def objective(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.values(*inputs)[self.spec.loss]


class _SGDState:
    """n2ngraph's optimizer interface (steps, momentum, state dicts) over torch.optim.SGD."""

    def __init__(self, net: TorchNet, config: OptimizerSpec):
        self.net = net
        self.sgd = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum,
                                   dampening=config.dampening, nesterov=config.nesterov,
                                   weight_decay=config.weight_decay)
        self.steps = 0

    @property
    def momentum(self) -> dict[str, torch.Tensor]:
        found = {}
        for name, p in self.net.named_parameters():
            buf = self.sgd.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                found[name] = buf
        return found

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        for name, p in self.net.named_parameters():
            if name in state.get("momentum", {}):
                self.sgd.state[p]["momentum_buffer"] = state["momentum"][name].clone().to(p)


class TorchModel:
    """The Program interface (train_step, forward, state_dict, optimizer) in torch.nn."""

    def __init__(self, spec: Spec, *, optimizer: OptimizerSpec, seed: int, device="cpu",
                 dtype=torch.float32, init_from=None):
        self.spec = spec
        self.device = torch.device(device)
        self.net = TorchNet(spec).to(device=device, dtype=dtype)
        if init_from is not None:
            self.net.load_state_dict(init_from)
        self.optimizer = _SGDState(self.net, optimizer)

    def train_step(self, *inputs: torch.Tensor) -> float:
        self.optimizer.sgd.zero_grad(set_to_none=True)
        loss = self.net.objective(*inputs)
        loss.backward()
        self.optimizer.sgd.step()
        self.optimizer.steps += 1
        return loss.item()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.net.state_dict().items()}

    def load_state_dict(self, state) -> None:
        self.net.load_state_dict(state)


def main(argv=None) -> int:
    """Trains the torch reference with n2ngraph's loop, data and initial weights."""
    import argparse

    import attrs

    import n2ngraph as ng
    from n2ngraph.train import Run, TrainConfig, prepare_data

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("spec")
    p.add_argument("--run", required=True)
    for name in ("epochs", "batch", "pairs", "seed"):
        p.add_argument(f"--{name}", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--noise", default="gaussian:25")
    p.add_argument("--data")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    spec = ng.load_spec(args.spec)
    config = TrainConfig.from_spec(spec, epochs=args.epochs, batch=args.batch, pairs=args.pairs,
                                   seed=args.seed, lr=args.lr, noise=args.noise, data=args.data)
    optimizer = attrs.evolve(spec.train.optimizer, lr=config.lr)
    # the same initial weights as n2ngraph draws for this seed
    init = ng.compile(spec, None, seed=config.seed).state_dict()
    model = TorchModel(spec, optimizer=optimizer, seed=config.seed, init_from=init)
    run = Run(Path(args.run), spec, Path(args.spec).read_text(), model, config)
    run.create()
    data = prepare_data(config)
    print(f"torch reference: training {spec.name} into {run.dir}; {data.description}")
    run.train(data, progress=not args.no_progress)
    print(f"best validation PSNR {run.best:.2f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
