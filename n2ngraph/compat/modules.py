"""The seed's modules: each describes itself as spec nodes, n2ngraph compiles them
(see the package docstring)."""

from __future__ import annotations

import numbers
from typing import Iterable, Sequence

import attrs
import torch

from ..ops import Op
from ..ops.activations import Relu as _ReluOp
from ..ops.activations import Sigmoid as _SigmoidOp
from ..ops.conv2d import Conv2d as _Conv2dOp
from ..ops.conv_transpose import ConvTranspose2d as _ConvTransposeOp
from ..ops.losses import MSE as _MSEOp
from ..ops.upsample import UpsampleNearest as _UpsampleOp
from ..runtime.optim import SGD as _SGDUpdate
from ..runtime.program import Program
from ..compiler.spec import InputSpec, NodeSpec, OptimizerSpec, Spec, TrainSpec
from ..errors import SpecError


class Module:
    """The seed's interface: ``forward(*inputs)``, ``backward(*grad_outputs)`` (returns the
    gradient w.r.t. the input), ``param()`` (a list of (parameter, gradient) pairs)."""

    def forward(self, *inputs):
        raise NotImplementedError

    def backward(self, *grad_outputs):
        raise NotImplementedError

    def param(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return []

    def zero_grad(self) -> None:
        for _, grad in self.param():
            grad.zero_()

    def __call__(self, *inputs):
        return self.forward(*inputs)


# ---- compiling a module -----------------------------------------------------------------

class _Nodes:
    """Spec nodes collected for one network, and the module owning each parameter."""

    def __init__(self) -> None:
        self.nodes: list[NodeSpec] = []
        self.owners: dict[str, tuple[Module, str]] = {}  # 'net.0.weight' -> (module, 'weight')

    def add(self, name: str, op: Op, source: str, owner: Module | None = None) -> str:
        self.nodes.append(NodeSpec(name=name, op=op, inputs=(source,)))
        for role in op.params():
            self.owners[f"{name}.{role}"] = (owner, role)
        return name


@attrs.define
class _Build:
    """A module's spec and the program compiled from it, with what that program was
    built on: the owners' tensors (and where their data was), the input dtype last
    checked against them. A call finding all of it unchanged skips the checks."""

    channels: int
    spec: Spec
    owners: dict[str, tuple[Module, str]]
    program: Program | None = None
    held: list[tuple[Module, str, torch.Tensor, int]] = attrs.Factory(list)
    input_dtype: torch.dtype | None = None
    grads: list[tuple[Module, str, torch.Tensor]] = attrs.Factory(list)
    """(owner, 'grad_weight', the program's gradient): what a backward adds where."""

    def current(self, x: torch.Tensor) -> bool:
        """Whether the program reads the owners' tensors as they are now and ``x``'s
        dtype was checked against them: no tensor assigned, no ``.data`` replaced."""
        if self.program is None or x.dtype is not self.input_dtype:
            return False
        for owner, role, tensor, pointer in self.held:
            if getattr(owner, role) is not tensor or tensor.data_ptr() != pointer:
                return False
        return True

    def adopt(self, x: torch.Tensor) -> None:
        """Checks the owners' tensors and ``x``'s dtype, and compiles a program over
        those tensors unless the current one reads them already."""
        sources = {key: getattr(owner, role) for key, (owner, role) in self.owners.items()}
        dtype = _dtype(sources.values(), x)
        if sources and x.dtype != dtype:
            raise RuntimeError(f"the input is {x.dtype} but the parameters are {dtype}: convert "
                               f"one to the other (torch refuses the mix too)")
        held = [(owner, role, sources[key], sources[key].data_ptr())
                for key, (owner, role) in self.owners.items()]
        same = len(held) == len(self.held) and all(
            t is t0 and ptr == ptr0 for (_, _, t, ptr), (_, _, t0, ptr0) in zip(held, self.held))
        if self.program is None or self.program.dtype != dtype or not same:
            params = {k: t.detach() for k, t in sources.items()}  # an nn.Parameter's data
            self.program = Program(self.spec, dtype=dtype, params=params)
            self.grads = [(owner, f"grad_{role}", self.program.grads[key])
                          for key, (owner, role) in self.owners.items()]
            self.held = held
        self.input_dtype = x.dtype


def _one(tensors: Sequence, what: str) -> torch.Tensor:
    """The one tensor given, as data: a tensor that requires grad is read through
    ``detach()`` (same storage, nothing recorded), so the caller's stays usable."""
    if len(tensors) != 1 or not isinstance(tensors[0], torch.Tensor):
        raise TypeError(f"{what} takes one tensor, got {len(tensors)} argument(s)")
    return tensors[0].detach()


def _dtype(tensors: Iterable[torch.Tensor], x: torch.Tensor) -> torch.dtype:
    """The parameters' dtype, or for a module without any, the input's (if floating)."""
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) > 1:
        raise ValueError(f"parameters of one network must share a dtype, got {sorted(map(str, dtypes))}")
    if dtypes:
        return dtypes.pop()
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


