"""equifast's compiled kernels (``equifast._C``, built from csrc/) and what the "cpu" and "cuda"
backends share: loading, the group tables the kernels take, the fake kernels, the forward and
backward entry points and the ``auto`` preference. The two backend modules differ only in
device and dtypes.

``equifast._C`` is loaded lazily, once, the first time a compiled backend is asked whether it is
available (never at ``import equifast``). When it is missing (not built: ``make build`` or
``python setup.py build_ext --inplace``) or fails to load, one warning says so and why, and the
"cpu" and "cuda" backends report themselves unavailable with that reason, so ``backend="auto"``
falls back to the plain-PyTorch backends.

The kernel-level ops live in the ``equifast_C`` namespace (schemas in csrc/ops.cpp):
``torch.ops.equifast_C.{lift_conv, lift_conv_backward, group_conv, group_conv_backward}``; they take
the group as integer tables built here (``lift_tables``, ``group_tables``), so the kernels are
generic over every exact group.
"""
from __future__ import annotations

import importlib
import threading
import warnings
from typing import Dict, Optional, Tuple

import torch

from .._layout import empty_grads

__all__ = ["load", "is_loaded", "cuda_compiled", "compiled_ops", "lift_tables", "group_tables"]

_LOCK = threading.Lock()
_state: Optional[Tuple[bool, str]] = None


def load() -> Tuple[bool, str]:
    """Load ``equifast._C`` once; returns (ok, reason). Warns once when it cannot be loaded."""
    global _state
    if _state is not None:
        return _state
    with _LOCK:
        if _state is not None:
            return _state
        try:
            importlib.import_module("equifast._C")
            _register_fakes()
            _state = (True, "")
        except Exception as exc:  # missing build, ABI mismatch, missing symbol, ...
            kind = "is not built" if isinstance(exc, ModuleNotFoundError) else "failed to load"
            reason = (f"the compiled extension equifast._C {kind} ({type(exc).__name__}: {exc}); "
                      f"build it with `make build` (or `python setup.py build_ext --inplace`)")
            warnings.warn(f"equifast: {reason}. The 'cpu' and 'cuda' backends are unavailable; "
                          f"'auto' uses the plain-PyTorch backends instead.", RuntimeWarning, stacklevel=3)
            _state = (False, reason)
    return _state


def is_loaded() -> bool:
    return _state is not None and _state[0]


def cuda_compiled() -> bool:
    """True when ``equifast._C`` was built with its CUDA kernels."""
    if not load()[0]:
        return False
    return bool(torch._C._dispatch_has_kernel_for_dispatch_key("equifast_C::lift_conv", "CUDA"))


def compiled_ops():
    """``torch.ops.equifast_C``, loading the library first (a clear error when it is unavailable)."""
    ok, reason = load()
    if not ok:
        raise RuntimeError(f"equifast: {reason}")
    return torch.ops.equifast_C


# ---------------------------------------------------------------------------
# Group tables (int64, cached per group, size, frame and device)
# ---------------------------------------------------------------------------
_TABLES: Dict[tuple, tuple] = {}
_EMPTY: Dict[str, torch.Tensor] = {}


def _empty(device) -> torch.Tensor:
    key = str(device)
    if key not in _EMPTY:
        _EMPTY[key] = torch.empty(0, dtype=torch.int64, device=device)
    return _EMPTY[key]


def _kernel_perm(group, kh: int, kw: int, frame: str, device) -> torch.Tensor:
    if frame != "canonical" or group.order == 1:
        return _empty(device)
    return group.permutations(kh, kw).to(device)


