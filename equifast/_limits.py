"""The 32-bit index range of kernel backends.

A kernel that computes element offsets in 32-bit integers (Triton's default ``tl.program_id *
BLOCK + tl.arange`` arithmetic, ``int`` loop counters in C++/CUDA) silently wraps around past
2**31 - 1 and reads or writes the wrong memory. Every backend module declares ``INDEX_BITS``:

* 64: every offset is 64-bit; nothing to check (its large-tensor behaviour is tested for real on
  a GPU, ``tests/test_reliability.py::test_large_tensor_gpu``);
* 32: offsets *inside one sample* are 32-bit and the batch term of every address is 64-bit. The
  registry (``equifast.backends.supports``) then calls ``int32_reason`` before the forward and
  before the backward, so a call past the range is refused before anything is allocated or
  launched: ``RuntimeError: lift_conv: backend 'triton' does not support this call: ... 2^31 ...``.
"""
from __future__ import annotations

from typing import Dict, Sequence, Union

import torch

INT32_MAX = 2 ** 31 - 1
MAX_TAPS = 8   # table entries per pixel of the largest gather table (interpolated D_n: 4 taps, transposed)

ShapeOrTensor = Union[torch.Tensor, Sequence[int]]


def extent(t: ShapeOrTensor) -> int:
    """The largest linear index a kernel may form for ``t``: max(numel, last offset + 1).

    For a tensor it accounts for its strides (a sliced view can address past its numel, and an
    expanded stride-0 view has a small footprint but a large numel: kernels that loop over the
    elements still count to numel). A shape counts as a contiguous tensor (numel)."""
    if isinstance(t, torch.Tensor):
        n = t.numel()
        if n == 0:
            return 0
        last = sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride())) + t.storage_offset()
        return max(n, last + 1)
    total = 1
    for s in t:
        total *= int(s)
    return total


def index_sizes(plan, x: torch.Tensor, weight: torch.Tensor) -> Dict[str, int]:
    """The counts and offsets a 32-bit-per-sample kernel forms for this call (x 4-D or 5-D)."""
    B, H, W = int(x.shape[0]), int(x.shape[-2]), int(x.shape[-1])
    kh, kw = int(weight.shape[-2]), int(weight.shape[-1])
    Ho, Wo = plan.out_size(H, W, kh, kw)
    n, C_in, C_out = plan.order, int(x.shape[-3]), int(weight.shape[0])
    return {"B*H*W": B * H * W, "B*H'*W'": B * Ho * Wo,
            "per-sample extent of the input": extent(x[0]) if B else 0,
            "per-sample output size n*C_out*H'*W'": n * C_out * Ho * Wo,
            "weight size": extent(weight), "n*H*W*taps": n * H * W * MAX_TAPS,
            "n*kh*kw*C_in": n * kh * kw * C_in, "n*kh*kw*C_out": n * kh * kw * C_out}


def int32_reason(plan, x: torch.Tensor, weight: torch.Tensor) -> str:
    """"" when a call fits 32-bit offsets inside one sample, otherwise a clear reason naming the
    count that does not (the gradients have the shapes of x, weight and the output)."""
    for name, v in index_sizes(plan, x, weight).items():
        if v > INT32_MAX:
            return (f"{name} = {v} exceeds 2^31 - 1 = {INT32_MAX}, and this backend indexes inside one "
                    f"sample with 32-bit offsets; use backend='torch' (64-bit indexing) or split the input")
    return ""
