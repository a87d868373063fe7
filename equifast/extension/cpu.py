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

__all__ = ["NAME", "availability", "supports", "preferred", "isa", "lift_conv", "group_conv",
           "lift_conv_backward", "group_conv_backward"]


def isa() -> str:
    """The instruction set of the CPU kernels' GEMM on this machine: "avx512", "avx2" or "baseline"
    (picked at first use; the environment variable EQUIFAST_CPU_ISA=avx2|baseline caps it)."""
    return _backend.compiled_ops().cpu_isa()


def availability(device):
    device = torch.device(device)
    if device.type != "cpu":
        return False, f"the cpu backend runs on CPU tensors, not {device.type}"
    return load()


def supports(plan, x, weight):
    return _backend.supports_common(plan, x, weight, "cpu", DTYPES)


# Measured side by side (bench/results/cpu-2026-11-23-1thread, one thread, AVX-512, forward+backward): on
# lifting layers with C_in <= 4 this backend is 1.8-4.3x faster than the naive loop and 1.7-4.4x faster than
# "torch" (paper-MNIST, CIFAR C4/D4, the k7 stem); on layers with many input channels (deep lift 64->64,
# group_conv 4x32->32) oneDNN wins (the cpu kernel runs at 0.6-0.8x of it), so auto leaves those on "torch".
MAX_PREFERRED_LIFT_CIN = 4


def preferred(plan, x, weight):
    if x.dim() == 4:  # lift_conv: memory-bound with few input channels
        return weight.shape[1] <= MAX_PREFERRED_LIFT_CIN
    return False
