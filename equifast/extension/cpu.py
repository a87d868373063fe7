"""The "cpu" backend: equifast's fused, multi-threaded C++ kernels (csrc/cpu/) on CPU tensors.

Forward, grad input and grad weight of lift_conv and group_conv in both frames, for every exact
group (the group reaches the kernels as integer pixel / kernel-tap / slot tables); float32 and
float64; any input strides (contiguous and channels_last). Interpolated groups (C8, ...) are
refused in ``supports`` so that ``auto`` falls back to the "torch" backend. Grad bias is left to
the op (a plain reduction of grad_out). The kernels use no atomics: results are deterministic.
"""
from __future__ import annotations

import torch

from . import _backend, load
from ._backend import group_conv, group_conv_backward, lift_conv, lift_conv_backward

NAME = "cpu"
DTYPES = (torch.float32, torch.float64)

__all__ = ["NAME", "availability", "supports", "preferred", "lift_conv", "group_conv",
           "lift_conv_backward", "group_conv_backward"]


def availability(device):
    device = torch.device(device)
    if device.type != "cpu":
        return False, f"the cpu backend runs on CPU tensors, not {device.type}"
    return load()


def supports(plan, x, weight):
    return _backend.supports_common(plan, x, weight, "cpu", DTYPES)


# tools/time_cpu_kernel.py (docs/extension.md has the numbers): on lifting layers with C_in <= 4 this
# backend beats "torch" (oneDNN on gathered views) by 1.5-4.4x forward and 1.5-2.5x forward+backward;
# on group convolutions with many channels oneDNN wins (0.25-0.6x), so auto keeps "torch" there.
MAX_PREFERRED_LIFT_CIN = 4


def preferred(plan, x, weight):
    if x.dim() == 4:  # lift_conv: memory-bound with few input channels
        return weight.shape[1] <= MAX_PREFERRED_LIFT_CIN
    return False
