"""What the benchmark times: the cases (the only definition of the benchmark shapes), the
configurations (case x dtype x layout x mode x backend) and the no-argument callables that run one.

* ``CASES`` / ``scaled(case, scale)`` / ``cases_for(scale, patterns)``: the shapes at each scale.
* ``select(scale, device, ops=, cases=, backends=, dtypes=, layouts=, modes=)``: every ``Config`` to time.
* ``prepare(config, device)``: a callable running ``config`` once (raises ``Unsupported`` when the
  backend cannot run it); its first call is the warm-up.
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

MODES = ("forward", "backward", "forward+backward")
LAYOUTS = ("contiguous", "channels_last")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}
SCALES = ("quick", "cpu", "full")
REFERENCE, PEER = "reference", "torch"   # the baselines every speedup is relative to


# ---------------------------------------------------------------------------
# Cases: the only definition of the benchmark shapes
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One convolution shape. Spatial size is ``size`` x ``size``; ``padding`` None means k // 2."""
    name: str
    op: str                 # "lift_conv" or "group_conv"
    group: str              # "C4", "D4", "C8", ...
    batch: int
    c_in: int
    c_out: int
    size: int
    kernel: int
    stride: int = 1
    padding: Optional[int] = None
    cpu_batch: Optional[int] = None   # the batch of the "cpu" scale
    description: str = ""

    @property
    def pad(self) -> int:
        return self.kernel // 2 if self.padding is None else self.padding

    @property
    def order(self) -> int:
        import equifast
        return equifast.groups.get(self.group).order

    @property
    def out_size(self) -> int:
        return (self.size + 2 * self.pad - self.kernel) // self.stride + 1

    @property
    def input_shape(self) -> Tuple[int, ...]:
        if self.op == "lift_conv":
            return (self.batch, self.c_in, self.size, self.size)
        return (self.batch, self.order, self.c_in, self.size, self.size)

    @property
    def weight_shape(self) -> Tuple[int, ...]:
        if self.op == "lift_conv":
            return (self.c_out, self.c_in, self.kernel, self.kernel)
        return (self.c_out, self.order, self.c_in, self.kernel, self.kernel)

    @property
    def output_shape(self) -> Tuple[int, ...]:
        return (self.batch, self.order, self.c_out, self.out_size, self.out_size)

    def label(self) -> str:
        """Human-readable shape, e.g. ``C4 B=128 1->32 28x28 k3``."""
        cin = f"{self.order}x{self.c_in}" if self.op == "group_conv" else f"{self.c_in}"
        extra = f" s{self.stride}" if self.stride != 1 else ""
        return f"{self.group} B={self.batch} {cin}->{self.c_out} {self.size}x{self.size} k{self.kernel}{extra}"

    def flops(self, mode: str) -> int:
        c_in = self.c_in * (self.order if self.op == "group_conv" else 1)
        fwd = 2 * self.batch * self.order * self.c_out * self.out_size ** 2 * c_in * self.kernel ** 2
        return fwd * {"forward": 1, "backward": 2, "forward+backward": 3}[mode]

    def bytes(self, mode: str, itemsize: int) -> int:
        x, w, y = (math.prod(s) for s in (self.input_shape, self.weight_shape, self.output_shape))
        fwd = x + w + y                 # read x, read weight, write out
        bwd = y + x + w + x + w         # read grad_out, x, weight; write grad_x, grad_weight
        return itemsize * {"forward": fwd, "backward": bwd, "forward+backward": fwd + bwd}[mode]

    def shape_dict(self) -> Dict[str, object]:
        return {"batch": self.batch, "c_in": self.c_in, "c_out": self.c_out, "size": self.size,
                "kernel": self.kernel, "stride": self.stride, "padding": self.pad, "order": self.order,
                "input": list(self.input_shape), "weight": list(self.weight_shape),
                "output": list(self.output_shape), "label": self.label()}


