"""Benchmarks of ``lift_conv`` and ``group_conv`` per backend, with rooflines: the one place for the cases.

``python -m equifast bench`` (or ``python -m equifast.benchmark``) calls :func:`main`; the
pytest-benchmark suites under ``bench/`` import :data:`CASES`, :func:`select` and :func:`prepare`
from here, so both time exactly the same calls.

What is timed
  * ``forward``: the op under ``torch.no_grad()`` (inference).
  * ``backward``: ``torch.autograd.grad(out, (x, weight), grad_out, retain_graph=True)`` on a graph
    built once outside the timer (gradients for the input *and* the weight; no bias). Backends
    without their own backward kernels (``reference``, ``torch``) recompute their forward inside it.
  * ``forward+backward``: the op with autograd, then the gradient as above.
  The first call of every timed function (compilation, autotuning, caches) is never timed. On CUDA
  each sample is bracketed by CUDA events after flushing the L2 cache (as ``triton.testing.do_bench``
  does), and the device is synchronised before reading them; on CPU samples use ``time.perf_counter``
  with enough inner iterations to last at least ``min_sample_s``. The reported time is the median.

Rooflines, both measured in the same run on the same device:
  * memory: ``bytes / median / copy_bandwidth`` where ``bytes`` = elements read and written at least
    once by the mode (forward: x + weight + out; backward: grad_out + x + weight + grad_x +
    grad_weight; forward+backward: both) times the element size, and ``copy_bandwidth`` =
    2·N bytes / best time of ``dst.copy_(src)`` on N-byte buffers larger than the caches.
  * compute: ``flops / median / matmul_throughput[dtype]`` where ``flops`` = 2·B·|G|·C_out·H'·W'·C_in'·kh·kw
    for the forward (C_in' = C_in for lift_conv, |G|·C_in for group_conv), twice that for the backward
    (grad input + grad weight), three times for forward+backward; ``matmul_throughput`` = 2·n³ / best
    time of an n x n ``torch.mm`` of the same dtype (float32 on CUDA with TF32 allowed exactly when cuDNN
    convolutions may use it, ``torch.backends.cudnn.allow_tf32``).

Scales: ``full`` (the standard shapes; meant for a GPU), ``cpu`` (the same cases with the batch cut
so the whole set runs in minutes on a small CPU; the default without CUDA) and ``quick`` (tiny
shapes, few repeats; what CI runs).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import fnmatch
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

__all__ = ["Case", "Config", "CASES", "MODES", "LAYOUTS", "DTYPES", "SCALES", "Unsupported", "cases_for",
           "select", "prepare", "measure", "measure_rooflines", "default_backends", "default_device",
           "run", "main"]

MODES = ("forward", "backward", "forward+backward")
LAYOUTS = ("contiguous", "channels_last")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}
SCALES = ("quick", "cpu", "full")
SCHEMA = "equifast-bench/1"
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
    from . import backends as _backends
    wanted = ("reference", "torch", "cpu") if device == "cpu" else ("reference", "torch", "triton", "cuda")
    return [b for b in wanted if backend_status(b, device) == "available"]


def backend_status(name: str, device: str) -> str:
    """'available', or why ``name`` is not on ``device`` (never raises: backends may be half-written)."""
    from . import backends as _backends
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
    from . import backends as _backends
    from ._args import make_plan
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


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------
def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def measure(fn: Callable[[], object], device: str, *, repeat: int = 5, min_sample_s: float = 0.005,
            budget_s: float = 2.0, warmup: bool = True) -> Dict[str, float]:
    """Median time of ``fn`` in seconds (and min, 20th/80th percentiles, sample count).

    The first call (compile, autotune) is untimed. CPU: each sample runs ``fn`` enough times to last
    ``min_sample_s``; the number of samples is ``repeat``, cut (down to 3) to keep within ``budget_s``.
    CUDA: each sample is one call between CUDA events, after an L2 flush; synchronised.
    """
    if warmup:
        fn()
        synchronize(device)
    if torch.device(device).type == "cuda":
        return _measure_cuda(fn, repeat, budget_s)
    t0 = time.perf_counter()
    fn()
    single = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, math.ceil(min_sample_s / single))
    samples_wanted = max(3, min(repeat, int(budget_s / (single * inner))))
    samples = []
    for _ in range(samples_wanted):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    return _summary(samples, inner)


_L2_FLUSH: Dict[str, torch.Tensor] = {}


def _measure_cuda(fn, repeat: int, budget_s: float) -> Dict[str, float]:
    dev = torch.cuda.current_device()
    flush = _L2_FLUSH.get(str(dev))
    if flush is None:
        flush = _L2_FLUSH[str(dev)] = torch.empty(256 * 2 ** 20, dtype=torch.int8, device="cuda")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    single = max(start.elapsed_time(end) / 1e3, 1e-7)
    n = max(5, min(repeat, int(budget_s / single)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for i in range(n):
        flush.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return _summary([s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)], 1)


def _summary(samples: Sequence[float], inner: int) -> Dict[str, float]:
    ordered = sorted(samples)

    def q(p):
        return ordered[min(len(ordered) - 1, int(round(p * (len(ordered) - 1))))]
    return {"median_s": statistics.median(ordered), "min_s": ordered[0], "p20_s": q(0.2), "p80_s": q(0.8),
            "samples": len(ordered), "inner": inner}


# ---------------------------------------------------------------------------
# Rooflines
# ---------------------------------------------------------------------------
def measure_copy_bandwidth(device: str, nbytes: int, repeat: int = 5) -> Dict[str, float]:
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    t = measure(lambda: dst.copy_(src), device, repeat=repeat, min_sample_s=0.0, budget_s=5.0)
    return {"bytes_per_s": 2 * src.numel() * 4 / t["min_s"], "buffer_bytes": src.numel() * 4,
            "median_bytes_per_s": 2 * src.numel() * 4 / t["median_s"],
            "method": "dst.copy_(src): 2 * buffer bytes (read + write) / best time"}


@contextlib.contextmanager
def _matmul_tf32_like_convs(device: str, dtype: torch.dtype):
    if torch.device(device).type != "cuda" or dtype != torch.float32:
        yield None
        return
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = bool(torch.backends.cudnn.allow_tf32)
    try:
        yield torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def measure_matmul(device: str, dtype: str, n: int, repeat: int = 5) -> Dict[str, object]:
    dt = DTYPES[dtype]
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dt)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dt)
    c = torch.empty(n, n, device=device, dtype=dt)
    with _matmul_tf32_like_convs(device, dt) as tf32:
        t = measure(lambda: torch.mm(a, b, out=c), device, repeat=repeat, min_sample_s=0.0, budget_s=5.0)
    out = {"flops_per_s": 2 * n ** 3 / t["min_s"], "median_flops_per_s": 2 * n ** 3 / t["median_s"], "n": n,
           "method": f"torch.mm of {n}x{n} {dtype}: 2 n^3 / best time"}
    if tf32 is not None:
        out["allow_tf32"] = tf32
    return out


def measure_rooflines(device: str, dtypes: Sequence[str], scale: str) -> Dict[str, object]:
    cuda = torch.device(device).type == "cuda"
    if cuda:
        nbytes, n = 1 << 30, 8192
    elif scale == "quick":
        nbytes, n = 64 << 20, 1024
    else:
        nbytes, n = 256 << 20, 2048
    return {"copy": measure_copy_bandwidth(device, nbytes),
            "matmul": {d: measure_matmul(device, d, n) for d in dtypes}}


# ---------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _loadavg():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _run_quiet(cmd: Sequence[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=True).stdout.strip()
    except Exception:
        return ""


def environment(device: str) -> Dict[str, object]:
    import equifast
    from . import backends as _backends
    try:
        import triton
        triton_version = triton.__version__
    except Exception:
        triton_version = None
    env: Dict[str, object] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": device,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": _loadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "triton": triton_version,
        "equifast": equifast.__version__,
        "git_commit": _run_quiet(["git", "-C", os.path.dirname(os.path.abspath(__file__)), "rev-parse", "HEAD"]),
        "backends": {name: backend_status(name, device) for name in _backends.NAMES},
    }
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        smi = _run_quiet(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        env.update({
            "device_name": props.name,
            "driver": smi.splitlines()[0].strip() if smi else None,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "compute_capability": f"{props.major}.{props.minor}",
            "sm_count": props.multi_processor_count,
            "gpu_memory_gib": round(props.total_memory / 2 ** 30, 1),
            "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        })
    else:
        env.update({"device_name": _cpu_model(), "driver": None, "cuda": None,
                    "mkldnn": bool(torch.backends.mkldnn.is_available())})
    return env


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------
def _record(config: Config, scale: str) -> Dict[str, object]:
    case = config.case
    return {"op": case.op, "case": case.name, "scale": scale, "shape": case.shape_dict(), "group": case.group,
            "frame": "view", "dtype": config.dtype, "layout": config.layout, "mode": config.mode,
            "backend": config.backend, "status": None, "reason": None, "median_ms": None, "min_ms": None,
            "p20_ms": None, "p80_ms": None, "samples": None,
            "flops": case.flops(config.mode),
            "bytes": case.bytes(config.mode, torch.empty(0, dtype=DTYPES[config.dtype]).element_size()),
            "tflops": None, "gbps": None, "speedup_vs_reference": None, "speedup_vs_torch": None,
            "memory_roofline_fraction": None, "compute_roofline_fraction": None}


def time_config(config: Config, device: str, scale: str, timing: Dict[str, float]) -> Dict[str, object]:
    rec = _record(config, scale)
    try:
        fn = prepare(config, device)
        t = measure(fn, device, **timing)
    except Unsupported as exc:
        rec.update(status="skipped", reason=str(exc))
        return rec
    except Exception as exc:  # one broken backend must not hide the others' numbers
        rec.update(status="error", reason=f"{type(exc).__name__}: {exc}")
        return rec
    finally:
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    rec.update(status="ok", median_ms=t["median_s"] * 1e3, min_ms=t["min_s"] * 1e3, p20_ms=t["p20_s"] * 1e3,
               p80_ms=t["p80_s"] * 1e3, samples=t["samples"],
               tflops=rec["flops"] / t["median_s"] / 1e12, gbps=rec["bytes"] / t["median_s"] / 1e9)
    return rec


def add_derived(records: List[Dict[str, object]], rooflines: Dict[str, object]) -> None:
    """Speedups vs the reference and torch backends of the same case/dtype/layout/mode; roofline fractions."""
    def key(r):
        return (r["op"], r["case"], r.get("dtype"), r.get("layout"), r.get("mode"))
    base = {}
    for r in records:
        if r["status"] == "ok" and r["backend"] in (REFERENCE, PEER):
            base[key(r) + (r["backend"],)] = r["median_ms"]
    copy_bw = rooflines.get("copy", {}).get("bytes_per_s")
    for r in records:
        if r["status"] != "ok":
            continue
        for name, field in ((REFERENCE, "speedup_vs_reference"), (PEER, "speedup_vs_torch")):
            ref = base.get(key(r) + (name,))
            r[field] = ref / r["median_ms"] if ref else None
        if "bytes" in r and copy_bw:
            r["memory_roofline_fraction"] = r["bytes"] / (r["median_ms"] / 1e3) / copy_bw
        peak = rooflines.get("matmul", {}).get(r.get("dtype"), {}).get("flops_per_s")
        if "flops" in r and peak:
            r["compute_roofline_fraction"] = r["flops"] / (r["median_ms"] / 1e3) / peak


# ---------------------------------------------------------------------------
# Training step of the paper's network
# ---------------------------------------------------------------------------
TRAIN_BATCH = {"quick": 8, "cpu": 32, "full": 128}


@contextlib.contextmanager
def _forced_backend(backend: str):
    from .backends import ENV_VAR
    old = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = backend
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = old


def load_model_class():
    """``equifast.models.Figure3Net``, or raise with the reason it cannot be loaded."""
    import importlib
    models = importlib.import_module("equifast.models")
    return getattr(models, "Figure3Net")


def prepare_train_step(backend: str, device: str, dtype: str, batch: int):
    """A callable running one SGD training step of Figure3Net (forward, cross-entropy, backward, step).

    The backend is applied by passing ``backend=`` when the constructor takes it, and by setting
    ``EQUIFAST_BACKEND`` (which forces every ``backend="auto"`` op) while the step runs. For a dtype other
    than float32 the model and input are cast to it (pure low-precision training, like the op benchmarks).
    Raises :class:`Unsupported` when the model cannot be built.
    """
    import inspect
    import torch.nn.functional as F
    try:
        cls = load_model_class()
    except Exception as exc:
        raise Unsupported(f"equifast.models.Figure3Net is not available ({type(exc).__name__}: {exc})") from None
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}
    kwargs = {"backend": backend} if "backend" in params else {}
    with _forced_backend(backend):
        model = cls(**kwargs).to(device=device, dtype=DTYPES[dtype])
    shape = tuple(getattr(model, "input_shape", None) or getattr(cls, "input_shape", None) or (1, 28, 28))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch,) + shape[-3:], generator=gen).to(device=device, dtype=DTYPES[dtype])
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    labels = None

    def step():
        nonlocal labels
        with _forced_backend(backend):
            opt.zero_grad(set_to_none=True)
            out = model(x)
            logits = out.reshape(batch, -1).float()
            if labels is None:
                labels = torch.randint(0, logits.shape[1], (batch,), generator=gen).to(device)
            loss = F.cross_entropy(logits, labels)
            loss.backward()
            opt.step()
        return loss
    return step, {"how_backend_applied": ("constructor backend= and " if kwargs else "") + "EQUIFAST_BACKEND",
                  "input_shape": [batch, *shape[-3:]],
                  "parameters": sum(p.numel() for p in model.parameters())}


def time_train_steps(backends: Sequence[str], device: str, dtypes: Sequence[str], scale: str,
                     timing: Dict[str, float]) -> List[Dict[str, object]]:
    batch = TRAIN_BATCH[scale]
    records = []
    for dtype in dtypes:
        for backend in backends:
            rec = {"op": "train_step", "model": "Figure3Net", "case": f"figure3net_b{batch}", "scale": scale,
                   "batch": batch, "dtype": dtype, "mode": "forward+backward+sgd", "backend": backend,
                   "status": None, "reason": None, "median_ms": None, "min_ms": None, "samples": None,
                   "speedup_vs_reference": None, "speedup_vs_torch": None}
            try:
                step, info = prepare_train_step(backend, device, dtype, batch)
                rec.update(info)
                t = measure(step, device, **timing)
                rec.update(status="ok", median_ms=t["median_s"] * 1e3, min_ms=t["min_s"] * 1e3,
                           samples=t["samples"])
            except Unsupported as exc:
                rec.update(status="skipped", reason=str(exc))
            except RuntimeError as exc:
                # the model reached an op whose backend cannot run it (e.g. a dtype it does not take)
                unsupported = "does not support this call" in str(exc) or "is not available on" in str(exc)
                rec.update(status="skipped" if unsupported else "error", reason=f"{type(exc).__name__}: {exc}")
            except Exception as exc:
                rec.update(status="error", reason=f"{type(exc).__name__}: {exc}")
            records.append(rec)
            print(_progress_line(rec), flush=True)
            if rec["status"] == "skipped" and "not available" in (rec["reason"] or ""):
                # the model is missing: one record per dtype says so; no point trying every backend
                break
    add_derived(records, {})
    return records


# ---------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------
def _fmt_ms(v) -> str:
    if v is None:
        return "–"
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def _fmt_x(v) -> str:
    return "–" if v is None else f"{v:.2f}×"


def _fmt_frac(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def _progress_line(r) -> str:
    what = f"{r['case']:<18} {r.get('dtype', ''):<8} {r.get('layout', ''):<13} {r['mode']:<16} {r['backend']:<9}"
    if r["status"] != "ok":
        return f"{what} {r['status']}: {r['reason']}"
    return f"{what} {r['median_ms']:10.3f} ms"


def write_markdown(path: str, result: Dict[str, object]) -> None:
    meta, roof, records = result["meta"], result["rooflines"], result["records"]
    lines = ["# equifast benchmark", ""]
    lines += [f"- date: {meta['date']}", f"- command: `{meta['command']}`",
              f"- device: {meta['device']} — {meta.get('device_name')}"
              + (f", driver {meta['driver']}, CUDA {meta.get('cuda')}, cuDNN {meta.get('cudnn')}"
                 if meta.get("driver") or meta.get("cuda") else ""),
              f"- CPU: {meta['cpu']} ({meta['cpu_count']} CPUs, torch threads {meta['torch_threads']}); "
              f"load average (1, 5, 15 min) at start {meta.get('loadavg_start')}, at end {meta.get('loadavg_end')}",
              f"- elapsed: {meta.get('elapsed_s')} s",
              f"- torch {meta['torch']}, triton {meta['triton']}, python {meta['python']}, "
              f"equifast {meta['equifast']} (git {str(meta.get('git_commit'))[:12]})",
              f"- scale: {meta['scale']}; backends: {', '.join(meta['backends_run'])}; repeat: {meta['repeat']}",
              f"- copy bandwidth: {roof['copy']['bytes_per_s'] / 1e9:.1f} GB/s; matmul: "
              + ", ".join(f"{d} {m['flops_per_s'] / 1e12:.3g} TFLOP/s" for d, m in roof["matmul"].items()),
              ""]
    if meta.get("notes"):
        lines += ["Notes: " + meta["notes"], ""]
    backends = list(meta["backends_run"])
    ok = [r for r in records if r["status"] == "ok"]
    # side by side: one row per (case, dtype, layout, mode)
    groups: Dict[tuple, Dict[str, dict]] = {}
    for r in records:
        groups.setdefault((r["case"], r["dtype"], r["layout"], r["mode"]), {})[r["backend"]] = r
    ratio_cols = [(b, REFERENCE) for b in backends if b != REFERENCE] + \
        [(b, PEER) for b in backends if b not in (REFERENCE, PEER)]
    lines += ["## Time per backend (median ms) and speedups", "",
              "`X vs ref` = speedup of backend X over the naive looped lifting (reference backend), i.e. "
              "time(reference) / time(X); `X vs torch` = the same over filter rotation + one conv2d (torch "
              "backend); > 1 means X is faster.", "",
              "| case | shape | dtype | layout | mode | " + " | ".join(f"{b} ms" for b in backends)
              + "".join(f" | {b} vs {'ref' if base == REFERENCE else base}" for b, base in ratio_cols) + " |",
              "|" + "---|" * (5 + len(backends) + len(ratio_cols))]
    for (case, dtype, layout, mode), by in groups.items():
        any_r = next(iter(by.values()))
        cells = [_fmt_ms(by[b]["median_ms"]) if b in by and by[b]["status"] == "ok" else
                 ("skip" if b in by and by[b]["status"] == "skipped" else ("err" if b in by else "–"))
                 for b in backends]
        ratios = []
        for b, base in ratio_cols:
            r = by.get(b)
            field = "speedup_vs_reference" if base == REFERENCE else "speedup_vs_torch"
            ratios.append(_fmt_x(r[field]) if r is not None and r["status"] == "ok" else "–")
        lines.append(f"| {case} | {any_r['shape']['label']} | {dtype} | {layout} | {mode} | " + " | ".join(cells)
                     + "".join(f" | {x}" for x in ratios) + " |")
    lines += ["", "## All records", "",
              "| op | case | dtype | layout | mode | backend | median ms | × vs reference | × vs torch | "
              "memory roofline | compute roofline | TFLOP/s | GB/s |", "|" + "---|" * 13]
    for r in ok:
        lines.append(f"| {r['op']} | {r['case']} | {r['dtype']} | {r['layout']} | {r['mode']} | {r['backend']} | "
                     f"{_fmt_ms(r['median_ms'])} | {_fmt_x(r['speedup_vs_reference'])} | "
                     f"{_fmt_x(r['speedup_vs_torch'])} | {_fmt_frac(r['memory_roofline_fraction'])} | "
                     f"{_fmt_frac(r['compute_roofline_fraction'])} | {r['tflops']:.3g} | {r['gbps']:.3g} |")
    train = result.get("training", [])
    if train:
        lines += ["", "## Training step of Figure3Net (forward + backward + SGD step)", "",
                  "| batch | dtype | backend | status | median ms | × vs reference | × vs torch |", "|---|---|---|---|---|---|---|"]
        for r in train:
            lines.append(f"| {r['batch']} | {r['dtype']} | {r['backend']} | {r['status']} | {_fmt_ms(r['median_ms'])} | "
                         f"{_fmt_x(r['speedup_vs_reference'])} | {_fmt_x(r['speedup_vs_torch'])} |")
        reasons = sorted({r["reason"] for r in train if r["status"] != "ok"})
        lines += [f"- {reason}" for reason in reasons]
    skipped = [r for r in records if r["status"] != "ok"]
    if skipped:
        lines += ["", "## Skipped or failed", ""]
        seen = set()
        for r in skipped:
            k = (r["backend"], r["status"], r["reason"])
            if k not in seen:
                seen.add(k)
                n = sum(1 for s in skipped if (s["backend"], s["status"], s["reason"]) == k)
                lines.append(f"- {r['backend']} ({r['status']}, {n} configurations): {r['reason']}")
    if result.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in result["plots"]]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def _backend_colors(backends):
    palette = ["#7f7f7f", "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd"]
    return {b: palette[i % len(palette)] for i, b in enumerate(backends)}


def write_plots(out_dir: str, result: Dict[str, object]) -> List[str]:
    """One PNG per (dtype, layout): time per backend per case (log), speedups vs reference and torch (log)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    records = [r for r in result["records"] if r["status"] == "ok"]
    backends = list(result["meta"]["backends_run"])
    colors = _backend_colors(backends)
    slices = []
    for r in records:
        if (r["dtype"], r["layout"]) not in slices:
            slices.append((r["dtype"], r["layout"]))
    names = []
    for i, (dtype, layout) in enumerate(slices):
        sub = [r for r in records if (r["dtype"], r["layout"]) == (dtype, layout)]
        cases = list(dict.fromkeys(r["case"] for r in sub))
        modes = [m for m in MODES if any(r["mode"] == m for r in sub)]
        fig, axes = plt.subplots(2, len(modes), figsize=(max(6.0, 0.55 * len(cases) * len(backends) / 2 + 2) *
                                                           len(modes) / 1.5, 8.5), squeeze=False)
        for j, mode in enumerate(modes):
            by = {(r["case"], r["backend"]): r for r in sub if r["mode"] == mode}
            width = 0.8 / max(1, len(backends))
            ax_t, ax_s = axes[0][j], axes[1][j]
            for k, b in enumerate(backends):
                xs = [c_i + (k - (len(backends) - 1) / 2) * width for c_i in range(len(cases))]
                ts = [by[(c, b)]["median_ms"] if (c, b) in by else float("nan") for c in cases]
                ax_t.bar(xs, ts, width, label=b, color=colors[b])
            sp = [(f"{b} vs ref", "speedup_vs_reference", b) for b in backends if b != REFERENCE] + \
                 [(f"{b} vs torch", "speedup_vs_torch", b) for b in backends if b not in (REFERENCE, PEER)]
            w2 = 0.8 / max(1, len(sp))
            for k, (lab, field, b) in enumerate(sp):
                xs = [c_i + (k - (len(sp) - 1) / 2) * w2 for c_i in range(len(cases))]
                vs = [by[(c, b)][field] if (c, b) in by and by[(c, b)][field] else float("nan") for c in cases]
                ax_s.bar(xs, vs, w2, label=lab, color=colors[b], alpha=1.0 if field == "speedup_vs_reference" else 0.5,
                         hatch=None if field == "speedup_vs_reference" else "//")
            ax_s.axhline(1.0, color="black", linewidth=0.8)
            for ax, ylabel in ((ax_t, "median time (ms), log"), (ax_s, "speedup (×), log")):
                ax.set_yscale("log")
                ax.set_xticks(range(len(cases)))
                ax.set_xticklabels(cases, rotation=35, ha="right", fontsize=8)
                ax.set_ylabel(ylabel)
                ax.grid(axis="y", which="both", alpha=0.3)
            ax_t.set_title(f"{mode}")
            if j == len(modes) - 1:   # one legend per row, outside the bars
                ax_t.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
                if sp:
                    ax_s.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        meta = result["meta"]
        fig.suptitle(f"equifast {meta['device_name']} — {dtype}, {layout}, scale {meta['scale']} ({meta['date']})",
                     fontsize=10)
        fig.tight_layout()
        name = "results.png" if i == 0 else f"results-{dtype}-{layout}.png"
        fig.savefig(os.path.join(out_dir, name), dpi=110)
        plt.close(fig)
        names.append(name)
    return names


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def _csv(value: Optional[str]) -> Optional[List[str]]:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m equifast bench",
        description="Time lift_conv and group_conv per backend (forward, backward, forward+backward), with "
                    "speedups vs the reference and torch backends and memory/compute roofline fractions, and "
                    "a training step of Figure3Net. Writes results.json, results.md and results*.png.")
    p.add_argument("--out", default=os.path.join("runs", "bench"), help="output folder (default runs/bench)")
    p.add_argument("--quick", action="store_true", help="tiny shapes, few repeats (CI; well under a minute on CPU)")
    p.add_argument("--scale", choices=SCALES, default=None,
                   help="full = standard shapes (default on CUDA), cpu = batch cut for CPUs (default on CPU), "
                        "quick = tiny (same as --quick)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
    p.add_argument("--backends", help="comma-separated backends (default: available ones; CPU: reference,torch,cpu)")
    p.add_argument("--dtypes", help="comma-separated dtypes (default float32,bfloat16)")
    p.add_argument("--layouts", help="comma-separated: contiguous,channels_last (default both)")
    p.add_argument("--modes", help="comma-separated: forward,backward,forward+backward (default all)")
    p.add_argument("--cases", help="comma-separated case names or globs (default: all of the scale); see --list")
    p.add_argument("--repeat", type=int, default=None, help="timed samples per measurement "
                   "(default: CPU 5, CUDA 50, quick 3; CPU cuts to >= 3 samples to stay within --budget)")
    p.add_argument("--budget", type=float, default=None, help="seconds of samples per measurement (default CPU 1.5)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads for the run (default: torch's choice; quick: 1, so that a shared "
                        "CI machine cannot stall OpenMP barriers)")
    p.add_argument("--resume", action="store_true",
                   help="keep the measured records of an earlier (interrupted or partial) run in --out and time only "
                        "the missing ones; rooflines are those of the first run")
    p.add_argument("--no-train", action="store_true", help="skip the Figure3Net training step")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plots")
    p.add_argument("--notes", default="", help="free text stored in results.json and results.md")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    return p


def run(args: argparse.Namespace, argv: Sequence[str]) -> Dict[str, object]:
    threads_before = torch.get_num_threads()
    threads = args.threads or (1 if args.quick or args.scale == "quick" else None)
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(args, argv)
    finally:
        torch.set_num_threads(threads_before)


def _run(args: argparse.Namespace, argv: Sequence[str]) -> Dict[str, object]:
    device = default_device() if args.device == "auto" else args.device
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    cuda = torch.device(device).type == "cuda"
    scale = "quick" if args.quick else (args.scale or ("full" if cuda else "cpu"))
    backends = _csv(args.backends) or default_backends(device)
    dtypes = _csv(args.dtypes) or default_dtypes(device, scale)
    configs = select(scale, device, cases=_csv(args.cases), backends=backends, dtypes=dtypes,
                     layouts=_csv(args.layouts), modes=_csv(args.modes))
    repeat = args.repeat or (3 if scale == "quick" else (50 if cuda else 5))
    timing = {"repeat": repeat,
              "min_sample_s": 0.001 if scale == "quick" else 0.005,
              "budget_s": args.budget if args.budget is not None else (0.1 if scale == "quick" else 1.5)}
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "results.json")
    t_start = time.perf_counter()
    meta = environment(device)
    command = "python -m equifast bench " + shlex.join(list(argv))
    meta.update({"command": command, "argv": list(argv),
                 "scale": scale, "backends_run": backends, "dtypes": dtypes, "repeat": repeat,
                 "timing": timing, "notes": args.notes})
    previous = _load_previous(json_path, device, scale) if args.resume else None
    done: Dict[tuple, Dict[str, object]] = {}
    if previous:
        done = {_key(r): r for r in previous["records"] if r["status"] in ("ok", "skipped")}
        meta["runs"] = previous["meta"].get("runs", [{"date": previous["meta"]["date"],
                                                     "command": previous["meta"]["command"]}])
        meta["notes"] = args.notes or previous["meta"].get("notes", "")
    meta.setdefault("runs", []).append({"date": meta["date"], "command": command})
    todo = [c for c in configs if _config_key(c) not in done]
    print(f"equifast bench: {len(todo)} measurements on {meta['device_name']} ({device}), scale {scale}, "
          f"backends {', '.join(backends)}" + (f" ({len(configs) - len(todo)} kept from {json_path})"
                                                 if previous else ""), flush=True)
    if previous:
        rooflines = previous["rooflines"]      # keep the fractions of resumed records consistent
    else:
        rooflines = measure_rooflines(device, dtypes, scale)
    print(f"copy bandwidth {rooflines['copy']['bytes_per_s'] / 1e9:.1f} GB/s; matmul "
          + ", ".join(f"{d} {m['flops_per_s'] / 1e12:.3g} TFLOP/s" for d, m in rooflines["matmul"].items()),
          flush=True)
    result = {"schema": SCHEMA, "meta": meta, "rooflines": rooflines, "records": [], "training": []}
    for i, config in enumerate(configs):
        rec = done.get(_config_key(config))
        if rec is None:
            rec = time_config(config, device, scale, timing)
            print(f"[{todo.index(config) + 1}/{len(todo)}] " + _progress_line(rec), flush=True)
        result["records"].append(rec)
        add_derived(result["records"], rooflines)
        _write_json(json_path, result)   # partial results survive an interrupted run (see --resume)
    add_derived(result["records"], rooflines)
    if not args.no_train:
        kept = [r for r in (previous or {}).get("training", []) if r["status"] in ("ok", "skipped")]
        if kept and {(r["backend"], r["dtype"]) for r in kept} >= {(b, d) for b in backends for d in dtypes}:
            result["training"] = kept
        else:
            result["training"] = time_train_steps(backends, device, dtypes, scale, timing)
    meta["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    meta["loadavg_end"] = _loadavg()
    if not args.no_plot:
        try:
            result["plots"] = write_plots(args.out, result)
        except Exception as exc:  # a missing matplotlib must not lose the numbers
            meta["plot_error"] = f"{type(exc).__name__}: {exc}"
    _write_json(json_path, result)
    write_markdown(os.path.join(args.out, "results.md"), result)
    print(f"wrote {json_path}, results.md" + (", " + ", ".join(result.get("plots", [])) if result.get("plots") else "")
          + f" in {meta['elapsed_s']} s", flush=True)
    return result


def _key(r: Dict[str, object]) -> tuple:
    return (r["case"], r["dtype"], r["layout"], r["mode"], r["backend"])


def _config_key(c: Config) -> tuple:
    return (c.case.name, c.dtype, c.layout, c.mode, c.backend)


def _load_previous(path: str, device: str, scale: str) -> Optional[Dict[str, object]]:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        previous = json.load(f)
    meta = previous.get("meta", {})
    if previous.get("schema") != SCHEMA or meta.get("scale") != scale or \
            torch.device(meta.get("device", "cpu")).type != torch.device(device).type:
        raise SystemExit(f"--resume: {path} holds a run with schema {previous.get('schema')}, scale "
                         f"{meta.get('scale')} on {meta.get('device')}; this run is scale {scale} on {device}. "
                         f"Use another --out.")
    return previous


def _write_json(path: str, result: Dict[str, object]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1, default=str)
    os.replace(tmp, path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    args = build_parser().parse_args(argv)
    if args.list:
        for scale in SCALES:
            print(f"scale {scale}:")
            for c in cases_for(scale):
                print(f"  {c.name:<18} {c.op:<10} {c.label():<36} {c.description}")
        return 0
    run(args, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
