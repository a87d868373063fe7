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
generic over every exact group. The pixel map of a view-frame lift is the group's affine map
([n, 2, 3], no per-size table) for the built-in groups and an int32 pixel table [n, H*W] for a
custom exact group; tables are kept in bounded least-recently-used caches
(``equifast.groups.TABLE_CACHE_ENTRIES`` / ``TABLE_CACHE_BYTES``).
"""
from __future__ import annotations

import importlib
import threading
import warnings
from typing import Optional, Tuple

import torch

from .._layout import empty_grads
from ..groups import TableCache, affine_pixel_table

__all__ = ["load", "is_loaded", "has_kernel", "cuda_compiled", "compiled_ops", "lift_tables", "group_tables",
           "pixel_table"]

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


def has_kernel(op: str, dispatch_key: str) -> bool:
    """True when ``equifast._C`` loads and registers a ``dispatch_key`` ("CPU", "CUDA") kernel for
    ``equifast_C::op``."""
    if not load()[0]:
        return False
    return bool(torch._C._dispatch_has_kernel_for_dispatch_key(f"equifast_C::{op}", dispatch_key))


def cuda_compiled() -> bool:
    """True when ``equifast._C`` was built with its CUDA kernels."""
    return has_kernel("lift_conv", "CUDA")


def compiled_ops():
    """``torch.ops.equifast_C``, loading the library first (a clear error when it is unavailable)."""
    ok, reason = load()
    if not ok:
        raise RuntimeError(f"equifast: {reason}")
    return torch.ops.equifast_C


# ---------------------------------------------------------------------------
# Group tables (cached per group, size, frame and device in a bounded LRU cache)
# ---------------------------------------------------------------------------
_TABLES = TableCache()
_INT32_MAX = 2 ** 31 - 1


def _empty(device) -> torch.Tensor:
    return torch.empty(0, dtype=torch.int64, device=device)


def _index_dtype(size: int) -> torch.dtype:
    return torch.int32 if size <= _INT32_MAX else torch.int64


def _kernel_perm(group, kh: int, kw: int, frame: str, device) -> torch.Tensor:
    if frame != "canonical" or group.order == 1:
        return _empty(device)
    return group.permutations(kh, kw, _index_dtype(kh * kw)).to(device)


def lift_tables(plan, H: int, W: int, kh: int, kw: int, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(xmap, kperm) for ``equifast_C::lift_conv``: the pixel map of copy g's view act(x, g⁻¹)
    (view frame; empty for the canonical frame or the trivial group) as the affine maps [n, 2, 3]
    of the inverses, or an int32 pixel table [n, H*W] for a group without affine maps; and the
    kernel-tap permutations perm_k[g] (canonical frame; empty otherwise)."""
    group = plan.group

    def build():
        if plan.frame == "view" and group.order > 1:
            inverse = list(group.inverse)
            maps = group.affine_maps(H, W)
            if maps is not None:
                xmap = maps[inverse].contiguous().to(device)
            else:
                xmap = group.permutations(H, W, _index_dtype(H * W))[inverse].contiguous().to(device)
        else:
            xmap = _empty(device)
        return xmap, _kernel_perm(group, kh, kw, plan.frame, device)

    return _TABLES.get_or_build(("lift", id(group), group.name, plan.frame, H, W, kh, kw, str(device)), build)


def group_tables(plan, kh: int, kw: int, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(slot [n, n] with slot[g][h] = g⁻¹·h, kperm [n, kh*kw] or empty) for ``equifast_C::group_conv``."""
    group = plan.group
    return _TABLES.get_or_build(("group", id(group), group.name, plan.frame, kh, kw, str(device)),
                                lambda: (group.slot_table(device), _kernel_perm(group, kh, kw, plan.frame, device)))


def pixel_table(xmap: torch.Tensor, n: int, H: int, W: int) -> torch.Tensor:
    """Any pixel map ``lift_tables`` returns, as the int64 pixel table [n, H*W] it stands for
    (view pixel p of copy g reads input pixel table[g, p]); for tests and emulations."""
    if xmap.numel() == 0:
        return torch.arange(H * W, device=xmap.device).expand(n, H * W)
    if xmap.dim() == 3:
        return affine_pixel_table(xmap.cpu(), H, W).to(xmap.device)
    return xmap.long()


# ---------------------------------------------------------------------------
# Fake (meta) kernels of the equifast_C ops, for tracing and torch.library.opcheck
# ---------------------------------------------------------------------------
def _register_fakes() -> None:
    from .._args import check_geometry
    from ..ops import fake_forward

    def checked(name, inp, weight, stride, padding, dilation):
        # the kernels' own checks (csrc/equiconv.h), so that the fake refuses what the kernel refuses
        if len(stride) != 2 or len(padding) != 4 or len(dilation) != 2:
            raise RuntimeError(f"equifast_C::{name}: stride, padding, dilation must have 2, 4, 2 entries")
        if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
            raise RuntimeError(f"equifast_C::{name}: stride and dilation must be >= 1 and padding >= 0")
        try:
            check_geometry(f"equifast_C::{name}", inp.shape[-2:], weight.shape[-2:], stride, padding, dilation)
        except ValueError as exc:
            raise RuntimeError(str(exc)) from None

    def lift_fake(x, weight, bias, xmap, kperm, order, stride, padding, dilation):
        checked("lift_conv", x, weight, stride, padding, dilation)
        return fake_forward(x, weight, order, stride, padding, dilation)

    def group_fake(s, weight, bias, slot, kperm, stride, padding, dilation):
        checked("group_conv", s, weight, stride, padding, dilation)
        return fake_forward(s, weight, s.shape[1], stride, padding, dilation)

    def lift_backward_fake(grad_out, x, weight, xmap, kperm, order, stride, padding, dilation, output_mask):
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
    xmap, kperm = lift_tables(plan, x.shape[-2], x.shape[-1], weight.shape[-2], weight.shape[-1], x.device)
    return compiled_ops().lift_conv(x, weight, bias, xmap, kperm, plan.order, list(plan.stride),
                                    list(plan.padding), list(plan.dilation))


def group_conv_forward(s, weight, bias, plan):
    slot, kperm = group_tables(plan, weight.shape[-2], weight.shape[-1], s.device)
    return compiled_ops().group_conv(s, weight, bias, slot, kperm, list(plan.stride), list(plan.padding),
                                     list(plan.dilation))


def lift_conv_backward(grad_out, x, weight, plan, output_mask):
    xmap, kperm = lift_tables(plan, x.shape[-2], x.shape[-1], weight.shape[-2], weight.shape[-1], x.device)
    mask = [bool(output_mask[0]), bool(output_mask[1])]
    gx, gw = compiled_ops().lift_conv_backward(grad_out, x, weight, xmap, kperm, plan.order, list(plan.stride),
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
