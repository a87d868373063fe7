"""The ``triton`` backend: fused Triton kernels for ``lift_conv`` and ``group_conv``.

One launch each for the forward, the input gradient and the weight gradient (the bias gradient
is left to the op, which reduces grad_out). The group action is folded into the kernels' index
math through small gather tables (see ``_common``), so no rotated copy of the input or of the
weight is materialised. Runs on CUDA devices, and on CPU tensors under ``TRITON_INTERPRET=1``
(Triton's interpreter, used by the tests). Nothing is imported from Triton, compiled or queried
until the first call: importing this module is safe without Triton, and ``availability`` then
says why the backend cannot run. See docs/triton.md.
"""
from __future__ import annotations

import importlib
import os
import sys
import threading

import torch

NAME = "triton"

_MAX_I32 = 2 ** 31 - 1
_triton_error = None
_IMPORT_LOCK = threading.Lock()


def _triton_importable():
    global _triton_error
    if _triton_error is None:
        try:
            import triton  # noqa: F401
            import triton.language  # noqa: F401
            _triton_error = ""
        except Exception as exc:  # pragma: no cover - depends on the environment
            _triton_error = f"triton cannot be imported ({type(exc).__name__}: {exc})"
    return _triton_error


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def availability(device):
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False, "CUDA is not available"
    elif device.type == "cpu":
        if not _interpreting():
            return False, "Triton kernels run on CPU tensors only in the interpreter (set TRITON_INTERPRET=1)"
    else:
        return False, f"device type {device.type!r} is not supported (CUDA, or CPU under TRITON_INTERPRET=1)"
    err = _triton_importable()
    if err:
        return False, err
    return True, ""


def supports(plan, x, weight):
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return False, f"dtype {x.dtype} is not supported (float16, bfloat16, float32)"
    if x.dtype == torch.bfloat16 and x.device.type != "cuda":
        return False, "bfloat16 needs a CUDA device (the Triton interpreter has no bfloat16)"
    B, H, W = x.shape[0], x.shape[-2], x.shape[-1]
    kh, kw = weight.shape[-2:]
    Ho, Wo = plan.out_size(H, W, kh, kw)
    n = plan.order
    C_in, C_out = x.shape[-3], weight.shape[0]
    # Row/column counts are 32-bit program indices, and offsets inside one sample are 32-bit
    # (the batch term of every address is 64-bit), so tensors may exceed 2^31 elements in all.
    extent = sum((size - 1) * abs(stride) for size, stride in zip(x.shape[1:], x.stride()[1:]))
    sizes = {"B*H*W": B * H * W, "B*H'*W'": B * Ho * Wo,
             "per-sample extent of the input": max(extent, x[0].numel() if B else 0),
             "per-sample output size n*C_out*H'*W'": n * C_out * Ho * Wo,
             "weight size": weight.numel(), "n*H*W*taps": n * H * W * 8,
             "n*kh*kw*C_in": n * kh * kw * C_in, "n*kh*kw*C_out": n * kh * kw * C_out}
    for name, v in sizes.items():
        if v > _MAX_I32:
            return False, f"{name} = {v} exceeds 2^31-1 (32-bit indices inside one sample in the Triton kernels)"
    return True, ""


def _kernels(name):
    """The kernel module ``name`` (imported on first use). Importing a submodule sets the package
    attribute of the same name, which would shadow this backend's function of that name, so the
    function is put back (the kernel modules are also callable as the forward, in case the module
    was imported from outside first)."""
    full = f"{__name__}.{name}"
    mod = sys.modules.get(full)
    if mod is None:
        with _IMPORT_LOCK:
            mod = importlib.import_module(full)
    if globals().get(name) is not _API[name]:
        globals().update(_API)
    return mod


def lift_conv(x, weight, bias, plan):
    return _kernels("lift_conv").forward(x, weight, bias, plan)


def group_conv(s, weight, bias, plan):
    return _kernels("group_conv").forward(s, weight, bias, plan)


def lift_conv_backward(grad_out, x, weight, plan, needs):
    return _kernels("lift_conv").backward(grad_out, x, weight, plan, needs)


def group_conv_backward(grad_out, s, weight, plan, needs):
    return _kernels("group_conv").backward(grad_out, s, weight, plan, needs)


_API = {"lift_conv": lift_conv, "group_conv": group_conv}
