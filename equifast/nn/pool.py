"""Pooling over the group axis (``GroupPool``) and applying plain modules copy by copy (``PerCopy``)."""
from __future__ import annotations

from torch import Tensor, nn

from ._plain import copies_as_channels

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
        input  s: [B, n, C, H, W] -> ``module`` sees [B*n, C, H, W] (2-D pooling: [B, n*C, H, W])
        output:   [B, n, *module_output.shape[1:]]

    Any module applied copy by copy commutes with the regular action, so ``PerCopy(m)`` keeps a
    view-frame network equivariant whatever ``m`` is (pooling, dropout, MLP...). In the canonical
    frame it is equivariant only if ``m`` commutes with the image action (e.g. pointwise ops).

    2-D pooling modules run on the copies as channels ([B, n*C, H, W], a view in either layout);
    ``nn.MaxPool2d`` runs in channels_last and returns a channels_last stack (2-5x faster on CPU than
    torch's NCHW max pooling; see ``per_copy``).

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
        return per_copy(self.module, s)

    def _export_module(self) -> nn.Module:
        from ._plain import PlainPerCopy
        return PlainPerCopy(self.module, pools_per_channel(self.module))

    def export(self) -> nn.Module:
        """Plain PyTorch (the exported module on the [B*n, ...] view); see ``equifast.nn.export``."""
        from ._export import export
        return export(self)


_PER_CHANNEL_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d)


def pools_per_channel(module: nn.Module) -> bool:
    """Whether ``module`` is a 2-D pooling that acts on each channel alone (and returns no indices)."""
    return isinstance(module, _PER_CHANNEL_POOLS) and not getattr(module, "return_indices", False)


def per_copy(module: nn.Module, s: Tensor) -> Tensor:
    """``module`` applied to every copy of a stack s [B, n, ...] in one call.

    A 2-D pooling (``pools_per_channel``) runs on the copies as channels, s.flatten(1, 2) =
    [B, n*C, H, W]: a view of contiguous and channels_last stacks alike. Max pooling runs in
    channels_last (torch's NCHW max pooling is 2-5x slower on CPU), so its output is a channels_last
    stack, which every equifast layer reads without a copy. Any other module sees the copies on the
    batch, [B*n, ...]."""
    B, n = s.shape[:2]
    if s.dim() == 5 and pools_per_channel(module):
        return module(copies_as_channels(s, type(module) is nn.MaxPool2d)).unflatten(1, (n, s.shape[2]))
    y = module(s.reshape(B * n, *s.shape[2:]))
    return y.reshape(B, n, *y.shape[1:])
