"""``GroupBatchNorm2d``: batch normalisation of a stack with statistics shared over the group axis."""
from __future__ import annotations

from typing import Optional, Union

from torch import Tensor, nn

from .. import groups as _groups
from .._layout import is_channels_last

__all__ = ["GroupBatchNorm2d"]


class GroupBatchNorm2d(nn.modules.batchnorm._BatchNorm):
    """Batch norm for stacks: one mean/variance/affine per channel, shared by all |G| copies.

    ``GroupBatchNorm2d(num_features, group=None, eps=1e-5, momentum=0.1, affine=True,
    track_running_stats=True)``

    Shapes:
        input  s: [B, n, C, H, W] with C = ``num_features``
        output:   [B, n, C, H, W] (same layout: contiguous or channels_last stack)

    Statistics are taken over (B, n, H, W), so they do not change when the copies are permuted
    (regular action) or rotated (canonical action): the layer is exactly equivariant in both frames
    (in training mode too). A per-copy ``nn.BatchNorm2d(n*C)`` would break equivariance.
    ``group`` is optional; when given, the group axis is checked against its order.

    Example::

        >>> import torch, equifast.nn as enn
        >>> bn = enn.GroupBatchNorm2d(8, group="C4")
        >>> bn(torch.randn(2, 4, 8, 5, 5)).shape
        torch.Size([2, 4, 8, 5, 5])
    """

    def __init__(self, num_features: int, group: Optional[Union[str, _groups.Group]] = None, eps: float = 1e-5,
                 momentum: Optional[float] = 0.1, affine: bool = True, track_running_stats: bool = True,
                 device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.group = None if group is None else _groups.get(group)

    def _export_module(self) -> nn.Module:
        from ._plain import PlainGroupBatchNorm
        bn = nn.BatchNorm2d(self.num_features, self.eps, self.momentum, self.affine, self.track_running_stats,
                            device=self.weight.device if self.affine else None,
                            dtype=self.weight.dtype if self.affine else None)
        bn.load_state_dict(self.state_dict())
        bn.train(self.training)
        return PlainGroupBatchNorm(bn)

    def export(self) -> nn.Module:
        """Plain PyTorch (``nn.BatchNorm2d(C)`` on the [B*n, C, H, W] view, same statistics); see
        ``equifast.nn.export``."""
        from ._export import export
        return export(self)

    def _check_input_dim(self, input: Tensor) -> None:  # called by _BatchNorm.forward on the flattened view
        if input.dim() not in (2, 4, 5):
            raise ValueError(f"GroupBatchNorm2d: expected a stack [B, n, C, H, W], got {input.dim()}-D input")

    def forward(self, s: Tensor) -> Tensor:
        if s.dim() != 5:
            hint = (f"; for images [B, C, H, W] use torch.nn.BatchNorm2d({self.num_features})" if s.dim() == 4 else "")
            raise ValueError(f"GroupBatchNorm2d: expected a stack [B, n, C={self.num_features}, H, W] (5-D), "
                             f"got {s.dim()}-D shape {list(s.shape)}{hint}")
        B, n, C, H, W = s.shape
        if C != self.num_features:
            raise ValueError(f"GroupBatchNorm2d: expected {self.num_features} channels on dim 2, "
                             f"got shape {list(s.shape)}")
        if self.group is not None and n != self.group.order:
            raise ValueError(f"GroupBatchNorm2d: group axis (dim 1) has size {n} but group {self.group.name} "
                             f"has order {self.group.order}")
        if s.is_contiguous():                                   # [B*n, C, H, W] view
            return super().forward(s.reshape(B * n, C, H, W)).view(B, n, C, H, W)
        if is_channels_last(s):                                 # memory (B, H, W, n, C): [B*H*W*n, C] view
            flat = s.permute(0, 3, 4, 1, 2).reshape(-1, C)
            return super().forward(flat).view(B, H, W, n, C).permute(0, 3, 4, 1, 2)
        return super().forward(s.transpose(1, 2)).transpose(1, 2)   # [B, C, n, H, W] as BatchNorm3d