CASES: Tuple[Case, ...] = (
    Case("mnist_c4_b128", "lift_conv", "C4", 128, 1, 32, 28, 3, cpu_batch=32,
         description="paper MNIST lift (Figure 3 conv1), B=128"),
    Case("mnist_c4_b1024", "lift_conv", "C4", 1024, 1, 32, 28, 3, cpu_batch=256,
         description="paper MNIST lift, B=1024"),
    Case("cifar_c4", "lift_conv", "C4", 128, 3, 64, 32, 3, cpu_batch=16, description="CIFAR lift, C4"),
    Case("cifar_d4", "lift_conv", "D4", 128, 3, 64, 32, 3, cpu_batch=16, description="CIFAR lift, D4"),
    Case("imagenet_stem_c4", "lift_conv", "C4", 32, 3, 64, 224, 7, stride=2, padding=3, cpu_batch=2,
         description="ImageNet stem lift (ResNet conv1: k7, stride 2, padding 3)"),
    Case("deep_c4", "lift_conv", "C4", 64, 64, 64, 32, 3, cpu_batch=4,
         description="lift of a deep feature map, 64->64"),
    Case("group_conv_c4", "group_conv", "C4", 64, 32, 32, 32, 3, cpu_batch=4,
         description="group conv on a C4 stack, 4x32->32"),
    Case("cifar_c8_interp", "lift_conv", "C8", 128, 3, 64, 32, 3, cpu_batch=16,
         description="CIFAR lift, C8 (bilinear interpolated rotations)"),
)
QUICK_CASES = ("mnist_c4_b128", "cifar_d4", "cifar_c8_interp", "group_conv_c4")


