"""Pooling over the group axis (``GroupPool``) and applying plain modules copy by copy (``PerCopy``)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["GroupPool", "PerCopy", "group_pool"]


def group_pool(s: Tensor, mode: str = "max") -> Tensor:
    """Max or mean over the group axis (dim 1): [B, n, ...] -> [B, ...]."""
    if s.dim() < 2:
        raise ValueError(f"group_pool: expected a stack [B, n, ...], got shape {list(s.shape)}")
    if mode == "max":
        return s.amax(dim=1)
    if mode == "mean":
        return s.mean(dim=1)
    raise ValueError(f"group_pool: mode must be 'max' or 'mean', got {mode!r}")


class GroupPool(nn.Module):
    """The invariant projection: max or mean over the group axis.

    ``GroupPool(mode="max")``

    Shapes:
        input  s: [B, n, C, H, W] (or any [B, n, ...], e.g. scores [B, n, K])
        output:   [B, C, H, W]    ([B, ...])

    For a view-frame stack (regular action) the output is exactly invariant. For a canonical-frame
    stack it transforms like an image (g·out = act(out, g)); a further spatial global pool makes it
    invariant.

    Example::

        >>> import torch, equifast.nn as enn
        >>> enn.GroupPool("max")(torch.randn(2, 4, 8, 5, 5)).shape
        torch.Size([2, 8, 5, 5])
    """

    def __init__(self, mode: str = "max"):
        super().__init__()
        if mode not in ("max", "mean"):
            raise ValueError(f"GroupPool: mode must be 'max' or 'mean', got {mode!r}")
        self.mode = mode

    def forward(self, s: Tensor) -> Tensor:
        return group_pool(s, self.mode)

    def _export_module(self) -> nn.Module:
        from ._plain import PlainGroupPool
        return PlainGroupPool(self.mode)

    def export(self) -> nn.Module:
        """Plain PyTorch (``amax`` / ``mean`` over dim 1); see ``equifast.nn.export``."""
        from ._export import export
        return export(self)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class PerCopy(nn.Module):
    """Apply an image module to every copy of a stack in one call (shared weights).

    ``PerCopy(module)``

    Shapes:
        input  s: [B, n, C, H, W] -> ``module`` sees [B*n, C, H, W]
        output:   [B, n, *module_output.shape[1:]]

    Any module applied copy by copy commutes with the regular action, so ``PerCopy(m)`` keeps a
    view-frame network equivariant whatever ``m`` is (pooling, dropout, MLP...). In the canonical
    frame it is equivariant only if ``m`` commutes with the image action (e.g. pointwise ops).

    An ``nn.MaxPool2d`` runs on a channels_last copy of the [B*n, C, H, W] view and returns a
    contiguous result: the same values, 2-5x faster on CPU than torch's NCHW max pooling (measured
    in bench/inference.py's folder of results).

    Example::

        >>> import torch, equifast.nn as enn
        >>> enn.PerCopy(torch.nn.MaxPool2d(2))(torch.randn(2, 4, 8, 6, 6)).shape
        torch.Size([2, 4, 8, 3, 3])
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, s: Tensor) -> Tensor:
        if s.dim() < 2:
            raise ValueError(f"PerCopy: expected a stack [B, n, ...], got shape {list(s.shape)}")
        B, n = s.shape[:2]
        x = s.reshape(B * n, *s.shape[2:])
        if _pools_channels_last(self.module) and x.dim() == 4 and x.device.type == "cpu":
            y = self.module(x.contiguous(memory_format=torch.channels_last)).contiguous()
        else:
            y = self.module(x)
        return y.reshape(B, n, *y.shape[1:])

    def _export_module(self) -> nn.Module:
        from ._plain import PlainPerCopy
        return PlainPerCopy(self.module, _pools_channels_last(self.module))

    def export(self) -> nn.Module:
        """Plain PyTorch (the exported module on the [B*n, ...] view); see ``equifast.nn.export``."""
        from ._export import export
        return export(self)


def _pools_channels_last(module: nn.Module) -> bool:
    """torch's CPU max pooling is much faster on channels_last input (vectorised over channels)."""
    return type(module) is nn.MaxPool2d and not module.return_indices