def lift_tables(plan, H: int, W: int, kh: int, kw: int, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(xperm [n, H*W] or empty, kperm [n, kh*kw] or empty) for ``equifast_C::lift_conv``.

    view frame: copy g reads act(x, g⁻¹), i.e. pixel table perm[g⁻¹]; canonical: taps perm_k[g]."""
    group = plan.group
    key = ("lift", id(group), group.name, plan.frame, H, W, kh, kw, str(device))
    tables = _TABLES.get(key)
    if tables is None:
        if plan.frame == "view" and group.order > 1:
            xperm = group.permutations(H, W)[list(group.inverse)].contiguous().to(device)
        else:
            xperm = _empty(device)
        tables = (xperm, _kernel_perm(group, kh, kw, plan.frame, device))
        _TABLES[key] = tables
    return tables


def group_tables(plan, kh: int, kw: int, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(slot [n, n] with slot[g][h] = g⁻¹·h, kperm [n, kh*kw] or empty) for ``equifast_C::group_conv``."""
    group = plan.group
    key = ("group", id(group), group.name, plan.frame, kh, kw, str(device))
    tables = _TABLES.get(key)
    if tables is None:
        tables = (group.slot_table(device), _kernel_perm(group, kh, kw, plan.frame, device))
        _TABLES[key] = tables
    return tables


# ---------------------------------------------------------------------------
# Fake (meta) kernels of the equifast_C ops, for tracing and torch.library.opcheck
# ---------------------------------------------------------------------------
def _register_fakes() -> None:
    from ..ops import fake_forward

    def lift_fake(x, weight, bias, xperm, kperm, order, stride, padding, dilation):
        return fake_forward(x, weight, order, stride, padding, dilation)

    def group_fake(s, weight, bias, slot, kperm, stride, padding, dilation):
        return fake_forward(s, weight, s.shape[1], stride, padding, dilation)

    def lift_backward_fake(grad_out, x, weight, xperm, kperm, order, stride, padding, dilation, output_mask):
        return empty_grads(x, weight, output_mask)

    def group_backward_fake(grad_out, s, weight, slot, kperm, stride, padding, dilation, output_mask):
        return empty_grads(s, weight, output_mask)

    for name, fn in (("lift_conv", lift_fake), ("group_conv", group_fake),
                     ("lift_conv_backward", lift_backward_fake), ("group_conv_backward", group_backward_fake)):
        try:
            torch.library.register_fake(f"equifast_C::{name}", fn)
        except RuntimeError:  # already registered (module reloaded)
            pass


# ---------------------------------------------------------------------------
# The backend entry points shared by "cpu" and "cuda"
# ---------------------------------------------------------------------------
def supports_device(plan, x: torch.Tensor, device_type: str, dtypes) -> Tuple[bool, str]:
    if x.device.type != device_type:
        return False, f"the compiled {device_type} kernels take {device_type} tensors, got {x.device.type}"
    if not plan.group.exact:
        return False, (f"group {plan.group.name} interpolates (bilinear rotations); the compiled kernels take "
                       f"exact groups (pixel permutations: C1, C2, C4, D1, D2, D4 or a custom exact group)")
    if x.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        return False, f"the compiled {device_type} kernels support {names}, got {str(x.dtype).replace('torch.', '')}"
    return True, ""


def lift_conv_forward(x, weight, bias, plan):
    xperm, kperm = lift_tables(plan, x.shape[-2], x.shape[-1], weight.shape[-2], weight.shape[-1], x.device)
    return compiled_ops().lift_conv(x, weight, bias, xperm, kperm, plan.order, list(plan.stride),
                                    list(plan.padding), list(plan.dilation))


def group_conv_forward(s, weight, bias, plan):
    slot, kperm = group_tables(plan, weight.shape[-2], weight.shape[-1], s.device)
    return compiled_ops().group_conv(s, weight, bias, slot, kperm, list(plan.stride), list(plan.padding),
                                     list(plan.dilation))


def lift_conv_backward(grad_out, x, weight, plan, output_mask):
    xperm, kperm = lift_tables(plan, x.shape[-2], x.shape[-1], weight.shape[-2], weight.shape[-1], x.device)
    mask = [bool(output_mask[0]), bool(output_mask[1])]
    gx, gw = compiled_ops().lift_conv_backward(grad_out, x, weight, xperm, kperm, plan.order, list(plan.stride),
                                               list(plan.padding), list(plan.dilation), mask)
    return (gx if mask[0] else None), (gw if mask[1] else None), None


def group_conv_backward(grad_out, s, weight, plan, output_mask):
    slot, kperm = group_tables(plan, weight.shape[-2], weight.shape[-1], s.device)
    mask = [bool(output_mask[0]), bool(output_mask[1])]
    gx, gw = compiled_ops().group_conv_backward(grad_out, s, weight, slot, kperm, list(plan.stride),
                                                list(plan.padding), list(plan.dilation), mask)
    return (gx if mask[0] else None), (gw if mask[1] else None), None


# ``auto`` picks a compiled backend only where the layer is memory-bound: lifting layers with few input
# channels. Measured on CPU (bench/results/cpu-2026-11-23-1thread, one thread, AVX-512, forward+backward):
# with C_in <= 4 the cpu kernels are 1.8-4.3x faster than the naive loop and 1.7-4.4x faster than "torch"
# (paper-MNIST, CIFAR C4/D4, the k7 stem); with many input channels (deep lift 64->64, group_conv
# 4x32->32) oneDNN wins (0.6-0.8x). The CUDA kernels are direct (no tensor cores) and not yet measured on a
# GPU, so the same rule applies there; elsewhere cuDNN through "torch" is expected to win.
MAX_PREFERRED_LIFT_CIN = 4


def preferred(plan, x, weight):
    return x.dim() == 4 and weight.shape[1] <= MAX_PREFERRED_LIFT_CIN
