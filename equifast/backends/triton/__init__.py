"""The ``triton`` backend: fused Triton kernels for ``lift_conv`` and ``group_conv``.

One GEMM launch each for the forward, the input gradient and the weight gradient (the bias
gradient is left to the op, which reduces grad_out). Two kernels serve everything: the forward
GEMM (``_forward``), which reads exact rotations / flips of the input as affine views and folds the
group into the GEMM's columns through a small pre-pass on the filters, and also computes the input
gradients (a transposed convolution of grad_out, one launch per stride phase); and the
weight-gradient GEMM (``_grad_weight``), the forward's adjoint in its filters. Runs on CUDA
devices, and on CPU tensors under ``TRITON_INTERPRET=1`` (Triton's interpreter, used by the tests).

This module is the backend's face: the kernels live in ``_forward.py`` and ``_grad_weight.py``, the
host functions ``{op}_forward`` / ``{op}_backward`` in ``lift_conv.py`` and ``group_conv.py``; they
are imported on the first call. Importing this module imports nothing from Triton, compiles nothing
and queries no device; without Triton, ``availability`` says why the backend cannot run.
See docs/triton.md.
"""
from __future__ import annotations

import importlib
import os

import torch

NAME = "triton"
INDEX_BITS = 32   # offsets inside one sample are int32 (the batch term of every address is int64)

_triton_error = None


def interpreting() -> bool:
    """True when Triton runs kernels in its interpreter (``TRITON_INTERPRET=1``, CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "") == "1"


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


def availability(device):
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False, "CUDA is not available"
    elif device.type == "cpu":
        if not interpreting():
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
    return True, ""


def _kernels(op: str):
    return importlib.import_module(f"{__name__}.{op}")


def lift_conv_forward(x, weight, bias, plan):
    return _kernels("lift_conv").lift_conv_forward(x, weight, bias, plan)


def group_conv_forward(s, weight, bias, plan):
    return _kernels("group_conv").group_conv_forward(s, weight, bias, plan)


def lift_conv_backward(grad_out, x, weight, plan, output_mask):
    return _kernels("lift_conv").lift_conv_backward(grad_out, x, weight, plan, output_mask)


def group_conv_backward(grad_out, s, weight, plan, output_mask):
    return _kernels("group_conv").group_conv_backward(grad_out, s, weight, plan, output_mask)
