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


# tools/time_cpu_kernel.py (docs/extension.md, 2 threads, loaded machine) measured this backend 1.5-4.4x
# faster than "torch" forward on lifting layers with C_in <= 4; the quieter one-thread benchmark run
# (bench/results/cpu-2026-11-23-1thread, forward+backward) agrees for C_in = 1 (1.8x on paper-MNIST) but
# is mixed for C_in = 3 (0.63x CIFAR C4 3->64, 1.11x CIFAR D4, 0.88x the k7 stem). auto therefore takes
# it only where both agree; on group convolutions with many channels oneDNN wins (0.2-0.6x).
MAX_PREFERRED_LIFT_CIN = 2


def preferred(plan, x, weight):
    if x.dim() == 4:  # lift_conv: memory-bound with few input channels
        return weight.shape[1] <= MAX_PREFERRED_LIFT_CIN
    return False
