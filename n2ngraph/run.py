"""``python -m n2ngraph.run SPEC``: the command-line front of n2ngraph.

Modes so far:
  --summary (default)  compile the spec and print its graph, parameters and memory
                       plan, then time a few training steps on synthetic noisy pairs.

Errors in the spec or the options are reported in one line, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from . import SpecError, compile, load_spec


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m n2ngraph.run",
        description="Compile a network spec and run it.",
        epilog="example: python -m n2ngraph.run specs/noise2noise.yaml --summary --steps 50",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", help="network spec (YAML), e.g. specs/noise2noise.yaml")
    p.add_argument("--summary", action="store_true", help="print the compiled program (default)")
    p.add_argument("--steps", type=int, default=20, help="training steps to time (default 20)")
    p.add_argument("--batch", type=int, help="batch size (default: the spec's recipe)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--float64", action="store_true", help="compute in float64")
    return p


def summary(args) -> None:
    spec = load_spec(args.spec)
    recipe = spec.train
    batch = args.batch or recipe.batch
    shape = (batch, spec.inputs[0].channels, recipe.crop, recipe.crop)
    dtype = torch.float64 if args.float64 else torch.float32
    prog = compile(spec, shape, device=args.device, dtype=dtype)
    compiled = prog.compiled("train" if spec.loss else "infer", prog.input_shapes(shape))
    graph = compiled.graph
    n_params = sum(p.numel() for p in prog.params.values())
    print(f"{spec.name}: {len(spec.nodes)} nodes, {len(prog.params)} parameter tensors "
          f"({n_params:,} values), compiled for {tuple(shape)} {str(dtype).split('.')[-1]} "
          f"on {prog.device}")
    for node in spec.nodes:
        if node.name in graph:
            print(f"  {node.name:<12} {node.op.describe():<70} -> {graph.nodes[node.name]['shape']}")
    kinds = [graph.nodes[v]["kind"] for v in compiled.schedule.order]
    print(f"schedule: {kinds.count('op')} forward kernels, {len(kinds) - kinds.count('op')} backward "
          f"({len(graph.graph.get('pruned', ()))} gradients pruned)")
    print(f"memory: {compiled.plan.report()}")
    if not spec.loss or args.steps <= 0:
        return
    gen = torch.Generator().manual_seed(0)
    clean = torch.rand(shape, generator=gen, dtype=dtype)
    noisy = [(clean + 0.1 * torch.randn(shape, generator=gen, dtype=dtype)).to(prog.device)
             for _ in range(2)]
    prog.train_step(*noisy)
    start = time.perf_counter()
    for step in range(args.steps):
        loss = prog.train_step(*noisy)
    elapsed = time.perf_counter() - start
    print(f"{args.steps} training steps on synthetic pairs: {elapsed / args.steps * 1e3:.2f} ms/step, "
          f"{args.steps * batch / elapsed:,.0f} samples/s, final loss {loss:.5f}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        summary(args)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
