"""equifast's compiled kernels (``equifast._C``) and the "cpu" / "cuda" backends built on them.

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

__all__ = ["load", "is_loaded", "cuda_compiled", "lift_tables", "group_tables"]

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
        n = group.order
        slot = torch.tensor([[group.cayley[group.inverse[g]][h] for h in range(n)] for g in range(n)],
                            dtype=torch.int64).to(device)
        tables = (slot, _kernel_perm(group, kh, kw, plan.frame, device))
        _TABLES[key] = tables
    return tables


# ---------------------------------------------------------------------------
# Fake (meta) kernels of the equifast_C ops, for tracing and torch.library.opcheck
# ---------------------------------------------------------------------------
def _out_size(H, W, kh, kw, stride, padding, dilation):
    return ((H + padding[0] + padding[1] - dilation[0] * (kh - 1) - 1) // stride[0] + 1,
            (W + padding[2] + padding[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1)


def _fake_stack(inp, n, C_out, Ho, Wo):
    from .._layout import empty_stack, is_channels_last
    return empty_stack((inp.shape[0], n, C_out, Ho, Wo), is_channels_last(inp), dtype=inp.dtype, device=inp.device)


def _fake_grads(inp, weight, output_mask):
    from .._layout import empty_stack, is_channels_last
    empty = inp.new_empty(0)
    gx = empty
    if output_mask[0]:
        if inp.dim() == 5:
            gx = empty_stack(inp.shape, is_channels_last(inp), dtype=inp.dtype, device=inp.device)
        else:
            gx = torch.empty_like(inp, memory_format=torch.channels_last if is_channels_last(inp)
                                  else torch.contiguous_format)
    gw = torch.empty_like(weight, memory_format=torch.contiguous_format) if output_mask[1] else inp.new_empty(0)
    return gx, gw


def _register_fakes() -> None:
    def lift_fake(x, weight, bias, xperm, kperm, order, stride, padding, dilation):
        Ho, Wo = _out_size(x.shape[-2], x.shape[-1], weight.shape[-2], weight.shape[-1], stride, padding, dilation)
        return _fake_stack(x, order, weight.shape[0], Ho, Wo)

    def group_fake(s, weight, bias, slot, kperm, stride, padding, dilation):
        Ho, Wo = _out_size(s.shape[-2], s.shape[-1], weight.shape[-2], weight.shape[-1], stride, padding, dilation)
        return _fake_stack(s, s.shape[1], weight.shape[0], Ho, Wo)

    def lift_bw_fake(grad_out, x, weight, xperm, kperm, order, stride, padding, dilation, output_mask):
        return _fake_grads(x, weight, output_mask)

    def group_bw_fake(grad_out, s, weight, slot, kperm, stride, padding, dilation, output_mask):
        return _fake_grads(s, weight, output_mask)

    for name, fn in (("lift_conv", lift_fake), ("group_conv", group_fake),
                     ("lift_conv_backward", lift_bw_fake), ("group_conv_backward", group_bw_fake)):
        try:
            torch.library.register_fake(f"equifast_C::{name}", fn)
        except RuntimeError:  # already registered (module reloaded)
            pass
