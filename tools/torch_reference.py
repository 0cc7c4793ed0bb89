"""The oracle: any n2ngraph spec rebuilt from torch.nn modules, run by torch.autograd
and torch.optim (SGD, Adam). Not part of the product: the tests compare n2ngraph against it,
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

from n2ngraph.compiler.spec import OptimizerSpec, Spec  # noqa: E402


class _Add(nn.Module):
    def forward(self, a, b):
        return a + b


class _Sub(nn.Module):
    def forward(self, a, b):
        return a - b


class _Concat(nn.Module):
    def forward(self, a, b):
        return torch.cat((a, b), dim=1)


class Pad(nn.Module):
    """Zeros, or torch's 'reflect' repeated while the pad is longer than the image can
    mirror ('replicate' for a side of one pixel)."""

    def __init__(self, multiple: int, mode: str = "zeros"):
        super().__init__()
        self.multiple, self.mode = multiple, mode

    def forward(self, x):
        h, w = x.shape[2:]
        if self.mode == "zeros":
            return nn.functional.pad(x, (0, -w % self.multiple, 0, -h % self.multiple))
        for dim, pad in ((2, -h % self.multiple), (3, -w % self.multiple)):
            while pad > 0:
                size = x.shape[dim]
                step = min(pad, size - 1) or 1
                widths = (0, step, 0, 0) if dim == 3 else (0, 0, 0, step)
                x = nn.functional.pad(x, widths, mode="reflect" if size > 1 else "replicate")
                pad -= step
        return x


class _Crop(nn.Module):
    def forward(self, x, like):
        return x[:, :, :like.shape[2], :like.shape[3]]


def _module(op) -> nn.Module:
    if op.name == "conv2d":
        return nn.Conv2d(op.in_channels, op.out_channels, op.kernel, stride=op.stride,
                         padding=op.padding, dilation=op.dilation, groups=op.groups, bias=op.bias)
    if op.name == "conv_transpose2d":
        return nn.ConvTranspose2d(op.in_channels, op.out_channels, op.kernel, stride=op.stride,
                                  padding=op.padding, output_padding=op.output_padding,
                                  groups=op.groups, dilation=op.dilation, bias=op.bias)
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
    if op.name == "sub":
        return _Sub()
    if op.name == "leaky_relu":
        return nn.LeakyReLU(op.negative_slope)
    if op.name == "tanh":
        return nn.Tanh()
    if op.name == "concat":
        return _Concat()
    if op.name == "maxpool2d":
        return nn.MaxPool2d(op.kernel, stride=op.stride, padding=op.padding)
    if op.name == "avgpool2d":
        return nn.AvgPool2d(op.kernel, stride=op.stride, padding=op.padding)
    if op.name == "l1":
        return nn.L1Loss()
    if op.name == "pad":
        return Pad(op.multiple, op.mode)
    if op.name == "crop":
        return _Crop()
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


# n2ngraph's optimizer buffer names -> torch.optim's per-parameter state keys
_BUFFERS = {"momentum": "momentum_buffer", "exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq",
            "max_exp_avg_sq": "max_exp_avg_sq"}


def torch_optimizer(params, config: OptimizerSpec) -> torch.optim.Optimizer:
    """torch.optim's optimizer for a recipe (Adam on its single-tensor path, the one
    n2ngraph reproduces op for op)."""
    if config.name == "adam":
        return torch.optim.Adam(params, lr=config.lr, betas=config.betas, eps=config.eps,
                                weight_decay=config.weight_decay, amsgrad=config.amsgrad,
                                foreach=False)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                           dampening=config.dampening, nesterov=config.nesterov,
                           weight_decay=config.weight_decay)


class _TorchOptimizer:
    """n2ngraph's optimizer interface (step, set_lr, lr, steps, state dicts) over
    torch.optim."""

    def __init__(self, net: TorchNet, config: OptimizerSpec):
        self.net = net
        self.torch = torch_optimizer(net.parameters(), config)
        self.steps = 0

    def step(self) -> None:
        self.torch.step()
        self.steps += 1

    @property
    def lr(self) -> float:
        return self.torch.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        self.set_lr(value)

    def set_lr(self, value: float) -> None:
        for group in self.torch.param_groups:
            group["lr"] = value

    def state_dict(self) -> dict:
        tensors = {}
        for name, p in self.net.named_parameters():
            for ours, theirs in _BUFFERS.items():
                buf = self.torch.state.get(p, {}).get(theirs)
                if buf is not None:
                    tensors[f"{ours}.{name}"] = buf.clone()
        return {"steps": self.steps, "tensors": tensors}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        for name, p in self.net.named_parameters():
            for ours, theirs in _BUFFERS.items():
                if f"{ours}.{name}" in state["tensors"]:
                    self.torch.state[p][theirs] = state["tensors"][f"{ours}.{name}"].clone().to(p)
            if self.steps and isinstance(self.torch, torch.optim.Adam):
                self.torch.state[p]["step"] = torch.tensor(float(self.steps))


class TorchModel:
    """The Program interface (train_step, forward, state_dict, optimizer) in torch.nn."""

    def __init__(self, spec: Spec, *, optimizer: OptimizerSpec, seed: int, device="cpu",
                 dtype=torch.float32, init_from=None, clip_grad_norm: float | None = None):
        self.spec = spec
        self.device = torch.device(device)
        self.net = TorchNet(spec).to(device=device, dtype=dtype)
        if init_from is not None:
            self.net.load_state_dict(init_from)
        self.optimizer = _TorchOptimizer(self.net, optimizer)
        self.clip_grad_norm = clip_grad_norm

    def train_step(self, *inputs: torch.Tensor) -> float:
        self.optimizer.torch.zero_grad(set_to_none=True)
        loss = self.net.objective(*inputs)
        loss.backward()
        if self.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.clip_grad_norm)
        self.optimizer.step()
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

    import n2ngraph as ng
    from n2ngraph.app.config import TrainConfig
    from n2ngraph.app.train import Run, prepare_data

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("spec")
    p.add_argument("--run", required=True)
    for name in ("epochs", "batch", "pairs", "seed"):
        p.add_argument(f"--{name}", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--noise", default="gaussian:25")
    p.add_argument("--data")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--float64", action="store_true", help="compute in float64")
    args = p.parse_args(argv)
    dtype = torch.float64 if args.float64 else torch.float32
    spec = ng.load_spec(args.spec)
    config = TrainConfig.from_spec(spec, epochs=args.epochs, batch=args.batch, pairs=args.pairs,
                                   seed=args.seed, lr=args.lr, noise=args.noise, data=args.data)
    recipe = config.recipe
    # the same initial weights as n2ngraph draws for this seed
    init = ng.compile(spec, None, seed=recipe.seed, dtype=dtype).state_dict()
    model = TorchModel(spec, optimizer=recipe.optimizer, seed=recipe.seed,
                       init_from=init, clip_grad_norm=recipe.clip_grad_norm, dtype=dtype)
    run = Run(Path(args.run), spec, Path(args.spec).read_text(), model, config, dtype=dtype)
    run.create()
    data = prepare_data(config)
    print(f"torch reference: training {spec.name} into {run.dir}; {data.description}")
    run.train(data, progress=not args.no_progress)
    print(f"best validation PSNR {run.best:.2f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