class _Compiled(Module):
    """A module n2ngraph compiles: it only says which spec nodes it is (``_emit``)."""

    _build: _Build | None = None
    _input: torch.Tensor | None = None
    _origin: Sequential | None = None  # the Sequential whose plan last ran this module
    _given: int = 4  # the rank of the last input, before _as_batch

    def _emit(self, nodes: _Nodes, name: str, source: str) -> str:
        """Adds this module's nodes, reading value ``source``; returns its output value."""
        raise NotImplementedError

    def _program(self, x: torch.Tensor) -> tuple[Program, _Build]:
        if x.dim() != 4:
            raise ValueError(f"expected an (N, C, H, W) tensor, got shape {tuple(x.shape)}")
        build = self._build
        if build is None or build.channels != x.shape[1]:
            nodes = _Nodes()
            output = self._emit(nodes, "net", "x")
            spec = Spec(name=type(self).__name__, inputs=(InputSpec("x", int(x.shape[1])),),
                        nodes=tuple(nodes.nodes), output=output, loss=None, train=TrainSpec())
            build = self._build = _Build(int(x.shape[1]), spec, nodes.owners)
        if not build.current(x):
            build.adopt(x)
        return build.program, build

    def forward(self, *inputs):
        return self._forward(_one(inputs, "forward"))

    def backward(self, *grad_outputs):
        return self._backward(_one(grad_outputs, "backward"))

    def _as_batch(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as the (N, C, H, W) tensor the plans take: a (C, H, W) one is a batch of
        one, as torch has it (elementwise modules take any shape: ``_Elementwise``)."""
        if x.dim() == 3:
            return x.unsqueeze(0)
        if x.dim() != 4:
            raise ValueError(f"expected an (N, C, H, W) or (C, H, W) tensor, got shape {tuple(x.shape)}")
        return x

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = self._as_batch(x)
        program, _ = self._program(batch)
        self._input, self._origin, self._given = batch, None, x.dim()
        inputs = [batch]
        # where a backward ran at this shape, one will likely follow: keep what it reads
        y = program.vjp_forward(inputs) if program.has_vjp_plan(inputs) else program.forward(batch)
        return y if batch is x else self._unbatch(y, x)

    def _unbatch(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The plan's 4-D output in the form the caller's ``x`` had."""
        return y.squeeze(0)

    def _backward(self, grad: torch.Tensor) -> torch.Tensor:
        x = self._remembered_input()
        program, build = self._program(x)
        batched = self._given != 4
        grad_input = program.vjp([x], self._as_batch(grad) if batched else grad)
        if build.grads:  # accumulated as torch does, until zero_grad
            torch._foreach_add_([getattr(owner, name) for owner, name, _ in build.grads],
                                [computed for _, _, computed in build.grads])
        return self._unbatch(grad_input, grad) if batched else grad_input

    def _remembered_input(self) -> torch.Tensor:
        """The input of the last forward; for a module a Sequential ran inside its own
        plan, found by running the Sequential's children one by one (the course-style
        backward chain, each child's ``backward`` called by hand)."""
        if self._input is None and self._origin is not None:
            self._origin._replay()
        if self._input is None:
            raise RuntimeError("backward() before forward(): no input to differentiate at")
        return self._input


def _square(value, argument: str) -> int:
    """An upsampling factor as an int or an (h, w) pair; n2ngraph's upsampling is square."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"{argument}={value!r}: n2ngraph supports square sizes only")
        value = value[0]
    return value


def _integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _size(value, argument: str, words: tuple[str, ...] = ()):
    """A conv size as torch takes it: an int or an (h, w) pair of ints (numpy's too),
    or for padding one of ``words``; anything else refused, naming the argument."""
    if isinstance(value, str) and value in words:
        return value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(map(_integer, value)):
        return tuple(map(int, value))
    if _integer(value):
        return int(value)
    expected = "an int or a pair (h, w) of ints" + "".join(f" or {w!r}" for w in words)
    raise ValueError(f"{argument}={value!r}: expected {expected}")


_SIZES = ("kernel", "stride", "padding", "dilation", "output_padding")  # the ops' names
_ARGUMENTS = {"kernel": "kernel_size"}  # op attribute -> torch's argument, where they differ


def _conv_op(op_class, **arguments) -> Op:
    """A conv op from torch's arguments (under the op's names): sizes as ints or pairs
    (a conv's padding also 'same' or 'valid'); a bad one is a ValueError naming torch's
    argument and the value given."""
    given = dict(arguments)
    for name in _SIZES:
        if name in given:
            words = ("same", "valid") if name == "padding" and op_class is _Conv2dOp else ()
            given[name] = _size(given[name], _ARGUMENTS.get(name, name), words)
    try:
        return op_class(**given)
    except SpecError as e:
        raise ValueError(f"{_ARGUMENTS.get(e.field, e.field)}={arguments.get(e.field)!r}: "
                         f"{e.problem}") from None


class _Parametrised(_Compiled):
    """Owns ``weight`` (and ``bias``) shaped by its op, drawn like torch.nn's default
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) from torch's global generator, and their
    gradients ``grad_weight`` (``grad_bias``), zeros of the same shape and dtype."""

    def _make_params(self, op: Op) -> None:
        bound = op.fans()[0] ** -0.5
        self.bias = None
        for role, shape in op.params().items():
            setattr(self, role, torch.empty(shape).uniform_(-bound, bound))

    def _in_dtype(self, dtype: torch.dtype | None) -> None:
        """The parameters converted to torch's ``dtype=`` argument, where given."""
        if dtype is None:
            return
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype={dtype}: n2ngraph computes in float32 or float64")
        self.weight = self.weight.to(dtype)
        self.bias = self.bias.to(dtype) if self.bias is not None else None

    def __setattr__(self, name, value):
        """A tensor assigned as ``weight``/``bias`` that the gradient no longer fits
        (another shape or dtype: ``conv.weight = w.double()``) gets a fresh gradient."""
        super().__setattr__(name, value)
        if name in ("weight", "bias"):
            grad = getattr(self, f"grad_{name}", None)
            if value is None:
                super().__setattr__(f"grad_{name}", None)
            elif (grad is None or grad.shape != value.shape or grad.dtype != value.dtype
                  or grad.device != value.device):
                super().__setattr__(f"grad_{name}", torch.zeros_like(value))

    def _emit(self, nodes, name, source):
        return nodes.add(name, self.op, source, owner=self)

    def param(self):
        return [_Pair(self, role) for role in ("weight", "bias") if getattr(self, role) is not None]


class _Pair(tuple):
    """A (parameter, gradient) pair that remembers the module and role it was read from,
    so that ``SGD`` can read the module's current tensors at each step."""

    def __new__(cls, owner: Module, role: str):
        pair = super().__new__(cls, (getattr(owner, role), getattr(owner, f"grad_{role}")))
        pair.owner, pair.role, pair.grad_role = owner, role, f"grad_{role}"
        return pair


# ---- the modules ------------------------------------------------------------------------

class Conv2d(_Parametrised):
    """torch's Conv2d: weight (out, in / groups, kh, kw); ``forward(x)`` is conv2d(x,
    weight, bias). Sizes are ints or (h, w) pairs, ``padding`` also "same" or "valid".
    The seed's positional order (``bias`` after ``dilation``); torch's ``groups``,
    ``padding_mode`` ("zeros"), ``device`` (the CPU) and ``dtype`` by keyword."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 bias=True, groups=1, padding_mode="zeros", device=None, dtype=None):
        _torch_only(padding_mode=padding_mode, device=device)
        self.op = _conv_op(_Conv2dOp, in_channels=in_channels, out_channels=out_channels,
                           kernel=kernel_size, stride=stride, padding=padding, dilation=dilation,
                           groups=groups, bias=bias)
        self._make_params(self.op)
        self._in_dtype(dtype)


class TransposeConv2d(_Parametrised):
    """torch's ConvTranspose2d: weight (in, out / groups, kh, kw), with output_padding;
    sizes as ints or (h, w) pairs."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, dilation=1, bias=True, groups=1):
        self.op = _conv_op(_ConvTransposeOp, in_channels=in_channels, out_channels=out_channels,
                           kernel=kernel_size, stride=stride, padding=padding,
                           output_padding=output_padding, dilation=dilation, groups=groups,
                           bias=bias)
        self._make_params(self.op)


class ConvTranspose2d(TransposeConv2d):
    """TransposeConv2d under torch's name, with torch's signature (``padding_mode=
    "zeros"`` only; ``dtype`` float32 or float64)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, padding_mode="zeros",
                 device=None, dtype=None):
        _torch_only(padding_mode=padding_mode, device=device)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding,
                         output_padding, dilation, bias, groups)
        self._in_dtype(dtype)


def _torch_only(padding_mode="zeros", device=None) -> None:
    """torch arguments n2ngraph's modules take only at their default."""
    if padding_mode != "zeros":
        raise ValueError(f"padding_mode={padding_mode!r}: n2ngraph pads with zeros only")
    if device is not None and torch.device(device).type != "cpu":
        raise ValueError(f"device={device!r}: the compat modules run on the CPU")


class NearestUpsampling(_Compiled):
    """Every pixel repeated ``scale_factor`` times along height and width."""

    def __init__(self, scale_factor=2):
        self.op = _UpsampleOp(_square(scale_factor, "scale_factor"))

    def _emit(self, nodes, name, source):
        return nodes.add(name, self.op, source)


class Upsample(NearestUpsampling):
    """torch's Upsample, for what n2ngraph has: ``mode="nearest"`` by an integer
    ``scale_factor`` (an int, an integral float, or an equal pair)."""

    def __init__(self, size=None, scale_factor=None, mode="nearest", align_corners=None,
                 recompute_scale_factor=None):
        if size is not None or scale_factor is None:
            raise ValueError("Upsample: n2ngraph supports scale_factor only, not size")
        if mode != "nearest" or align_corners:
            raise ValueError(f"mode={mode!r}: n2ngraph's Upsample is 'nearest' only")
        factor = _square(scale_factor, "scale_factor")
        if isinstance(factor, bool) or float(factor) != int(factor) or int(factor) < 1:
            raise ValueError(f"scale_factor={scale_factor!r}: a positive integer is needed")
        super().__init__(int(factor))


class Upsampling(Conv2d):
    """The seed's upsampling layer: nearest upsampling, then a convolution that learns to
    fill in the detail. Takes Conv2d's arguments (and owns its weight and bias) plus
    ``scale_factor``."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 bias=True, scale_factor=2, groups=1):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, bias,
                         groups)
        self.upsample = _UpsampleOp(_square(scale_factor, "scale_factor"))

    def _emit(self, nodes, name, source):
        upsampled = nodes.add(f"{name}.upsample", self.upsample, source)
        return nodes.add(f"{name}.conv", self.op, upsampled, owner=self)


class _Elementwise(_Compiled):
    """A module applied to each element alone: any shape, run as one row of elements."""

    def _as_batch(self, x):
        return x if x.dim() == 4 else x.reshape(1, 1, 1, -1)

    def _unbatch(self, y, x):
        return y.reshape(x.shape)


class ReLU(_Elementwise):
    def _emit(self, nodes, name, source):
        return nodes.add(name, _ReluOp(), source)


class Sigmoid(_Elementwise):
    def _emit(self, nodes, name, source):
        return nodes.add(name, _SigmoidOp(), source)


def _compilable(module) -> bool:
    """A compat module (whose forward and backward a subclass has not replaced), or a
    Sequential of them all the way down: one plan can run it."""
    if isinstance(module, Sequential):
        for m in module.modules:
            if not _compilable(m):
                return False
        return True
    kind = type(module)
    return (isinstance(module, _Compiled) and kind.forward is _Compiled.forward
            and kind.backward is _Compiled.backward)


class Sequential(_Compiled):
    """Modules applied in turn. Compat modules only: compiled as one network. With a
    user's own module (anything with ``forward`` and ``backward``) inside: each run of
    compat modules between user modules is compiled, the user's module is called in
    between. ``param()`` lists the children's pairs in order. Indexing, iteration and
    ``len`` as torch's Sequential's; after ``forward`` each child's ``backward`` can be
    called by hand, in reverse order."""

    def __init__(self, *modules):
        if len(modules) == 1 and isinstance(modules[0], (list, tuple)):
            modules = tuple(modules[0])
        for i, m in enumerate(modules):
            if not isinstance(m, _Compiled) and not (callable(getattr(m, "forward", None))
                                                     and callable(getattr(m, "backward", None))):
                raise TypeError(f"module {i} ({type(m).__name__}) is not an n2ngraph.compat "
                                f"module and has no forward and backward of its own")
        self.modules = list(modules)
        self._parts_of: tuple[tuple[int, ...], list] | None = None

    def __len__(self) -> int:
        return len(self.modules)

    def __iter__(self):
        return iter(self.modules)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Sequential(*self.modules[index])
        return self.modules[index]

    def _emit(self, nodes, name, source):
        for i, module in enumerate(self.modules):
            source = module._emit(nodes, f"{name}.{i}", source)
        return source

    def _parts(self) -> list:
        """The children with each run of compilable ones as one (cached) Sequential."""
        key = tuple(map(id, self.modules))
        if self._parts_of is None or self._parts_of[0] != key:
            parts, run = [], []
            for m in self.modules + [None]:
                if m is not None and _compilable(m):
                    run.append(m)
                    continue
                if run:
                    parts.append(Sequential(*run))
                    run = []
                if m is not None:
                    parts.append(m)
            self._parts_of = (key, parts)
        return self._parts_of[1]

    def _forward(self, x):
        if not _compilable(self):
            self._input, self._origin = x, None
            for part in self._parts():
                x = part.forward(x)
            return x
        y = super()._forward(x)
        for m in self.modules:  # straight into each child's dict: no __setattr__ hook
            vars(m).update(_input=None, _origin=self)
        return y

    def _backward(self, grad):
        if _compilable(self):
            return super()._backward(grad)
        self._remembered_input()
        for part in reversed(self._parts()):
            back = part.backward  # a user's module: its own backward
            grad = back(grad)
        return grad

    def _replay(self) -> None:
        """Each child's forward in turn on this Sequential's input: each remembers its own."""
        x = self._input
        for m in self.modules:
            x = m.forward(x)

    def param(self):
        return [pair for m in self.modules for pair in (m.param() if hasattr(m, "param") else [])]


class MSE(Module):
    """Mean squared error over every element (``reduction="mean"``, the default) or their
    sum (``"sum"``), as torch's; tensors of any shape, the two the same. ``forward(
    prediction, target)`` returns the loss (a 0-dim tensor); ``backward()`` returns
    d loss / d prediction, times the output gradient if one is given (a 0-d or (1,)
    tensor, or a number)."""

    REDUCTIONS = ("mean", "sum")

    def __init__(self, reduction: str = "mean"):
        if reduction not in self.REDUCTIONS:
            raise ValueError(f"reduction={reduction!r}: n2ngraph's MSE supports 'mean' or 'sum'")
        self.reduction = reduction
        self._programs: dict[torch.dtype, Program] = {}
        self._inputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self._seeds: dict[tuple[torch.dtype, float], torch.Tensor] = {}

    def _program(self, prediction: torch.Tensor) -> Program:
        program = self._programs.get(prediction.dtype)
        if program is not None:
            return program
        dtype = _dtype((), prediction)
        if dtype not in self._programs:
            spec = Spec(name="MSE", inputs=(InputSpec("prediction", 1), InputSpec("target", 1)),
                        nodes=(NodeSpec("loss", _MSEOp(), ("prediction", "target")),),
                        output="loss", loss="loss", train=TrainSpec())
            self._programs[dtype] = Program(spec, dtype=dtype)
        return self._programs[dtype]

    def _scale(self) -> float:
        """The sum is the mean times the number of elements."""
        return float(self._inputs[0].numel()) if self.reduction == "sum" else 1.0

    def _unit_seed(self, dtype: torch.dtype) -> torch.Tensor:
        """d loss / d loss (times the sum's scale), made once per dtype and scale: the
        program only reads it."""
        key = (dtype, self._scale())
        if key not in self._seeds:
            self._seeds[key] = torch.tensor(key[1], dtype=dtype)
        return self._seeds[key]

    def forward(self, *inputs):
        if len(inputs) != 2 or not all(isinstance(t, torch.Tensor) for t in inputs):
            raise TypeError(f"MSE.forward takes (prediction, target) tensors, got {len(inputs)} argument(s)")
        prediction, target = (t.detach() for t in inputs)
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and target "
                             f"{tuple(target.shape)} must have the same shape")
        if prediction.numel() == 0:
            raise ValueError("MSE of empty tensors is undefined")
        # elementwise, then reduced: any shape is one row of its elements
        self._inputs = (prediction.reshape(1, 1, 1, -1), target.reshape(1, 1, 1, -1))
        self._shape = prediction.shape
        loss = self._program(prediction).vjp_forward(self._inputs)  # kept for backward
        return loss.mul_(self._scale()) if self.reduction == "sum" else loss

    def backward(self, *grad_outputs):
        if self._inputs is None:
            raise RuntimeError("backward() before forward(): no loss to differentiate")
        if len(grad_outputs) > 1:
            raise TypeError(f"MSE.backward takes at most one output gradient, got {len(grad_outputs)}")
        program = self._program(self._inputs[0])
        if not grad_outputs:
            seed = self._unit_seed(program.dtype)
        else:
            seed = grad_outputs[0]
            seed = torch.as_tensor(seed.detach() if isinstance(seed, torch.Tensor) else seed,
                                   dtype=program.dtype)
            if seed.numel() != 1:
                raise ValueError(f"the loss is a scalar: its gradient must be a 0-d or (1,) "
                                 f"tensor, got shape {tuple(seed.shape)}")
            seed = seed.reshape(()) * self._scale()
        return program.vjp(self._inputs, seed).reshape(self._shape)


class MSELoss(MSE):
    """MSE under torch's name, with torch's signature (``reduction`` only; the
    deprecated ``size_average`` and ``reduce`` are refused)."""

    def __init__(self, size_average=None, reduce=None, reduction: str = "mean"):
        if size_average is not None or reduce is not None:
            raise ValueError("size_average and reduce are deprecated in torch: use reduction=")
        super().__init__(reduction)


class SGD:
    """``SGD(model.param(), lr=1e-3)``: n2ngraph's SGD (torch's arithmetic and defaults,
    momentum and dampening as the seed had them) over the given (parameter, gradient)
    pairs. The pairs a compat module gave are read again at each step: after
    ``conv.weight = new_tensor`` the new tensor is the one updated (its momentum starts
    afresh, as torch's state does for a new parameter; the others' too, here)."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False):
        self.pairs = list(params)
        for i, pair in enumerate(self.pairs):
            if (len(pair) != 2 or not all(isinstance(t, torch.Tensor) for t in pair)
                    or pair[0].shape != pair[1].shape):
                raise TypeError(f"SGD takes (parameter, gradient) pairs of tensors of one shape, "
                                f"as param() gives them; pair {i} is not one")
        self.config = OptimizerSpec(name="sgd", lr=float(lr), momentum=float(momentum),
                                    dampening=float(dampening), weight_decay=float(weight_decay),
                                    nesterov=bool(nesterov))
        self._rebuild(self._current())

    def _current(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each pair's tensors as they are now: a compat module's read from it again."""
        return [(getattr(pair.owner, pair.role), getattr(pair.owner, pair.grad_role))
                if isinstance(pair, _Pair) else tuple(pair) for pair in self.pairs]

    def _rebuild(self, current) -> None:
        self._held = [(p, g, p.data_ptr(), g.data_ptr()) for p, g in current]
        params = {str(i): p.detach() for i, (p, _) in enumerate(current)}  # an nn.Parameter's data
        grads = {str(i): g.detach() for i, (_, g) in enumerate(current)}
        self._update = _SGDUpdate(params, grads, self.config)

    def step(self) -> None:
        current = self._current()
        for (p, g), (p0, g0, ptr, gptr) in zip(current, self._held):
            if p is not p0 or g is not g0 or p.data_ptr() != ptr or g.data_ptr() != gptr:
                self._rebuild(current)  # another tensor in a module, or its .data replaced
                break
        self._update.step()

    def zero_grad(self) -> None:
        grads = [grad.detach() for _, grad in self._current()]
        if grads:
            torch._foreach_zero_(grads)
