"""The "cuda" backend: equifast's fused CUDA kernels (csrc/cuda/) on CUDA tensors.

Forward: one launch writes all |G| copies; each block stages an input plane in shared memory once
and reads it through each copy's pixel map (affine coefficients passed by value, or an int32
table; rotated indexing from shared memory).
Grad input is a gather (each thread owns one input element) and grad weight a fixed-order block
reduction, so the backward uses no atomics and is deterministic (also under
``torch.use_deterministic_algorithms(True)``). float32, float16, bfloat16 (float accumulation) and
float64; any input strides. Interpolated groups are refused in ``supports`` (auto falls back).
"""
from __future__ import annotations

import torch

from ._compiled import (cuda_compiled, group_conv_backward, group_conv_forward, lift_conv_backward, lift_conv_forward,
                        load, preferred, supports_device)

NAME = "cuda"
INDEX_BITS = 64   # csrc/cuda: int32 indices where every tensor is below 2^31 - 4096, an int64
                  # instantiation otherwise; grid limits checked by TORCH_CHECK before each launch
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

__all__ = ["NAME", "INDEX_BITS", "availability", "supports", "preferred", "lift_conv_forward", "group_conv_forward",
           "lift_conv_backward", "group_conv_backward"]


def availability(device):
    device = torch.device(device)
    if device.type != "cuda":
        return False, f"the cuda backend runs on CUDA tensors, not {device.type}"
    ok, reason = load()
    if not ok:
        return False, reason
    if not cuda_compiled():
        return False, ("equifast._C was built without its CUDA kernels (torch without CUDA or nvcc not found "
                       "at build time; rebuild with EQUIFAST_BUILD_CUDA=1)")
    if not torch.cuda.is_available():
        return False, "no CUDA device is available"
    return True, ""


def supports(plan, x, weight):
    return supports_device(plan, x, "cuda", DTYPES)
