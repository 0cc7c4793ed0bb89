"""``tools/bench``: n2ngraph against PyTorch eager and torch.compile, side by side.

    tools/bench [SPEC ...] [--batches 4,64,256] [--image 512] [--rounds 7] [--steps 20]
                [--threads N] [--device cpu|cuda] [--no-compile] [--no-memory]
                [--ops [--schedule-of cpu|cuda]] [--unfold input|output|none] [--no-codegen]

What it measures, for each spec (default: ``specs/noise2noise.yaml``):

- **train step** (forward, backward, SGD update, the loss read back as a Python
  float) at each batch size, on the spec's crop size: n2ngraph's compiled
  ``Program.train_step``; *eager*, the same network in torch.nn run by autograd and
  torch.optim (``tools/torch_reference.py``); *compile*, that same step function
  (zero_grad, forward, backward, optimizer step) under ``torch.compile``.
- **inference** on one ``--image`` x ``--image`` photo.
- on a CPU with a C compiler also *n2ngraph no-codegen*: the same program with
  ``codegen=False``, tensor-op kernels only (``--no-codegen`` leaves out the generated
  ones everywhere, that column too).
- on a GPU (``--device cuda``) also *n2ngraph launched*: n2ngraph without CUDA graphs,
  every kernel launched from Python; and every contender in float32 with TF32 off
  (PyTorch's convolutions would otherwise use TF32 by default, n2ngraph's GEMMs not).
- **tensor ops per training step** (``--ops``, instead of the timing, on the CPU): the
  tensor ops one step sends to a backend, views left out, for n2ngraph and eager (a
  conv and its backward count as one op each, whatever the library runs). On a GPU a
  replayed step launches the kernels of n2ngraph's ops and eager's step launches its
  ops one by one from Python, so at small batches these counts, not the arithmetic,
  set the pace. ``--schedule-of cuda`` counts on the CPU the plan n2ngraph
  builds for a GPU (the kernels ``compiler/lower.py`` chooses there: untiled convolutions).
- ``--unfold input|output|none`` sets every conv2d of n2ngraph's network to unfold that
  side (``ops/conv2d.py``), instead of each conv's own choice: to compare schedules.
- **memory** at the largest batch: for each contender, in a fresh child process, the
  peak resident set size while building the model and running 3 training steps, less
  the resident size of the process with torch and its data ready (the peak is reset
  through /proc/self/clear_refs first), on a GPU the peak of the GPU memory PyTorch's
  allocator handed out; and n2ngraph's planned bytes (activations, gradients and
  workspaces).

Machines are noisy, so only numbers measured side by side count: every contender runs
in the same process, on the same tensors, with the same initial weights; the timing
rounds are interleaved (each round times ``--steps`` steps of every contender, in an
order that rotates from round to round), and the median round is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import attrs
import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import n2ngraph as ng  # noqa: E402
from n2ngraph.kernels.table import GPU_TILE, codegen_runs  # noqa: E402
from torch_reference import TorchModel  # noqa: E402

CONTENDERS = ("n2ngraph", "eager", "compile")
LAUNCHED = "n2ngraph launched"  # on a GPU: n2ngraph without CUDA graphs, each kernel from Python
NO_CODEGEN = "n2ngraph no-codegen"  # on a CPU: n2ngraph with tensor-op kernels only


# ---- the contenders --------------------------------------------------------------------

def _pair(spec, batch: int, size: int, device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, spec.inputs[0].channels, size, size)
    clean = torch.rand(shape, generator=gen)
    noisy = [(clean + 0.1 * torch.randn(shape, generator=gen)).clamp_(0, 1).to(device)
             for _ in range(2)]
    return noisy


def build(name: str, spec, device, codegen: bool = True) -> object:
    """A model with ``train_step(x, t) -> float`` and ``forward(x)``, all of them
    starting from the weights n2ngraph draws for the spec's seed."""
    program = ng.compile(spec, None, device=device, cuda_graphs=name != LAUNCHED,
                         codegen=codegen and name != NO_CODEGEN)
    if name in ("n2ngraph", LAUNCHED, NO_CODEGEN):
        return program
    model = TorchModel(spec, optimizer=spec.train.optimizer, seed=spec.train.seed,
                       device=device, init_from=program.state_dict())
    if name == "eager":
        return model
    return _Compiled(model)


class _Compiled:
    """The eager step, every part of it handed to torch.compile."""

    def __init__(self, model: TorchModel):
        self.model = model
        net, sgd = model.net, model.optimizer.torch

        def step(x, t):
            sgd.zero_grad(set_to_none=True)
            loss = net.objective(x, t)
            loss.backward()
            sgd.step()
            return loss.detach()

        self._step = torch.compile(step)
        self._forward = torch.compile(net.forward)

    def train_step(self, x, t) -> float:
        return self._step(x, t).item()

    def forward(self, x):
        with torch.no_grad():
            return self._forward(x)