def scaled(case: Case, scale: str) -> Case:
    """``case`` at ``scale``: full = as defined; cpu = batch ``cpu_batch``; quick = tiny shapes."""
    if scale == "full":
        return case
    if scale == "cpu":
        return replace(case, batch=case.cpu_batch or max(1, case.batch // 8))
    if scale == "quick":
        size = min(case.size, 16)
        return replace(case, batch=min(case.batch, 2), c_in=min(case.c_in, 4), c_out=min(case.c_out, 8),
                       size=size, kernel=min(case.kernel, 5), stride=1, padding=None)
    raise ValueError(f"unknown scale {scale!r}; expected one of {SCALES}")


def cases_for(scale: str, patterns: Optional[Sequence[str]] = None) -> List[Case]:
    """The cases of ``scale`` (quick: a subset) matching any of ``patterns`` (names or fnmatch globs)."""
    if patterns:
        chosen = [c for c in CASES if any(fnmatch.fnmatch(c.name, p) for p in patterns)]
        unknown = [p for p in patterns if not any(fnmatch.fnmatch(c.name, p) for c in CASES)]
        if unknown:
            raise ValueError(f"unknown case(s) {unknown}; known: {[c.name for c in CASES]}")
    else:
        chosen = [c for c in CASES if scale != "quick" or c.name in QUICK_CASES]
    return [scaled(c, scale) for c in chosen]


@dataclass(frozen=True)
class Config:
    """One timed measurement: a case, dtype, layout, mode and backend."""
    case: Case
    dtype: str
    layout: str
    mode: str
    backend: str

    @property
    def id(self) -> str:
        return f"{self.case.name}-{self.dtype}-{self.layout}-{self.mode}-{self.backend}"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_backends(device: str) -> List[str]:
    """Backends benchmarked by default: the available ones of the device (Triton only on CUDA)."""
    wanted = ("reference", "torch", "cpu") if device == "cpu" else ("reference", "torch", "triton", "cuda")
    return [b for b in wanted if backend_status(b, device) == "available"]


def backend_status(name: str, device: str) -> str:
    """'available', or why ``name`` is not on ``device`` (never raises: backends may be half-written)."""
    from .. import backends as _backends
    try:
        ok, reason = _backends.availability(name, torch.device(device))
    except Exception as exc:
        return f"availability check failed ({type(exc).__name__}: {exc})"
    return "available" if ok else (reason or "not available")


def default_dtypes(device: str, scale: str) -> List[str]:
    return ["float32"] if scale == "quick" else ["float32", "bfloat16"]


def select(scale: str, device: str, *, ops: Optional[Sequence[str]] = None, cases: Optional[Sequence[str]] = None,
           backends: Optional[Sequence[str]] = None, dtypes: Optional[Sequence[str]] = None,
           layouts: Optional[Sequence[str]] = None, modes: Optional[Sequence[str]] = None) -> List[Config]:
    """Every configuration to time, in a stable order (case, dtype, layout, mode, backend)."""
    backends = list(backends) if backends else default_backends(device)
    dtypes = list(dtypes) if dtypes else default_dtypes(device, scale)
    layouts = list(layouts) if layouts else list(LAYOUTS)
    modes = list(modes) if modes else list(MODES)
    for name, values, known in (("dtype", dtypes, DTYPES), ("layout", layouts, LAYOUTS), ("mode", modes, MODES)):
        bad = [v for v in values if v not in known]
        if bad:
            raise ValueError(f"unknown {name}(s) {bad}; expected some of {list(known)}")
    out = []
    for case in cases_for(scale, cases):
        if ops and case.op not in ops:
            continue
        for dtype in dtypes:
            for layout in layouts:
                for mode in modes:
                    for backend in backends:
                        out.append(Config(case, dtype, layout, mode, backend))
    return out


# ---------------------------------------------------------------------------
# Building the timed callables
# ---------------------------------------------------------------------------
class Unsupported(Exception):
    """The backend cannot run this configuration (not available, or does not support it)."""


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "contiguous":
        return t.contiguous()
    if t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    # a 5-D stack [B, n, C, H, W] stored as (B, H, W, n, C); (0, 3, 4, 1, 2) is an involution
    return t.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2)


def make_inputs(case: Case, dtype: str, layout: str, device: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(case.input_shape, generator=gen)
    fan_in = math.prod(case.weight_shape[1:])
    w = torch.randn(case.weight_shape, generator=gen) / math.sqrt(fan_in)
    x = _layout(x.to(device=device, dtype=DTYPES[dtype]), layout)
    return x, w.to(device=device, dtype=DTYPES[dtype])


def check_supported(config: Config, x: torch.Tensor, w: torch.Tensor) -> None:
    """Raise :class:`Unsupported` (with the backend's reason) when ``config.backend`` cannot run it."""
    from .. import backends as _backends
    from .._args import make_plan
    case = config.case
    try:
        plan = make_plan(case.group, case.stride, case.pad, 1, "view", case.kernel, case.kernel, case.op)
        _backends.resolve(config.backend, plan, x, w, case.op)
    except (RuntimeError, ValueError) as exc:
        raise Unsupported(str(exc)) from None


def prepare(config: Config, device: str) -> Callable[[], object]:
    """A no-argument callable that runs ``config`` once (not yet called: its first call is the warm-up)."""
    import equifast
    case = config.case
    x, w = make_inputs(case, config.dtype, config.layout, device)
    check_supported(config, x, w)
    op = equifast.lift_conv if case.op == "lift_conv" else equifast.group_conv
    kw = dict(group=case.group, stride=case.stride, padding=case.pad, backend=config.backend)
    if config.mode == "forward":
        def forward():
            with torch.no_grad():
                return op(x, w, **kw)
        return forward
    x.requires_grad_(True)
    w.requires_grad_(True)
    if config.mode == "backward":
        out = op(x, w, **kw)
        grad_out = torch.randn_like(out)

        def backward():
            return torch.autograd.grad(out, (x, w), grad_out, retain_graph=True)
        return backward
    grad_out = None

    def forward_backward():
        nonlocal grad_out
        out = op(x, w, **kw)
        if grad_out is None:
            grad_out = torch.randn_like(out)
        return torch.autograd.grad(out, (x, w), grad_out)
    return forward_backward


