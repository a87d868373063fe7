"""The "cpu" backend: equifast's fused, multi-threaded C++ kernels (csrc/cpu/) on CPU tensors.

Forward, grad input and grad weight of lift_conv and group_conv in both frames, for every exact
group (the group reaches the kernels as integer pixel / kernel-tap / slot tables); float32 and
float64; any input strides (contiguous and channels_last). Interpolated groups (C8, ...) are
refused in ``supports`` so that ``auto`` falls back to the "torch" backend. Grad bias is left to
the op (a plain reduction of grad_out). The kernels use no atomics: results are deterministic.
"""
from __future__ import annotations

import torch

from ._compiled import (compiled_ops, group_conv_backward, group_conv_forward, lift_conv_backward, lift_conv_forward,
                        load, preferred, supports_device)

NAME = "cpu"
INDEX_BITS = 64   # csrc/cpu: every offset, count and loop index is int64_t
DTYPES = (torch.float32, torch.float64)

__all__ = ["NAME", "INDEX_BITS", "availability", "supports", "preferred", "isa", "lift_conv_forward",
           "group_conv_forward", "lift_conv_backward", "group_conv_backward"]


def isa() -> str:
    """The instruction set of the CPU kernels' GEMM on this machine: "avx512", "avx2" or "baseline"
    (picked at first use; the environment variable EQUIFAST_CPU_ISA=avx2|baseline caps it)."""
    return compiled_ops().cpu_isa()


def availability(device):
    device = torch.device(device)
    if device.type != "cpu":
        return False, f"the cpu backend runs on CPU tensors, not {device.type}"
    return load()


def supports(plan, x, weight):
    return supports_device(plan, x, "cpu", DTYPES)