# ---- timing ----------------------------------------------------------------------------

def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved(calls: dict, *, rounds: int, steps: int, device) -> dict[str, float]:
    """Median seconds per call of each entry, timed in interleaved, rotating rounds."""
    names = list(calls)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            call = calls[name]
            _sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                call()
            _sync(device)
            times[name].append((time.perf_counter() - start) / steps)
    return {n: statistics.median(t) for n, t in times.items()}


def bench_train(spec, batch: int, names, args) -> dict[str, float]:
    x, t = _pair(spec, batch, spec.train.crop, args.device)
    models = {n: build(n, spec, args.device, not args.no_codegen) for n in names}
    calls = {n: (lambda m=m: m.train_step(x, t)) for n, m in models.items()}
    for call in calls.values():  # warm-up: compiles, plans, caches
        for _ in range(3):
            call()
    per_step = interleaved(calls, rounds=args.rounds, steps=args.steps, device=args.device)
    return {n: batch / s for n, s in per_step.items()}


class KernelCount(TorchDispatchMode):
    """Counts the tensor ops that reach a backend, views left out (they launch nothing)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += not func.is_view
        return func(*args, **(kwargs or {}))


def count_ops(spec, batch: int, args) -> dict[str, int]:
    """Tensor ops (views left out) in one training step of n2ngraph and of eager, on the
    CPU, where autograd runs the backward on the calling thread (on a GPU it has a
    thread of its own, which a dispatch mode does not see)."""
    x, t = _pair(spec, batch, spec.train.crop, "cpu")
    counts = {}
    codegen = not args.no_codegen and args.schedule_of != "cuda"  # a GPU runs none
    for name in ("n2ngraph", "eager"):
        model = build(name, spec, "cpu", codegen)
        for _ in range(3):
            model.train_step(x, t)
        with KernelCount() as counter:
            model.train_step(x, t)
        counts[name] = counter.count
    return counts


def bench_inference(spec, size: int, names, args) -> dict[str, float]:
    (x, _) = _pair(spec, 1, size, args.device)
    models = {n: build(n, spec, args.device, not args.no_codegen) for n in names}
    calls = {n: (lambda m=m: m.forward(x)) for n, m in models.items()}
    with torch.no_grad():
        for call in calls.values():
            for _ in range(2):
                call()
        per_call = interleaved(calls, rounds=args.rounds, steps=max(args.steps // 4, 2),
                               device=args.device)
    return {n: s * 1e3 for n, s in per_call.items()}


# ---- memory, one child process per contender ------------------------------------------

def _status_mib(field: str) -> float:
    """VmRSS (resident now) or VmHWM (peak since the last reset) from /proc, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    """Starts the peak resident size (VmHWM) over from the current one (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def load(spec_path: str, unfold: str | None = None, schedule_of: str | None = None):
    """The spec, its conv2d nodes' schedule changed where asked (eager's network is the
    same): every conv unfolding side ``unfold``; with ``schedule_of='cuda'``, untiled,
    the tiles ``compiler/lower.py`` gives them on a GPU, to run on this device."""
    spec = ng.load_spec(spec_path)
    changes = {"unfold": unfold} if unfold else {}
    if schedule_of is not None and torch.device(schedule_of).type != "cpu":
        changes["tile"] = GPU_TILE
    if not changes:
        return spec
    nodes = tuple(attrs.evolve(n, op=attrs.evolve(n.op, **changes)) if n.op.name == "conv2d"
                  else n for n in spec.nodes)
    return attrs.evolve(spec, nodes=nodes)


def memory_child(spec_path: str, name: str, batch: int, steps: int, device: str,
                 unfold: str | None = None, codegen: bool = True) -> dict:
    spec = load(spec_path, unfold)
    x, t = _pair(spec, batch, spec.train.crop, device)
    # the baseline: a process with torch, the data and one small throwaway step ready
    ng.compile(spec, (1, spec.inputs[0].channels, 8, 8), device=device).train_step(
        x[:1, :, :8, :8], t[:1, :, :8, :8])
    gpu = torch.device(device).type == "cuda"
    if gpu:  # the GPU memory the caching allocator hands out
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        _reset_peak()
        before = _status_mib("VmRSS")
    model = build(name, spec, device, codegen)
    for _ in range(steps):
        model.train_step(x, t)
    peak = torch.cuda.max_memory_allocated() / 2**20 if gpu else _status_mib("VmHWM")
    result = {"peak_added_mib": peak - before}
    if name == "n2ngraph":  # every training plan the steps used (one per batch part)
        plans = [c.plan for c in model.compilations if c.kind == "train"]
        result["planned_mib"] = sum(p.planned_bytes for p in plans) / 2**20
    return result


def bench_memory(spec_path: str, batch: int, names, args) -> dict[str, dict]:
    found = {}
    for name in names:
        command = [sys.executable, str(Path(__file__).resolve().parent / "bench"), "--memory-child", name,
                   "--batches", str(batch), "--device", args.device, spec_path,
                   *(["--unfold", args.unfold] if args.unfold else []),
                   *(["--no-codegen"] if args.no_codegen else [])]
        env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"memory run of {name} failed:\n{done.stderr[-2000:]}")
        found[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


# ---- the report ------------------------------------------------------------------------

def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, python {platform.python_version()}")


def _ratio(a: float, b: float | None) -> str:
    return f"{a / b:.2f}x" if b else "-"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="tools/bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("specs", nargs="*", default=[str(ROOT / "specs" / "noise2noise.yaml")])
    p.add_argument("--batches", default="4,64,256")
    p.add_argument("--image", type=int, default=512, help="inference photo size (0: skip)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=20, help="steps per contender per round")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--no-timing", action="store_true", help="only the memory measurement")
    p.add_argument("--ops", action="store_true",
                   help="count the tensor ops of a training step instead of timing (CPU)")
    p.add_argument("--schedule-of", choices=("cpu", "cuda"),
                   help="with --ops: count n2ngraph's plan as built for this device")
    p.add_argument("--unfold", choices=("input", "output", "none"),
                   help="every conv2d of n2ngraph unfolding this side (default: each its own)")
    p.add_argument("--no-codegen", action="store_true",
                   help="n2ngraph with tensor-op kernels only (no generated ones)")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",") if b]
    if args.memory_child:
        print(json.dumps(memory_child(args.specs[0], args.memory_child, batches[0], 3, args.device,
                                      args.unfold, not args.no_codegen)))
        return 0
    if args.ops:
        return print_ops(batches, args)
    names = [n for n in CONTENDERS if not (args.no_compile and n == "compile")]
    if not args.no_codegen and codegen_runs(args.device):
        names.insert(1, NO_CODEGEN)
    if torch.device(args.device).type == "cuda":
        names.insert(1, LAUNCHED)
        # fp32 for every contender: PyTorch's convolutions would otherwise run in TF32
        # (10-bit mantissas) by default while every matmul, n2ngraph's too, stays fp32
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    gpu = f" ({torch.cuda.get_device_name()}, fp32: TF32 off)" if args.device.startswith("cuda") else ""
    print(f"machine: {machine()}, device {args.device}{gpu}")
    print(f"median of {args.rounds} interleaved rounds of {args.steps} steps each\n")
    for spec_path in args.specs:
        spec = load(spec_path, args.unfold)
        header = "| workload | " + " | ".join(names) + " | n2ngraph / eager | n2ngraph / compile |"
        print(f"### {spec.name}: samples/s (train step, {spec.train.crop}x{spec.train.crop}), "
              f"ms (inference)\n")
        print(header)
        print("|" + "---|" * (len(names) + 3))
        for batch in [] if args.no_timing else batches:
            rate = bench_train(spec, batch, names, args)
            cells = " | ".join(f"{rate[n]:,.0f}" for n in names)
            print(f"| train bs {batch} | {cells} | {_ratio(rate['n2ngraph'], rate['eager'])} | "
                  f"{_ratio(rate['n2ngraph'], rate.get('compile'))} |", flush=True)
        if args.image and not args.no_timing:
            ms = bench_inference(spec, args.image, names, args)
            cells = " | ".join(f"{ms[n]:.1f} ms" for n in names)
            print(f"| inference {args.image}x{args.image} | {cells} | "
                  f"{_ratio(ms['eager'], ms['n2ngraph'])} | "
                  f"{_ratio(ms['compile'], ms['n2ngraph']) if 'compile' in ms else '-'} |",
                  flush=True)
        if not args.no_memory:
            batch = max(batches)
            mem = bench_memory(spec_path, batch, names, args)
            what = "GPU memory" if torch.device(args.device).type == "cuda" else "RSS"
            print(f"\nmemory at batch {batch}: peak {what} added by training steps: " +
                  ", ".join(f"{n} {mem[n]['peak_added_mib']:.1f} MiB" for n in names) +
                  f"; n2ngraph planned {mem['n2ngraph']['planned_mib']:.1f} MiB")
        print()
    return 0


def print_ops(batches, args) -> int:
    print(f"machine: {machine()}, device cpu, n2ngraph's plan for {args.schedule_of or 'cpu'}")
    for spec_path in args.specs:
        spec = load(spec_path, args.unfold, args.schedule_of)
        print(f"\n### {spec.name}: tensor ops per training step, views left out "
              f"({spec.train.crop}x{spec.train.crop})\n")
        print("| workload | n2ngraph | eager | eager / n2ngraph |\n|---|---|---|---|")
        for batch in batches:
            ops = count_ops(spec, batch, args)
            print(f"| train bs {batch} | {ops['n2ngraph']} | {ops['eager']} | "
                  f"{_ratio(ops['eager'], ops['n2ngraph'])} |", flush=True)
    return 0
