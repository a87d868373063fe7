"""Guards shared by the kernel backends: the 32-bit index range and determinism alerts.

Index range
-----------
A kernel that computes element offsets in 32-bit integers (Triton's default ``tl.program_id *
BLOCK + tl.arange`` arithmetic, ``int`` loop counters in C++/CUDA) silently wraps around past
2**31 - 1 and reads or writes the wrong memory. Such a backend must refuse the call *before
anything is allocated or launched*, from its ``supports(plan, x, weight)``::

    from .. import _limits

    def supports(plan, x, weight):
        reason = _limits.int32_reason(plan, x, weight)
        if reason:
            return False, reason
        ...

``backends.resolve`` calls ``supports`` before the forward and before the backward, so the user
gets ``RuntimeError: lift_conv: backend 'triton' does not support this call: ... 2^31 ...`` and no
kernel runs. The check covers the input, the weight and the output (the gradients have the same
shapes) and the filter bank a group convolution expands (|G|·|weight| elements); a backend with
other large intermediate buffers passes their shapes as ``extra``.

A backend whose offsets are 64-bit throughout does not call the guard and declares so with a
module-level ``INDEX_BITS = 64``; its large-tensor behaviour is then tested for real on a GPU
(``tests/test_reliability.py::test_large_tensor_gpu``).

Determinism
-----------
A backward that accumulates with atomics (order-dependent float sums) is not reproducible.
Call ``alert_not_deterministic("equifast.triton group_conv grad_weight")`` on that path: under
``torch.use_deterministic_algorithms(True)`` it raises ``RuntimeError`` the way PyTorch's own
non-deterministic ops do (a warning with ``warn_only=True``), unless the backend switches to a
deterministic path instead (check ``torch.are_deterministic_algorithms_enabled()``).
"""
from __future__ import annotations

import warnings
from typing import Iterable, Optional, Sequence, Tuple, Union

import torch

INT32_MAX = 2 ** 31 - 1

ShapeOrTensor = Union[torch.Tensor, Sequence[int]]


def _numel(shape: Sequence[int]) -> int:
    total = 1
    for s in shape:
        total *= int(s)
    return total


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
    return _numel(t)


def fits_int32(*tensors: Optional[ShapeOrTensor]) -> bool:
    """True when every tensor (or shape) can be indexed with signed 32-bit offsets."""
    return all(extent(t) <= INT32_MAX for t in tensors if t is not None)


def output_shape(plan, x: torch.Tensor, weight: torch.Tensor) -> Tuple[int, int, int, int, int]:
    """[B, n, C_out, H', W'] of lift_conv / group_conv with this plan (x 4-D or 5-D)."""
    Ho, Wo = plan.out_size(int(x.shape[-2]), int(x.shape[-1]), int(weight.shape[-2]), int(weight.shape[-1]))
    return int(x.shape[0]), plan.order, int(weight.shape[0]), Ho, Wo


def int32_reason(plan, x: torch.Tensor, weight: torch.Tensor,
                 extra: Iterable[ShapeOrTensor] = ()) -> str:
    """"" when a call fits 32-bit offsets, otherwise a clear reason naming the tensor that does not.

    Checks x, weight, the output [B, n, C_out, H', W'] (= grad_out, and grad_x/grad_weight have
    the shapes of x/weight), the |G|-fold filter bank of a group convolution, and ``extra``."""
    out = output_shape(plan, x, weight)
    items = [("input", x), ("weight", weight), ("output", out)]
    if weight.dim() == 5:
        items.append(("expanded filter bank", (plan.order, *weight.shape)))
    items += [(f"buffer {i}", t) for i, t in enumerate(extra)]
    for name, t in items:
        e = extent(t)
        if e > INT32_MAX:
            shape = list(t.shape) if isinstance(t, torch.Tensor) else list(t)
            return (f"the {name} {shape} spans {e} elements, more than 2^31 - 1 = {INT32_MAX}, and this "
                    f"backend indexes with 32-bit offsets; use backend='torch' (64-bit indexing) or "
                    f"split the batch")
    return ""


def check_int32(op: str, backend: str, plan, x: torch.Tensor, weight: torch.Tensor,
                extra: Iterable[ShapeOrTensor] = ()) -> None:
    """Raise ``RuntimeError`` with ``int32_reason`` when the call does not fit 32-bit offsets."""
    reason = int32_reason(plan, x, weight, extra)
    if reason:
        raise RuntimeError(f"{op}: backend {backend!r} cannot run this call: {reason}")


def alert_not_deterministic(caller: str) -> None:
    """Raise (or warn, with warn_only) like PyTorch's non-deterministic ops when
    ``torch.use_deterministic_algorithms(True)`` is on; a no-op otherwise."""
    if not torch.are_deterministic_algorithms_enabled():
        return
    msg = (f"{caller} does not have a deterministic implementation, but you set "
           f"'torch.use_deterministic_algorithms(True)'. You can turn off determinism just for this "
           f"operation, use the 'warn_only=True' option if that's acceptable for your application, "
           f"or pick a deterministic equifast backend (backend='torch').")
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(msg, UserWarning, stacklevel=2)
    else:
        raise RuntimeError(msg)
