"""Backend registry and selection (the interface a backend implements is in ``equifast.backends``).

Backend modules are imported on first use, never at ``import equifast``; a backend whose module or
compiled extension is missing is simply unavailable, with the reason kept for the error message.
``backend="auto"`` takes the first available, supporting and preferred backend of the device's
list in ``AUTO_ORDER``; the environment variable ``EQUIFAST_BACKEND`` forces one.
"""
from __future__ import annotations

import importlib
import os
from typing import Dict, List, Tuple

import torch

from .. import _limits

NAMES = ("reference", "torch", "triton", "cuda", "cpu", "fourier")
MODULES: Dict[str, str] = {name: f"equifast.backends.{name}" for name in NAMES}  # backend name = module name
AUTO_ORDER = {"cuda": ("triton", "cuda", "torch"), "cpu": ("fourier", "cpu", "torch")}
ENV_VAR = "EQUIFAST_BACKEND"

_loaded: Dict[str, object] = {}
_load_errors: Dict[str, str] = {}


def check_name(backend: str, op: str = "equifast") -> None:
    if backend != "auto" and backend not in MODULES:
        raise ValueError(f"{op}: unknown backend {backend!r}; expected 'auto' or one of {NAMES}")


def module(name: str):
    """The backend module ``name``, or None when it cannot be imported (reason in ``load_error``)."""
    if name in _loaded:
        return _loaded[name]
    if name in _load_errors:
        return None
    try:
        mod = importlib.import_module(MODULES[name])
    except Exception as exc:  # a missing optional dependency or extension must not break equifast
        _load_errors[name] = f"{type(exc).__name__}: {exc}"
        return None
    _loaded[name] = mod
    return mod


def load_error(name: str) -> str:
    return _load_errors.get(name, "")


def availability(name: str, device) -> Tuple[bool, str]:
    mod = module(name)
    if mod is None:
        return False, f"module {MODULES[name]} could not be loaded ({load_error(name)})"
    try:
        ok, reason = mod.availability(torch.device(device))
    except Exception as exc:  # a broken optional backend must not break the others or "auto"
        return False, f"{MODULES[name]}.availability failed ({type(exc).__name__}: {exc})"
    return bool(ok), reason


def available_backends(device=None) -> List[str]:
    """Names of the backends that can run on ``device`` (default: CPU, plus CUDA when present)."""
    devices = [torch.device(device)] if device is not None else \
        [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    return [name for name in NAMES if any(availability(name, d)[0] for d in devices)]


def resolve(backend: str, plan, x: torch.Tensor, weight: torch.Tensor, op: str):
    """The backend module to run ``op`` with (resolving "auto" and the environment override)."""
    if backend == "auto":
        forced = os.environ.get(ENV_VAR, "").strip()
        if forced and forced != "auto":
            check_name(forced, f"{op} ({ENV_VAR})")
            backend = forced
    if backend != "auto":
        check_name(backend, op)
        ok, reason = availability(backend, x.device)
        if not ok:
            raise RuntimeError(f"{op}: backend {backend!r} is not available on {x.device.type}: {reason}")
        mod = module(backend)
        ok, reason = supports(mod, plan, x, weight)
        if not ok:
            raise RuntimeError(f"{op}: backend {backend!r} does not support this call: {reason}")
        return mod
    for name in AUTO_ORDER.get(x.device.type, ("torch",)):
        if not availability(name, x.device)[0]:
            continue
        mod = module(name)
        if supports(mod, plan, x, weight)[0] and getattr(mod, "preferred", _always)(plan, x, weight):
            return mod
    return module("torch")


def supports(mod, plan, x: torch.Tensor, weight: torch.Tensor) -> Tuple[bool, str]:
    """Whether backend module ``mod`` runs this call: its index range (``INDEX_BITS``, see
    ``equifast._limits``), then its own ``supports``."""
    if mod.INDEX_BITS == 32:
        reason = _limits.int32_reason(plan, x, weight)
        if reason:
            return False, reason
    return mod.supports(plan, x, weight)


def _always(*_):
    return True


def explain(device=None) -> Dict[str, str]:
    """For every backend: 'available' or the reason it is not, on ``device`` (default CPU)."""
    device = torch.device(device or "cpu")
    out = {}
    for name in NAMES:
        ok, reason = availability(name, device)
        out[name] = "available" if ok else reason
    return out
