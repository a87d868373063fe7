"""The backend interface (see ``equifast.backends``) over the ``equifast_C`` ops, shared by the
"cpu" and "cuda" backend modules: they differ only in device, dtypes and shape preference."""
from __future__ import annotations

from typing import Tuple

import torch

from . import group_tables, lift_tables, load


def compiled_ops():
    """``torch.ops.equifast_C``, loading the library first (a clear error when it is unavailable)."""
    ok, reason = load()
    if not ok:
        raise RuntimeError(f"equifast: {reason}")
    return torch.ops.equifast_C


def supports_common(plan, x: torch.Tensor, weight: torch.Tensor, device_type: str, dtypes) -> Tuple[bool, str]:
    if x.device.type != device_type:
        return False, f"the compiled {device_type} kernels take {device_type} tensors, got {x.device.type}"
    if not plan.group.exact:
        return False, (f"group {plan.group.name} interpolates (bilinear rotations); the compiled kernels take "
                       f"exact groups (pixel permutations: C1, C2, C4, D1, D2, D4 or a custom exact group)")
    if x.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        return False, f"the compiled {device_type} kernels support {names}, got {str(x.dtype).replace('torch.', '')}"
    return True, ""


def lift_conv(x, weight, bias, plan):
    xperm, kperm = lift_tables(plan, x.shape[-2], x.shape[-1], weight.shape[-2], weight.shape[-1], x.device)
    return compiled_ops().lift_conv(x, weight, bias, xperm, kperm, plan.order, list(plan.stride),
                                    list(plan.padding), list(plan.dilation))


def group_conv(s, weight, bias, plan):
    slot, kperm = group_tables(plan, weight.shape[-2], weight.shape[-1], s.device)
    return compiled_ops().group_conv(s, weight, bias, slot, kperm, list(plan.stride), list(plan.padding),
                                     list(plan.dilation))


def lift_conv_backward(grad_out, x, weight, plan, needs):
    xperm, kperm = lift_tables(plan, x.shape[-2], x.shape[-1], weight.shape[-2], weight.shape[-1], x.device)
    gx, gw = compiled_ops().lift_conv_backward(grad_out, x, weight, xperm, kperm, plan.order, list(plan.stride),
                                               list(plan.padding), list(plan.dilation),
                                               [bool(needs[0]), bool(needs[1])])
    return (gx if needs[0] else None), (gw if needs[1] else None), None


def group_conv_backward(grad_out, s, weight, plan, needs):
    slot, kperm = group_tables(plan, weight.shape[-2], weight.shape[-1], s.device)
    gx, gw = compiled_ops().group_conv_backward(grad_out, s, weight, slot, kperm, list(plan.stride),
                                                list(plan.padding), list(plan.dilation),
                                                [bool(needs[0]), bool(needs[1])])
    return (gx if needs[0] else None), (gw if needs[1] else None), None


__all__ = ["load", "supports_common", "lift_conv", "group_conv", "lift_conv_backward", "group_conv_backward"]
