"""Plain-PyTorch building blocks of exported layers (``equifast.nn.export``) and of the eval fast path.

Everything here computes with torch functions only (conv2d, rot90, flip, reshapes), so a module
traced from these blocks by ``torch.fx`` runs without equifast.

The image action of an exact built-in group (C1, C2, C4, D1, D2, D4) is a rotation by a multiple of
90° after an optional flip of the last dim: ``act(x, g) = rot90(flip(x) if flip else x, k)``.
``image_ops(group)`` finds (k, flip) for every element by comparing with ``group.act`` on probe
images, so the conventions are taken from the group itself, not assumed.
"""
from __future__ import annotations

import functools
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import groups as _groups

Op = Tuple[int, bool]   # (quarter turns k, flip of the last dim first)


def act_plain(x: Tensor, k: int, flip: bool) -> Tensor:
    """``rot90(flip(x, [-1]) if flip else x, k, dims=(-2, -1))`` (the identity returns ``x``)."""
    if flip:
        x = torch.flip(x, [-1])
    if k % 4:
        x = torch.rot90(x, k % 4, [-2, -1])
    return x


@functools.lru_cache(maxsize=None)
def _image_ops(name: str) -> Optional[Tuple[Op, ...]]:
    group = _groups.get(name)
    if not group.exact:
        return None
    sizes = [(4, 4), (5, 5)] if group.quarter_turns else [(4, 4), (5, 5), (3, 4), (4, 5)]
    probes = [torch.arange(h * w, dtype=torch.float64).reshape(1, h, w) for h, w in sizes]
    ops = []
    for g in range(group.order):
        found = None
        for flip in (False, True):
            for k in range(4):
                if all(_same(act_plain(p, k, flip), group.act(p, g)) for p in probes):
                    found = (k, flip)
                    break
            if found:
                break
        if found is None:
            return None
        ops.append(found)
    return tuple(ops)


def _same(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a, b)


def image_ops(group) -> Optional[Tuple[Op, ...]]:
    """(k, flip) per element g with ``group.act(x, g) == act_plain(x, k, flip)``, or None when the
    group's image action is not a quarter turn / flip (interpolated or custom groups)."""
    return _image_ops(_groups.get(group).name)


def conv_padding(padding) -> Tuple[Tuple[int, int], Optional[Tuple[int, int, int, int]]]:
    """Explicit (top, bottom, left, right) -> (padding for conv2d, or (0, 0) plus a pad for F.pad)."""
    pt, pb, pl, pr = padding
    if pt == pb and pl == pr:
        return (pt, pl), None
    return (0, 0), (pl, pr, pt, pb)


def make_conv(weight: Tensor, bias: Optional[Tensor], stride, padding2, dilation) -> nn.Conv2d:
    """An ``nn.Conv2d`` holding copies of ``weight`` [O, I, kh, kw] and ``bias``."""
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[-2:]), stride=tuple(stride),
                     padding=tuple(padding2), dilation=tuple(dilation), bias=bias is not None,
                     device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


def fold_affine(weight: Tensor, bias: Optional[Tensor], affine, out_channels: int):
    """A conv's (weight, bias) with a per-channel affine y -> scale[c]·y + shift[c] folded in (an eval-mode
    batch norm after it). ``weight`` holds m blocks of ``out_channels`` output channels (group-major)."""
    if affine is None:
        return weight, bias
    scale, shift = (t.to(device=weight.device, dtype=weight.dtype) for t in affine)
    m = weight.shape[0] // out_channels
    s = scale.repeat(m)
    folded = weight * s.view(-1, *([1] * (weight.dim() - 1)))
    return folded, (torch.zeros_like(s) if bias is None else bias) * s + shift.repeat(m)


# ---------------------------------------------------------------------------
# Plain modules (traced by torch.fx into the exported graph)
# ---------------------------------------------------------------------------
class PlainLift(nn.Module):
    """[B, C_in, H, W] -> [B, n, C_out, H', W'].

    ``views`` None: one conv with the expanded bank [n*C_out, C_in] (canonical frame).
    ``views`` given (view frame): the n views act(x, g⁻¹) stacked on the batch, one conv with the
    layer's weight, read back as [B, n, C_out, H', W']."""

    def __init__(self, conv: nn.Conv2d, n: int, out_channels: int, pad: Optional[Sequence[int]],
                 views: Optional[Sequence[Op]]):
        super().__init__()
        self.conv = conv
        self.n, self.out_channels = n, out_channels
        self.pad = None if pad is None else tuple(pad)
        self.views = None if views is None else tuple(views)

    def forward(self, x: Tensor) -> Tensor:
        if self.views is not None:
            x = torch.stack([act_plain(x, k, f) for k, f in self.views], 1).flatten(0, 1)
        if self.pad is not None:
            x = F.pad(x, self.pad)
        y = self.conv(x)
        if self.views is not None:
            return y.unflatten(0, (-1, self.n))
        return y.unflatten(1, (self.n, self.out_channels))


class PlainGroupConv(nn.Module):
    """[B, n, C_in, H, W] -> flattened [B, n*C_in, H, W] -> one conv -> [B, n, C_out, H', W']."""

    def __init__(self, conv: nn.Conv2d, n: int, out_channels: int, pad: Optional[Sequence[int]]):
        super().__init__()
        self.conv = conv
        self.n, self.out_channels = n, out_channels
        self.pad = None if pad is None else tuple(pad)

    def forward(self, s: Tensor) -> Tensor:
        x = s.flatten(1, 2)
        if self.pad is not None:
            x = F.pad(x, self.pad)
        return self.conv(x).unflatten(1, (self.n, self.out_channels))


class PlainGroupBatchNorm(nn.Module):
    """[B, n, C, H, W] -> BatchNorm2d(C) on [B*n, C, H, W] (statistics over B, n, H, W) -> back."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        self.bn = bn

    def forward(self, s: Tensor) -> Tensor:
        return self.bn(s.flatten(0, 1)).reshape_as(s)


class PlainGroupPool(nn.Module):
    """Max or mean over dim 1."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def forward(self, s: Tensor) -> Tensor:
        return s.amax(1) if self.mode == "max" else s.mean(1)


def copies_as_channels(s: Tensor, channels_last: bool) -> Tensor:
    """A stack [B, n, C, H, W] as the image [B, n*C, H, W] (channel g*C + c): ``channels_last`` True,
    a channels_last image (a view of a channels_last stack, a copy of any other) with the canonical
    strides, which torch's CPU kernels need to take their channels_last path (``flatten(1, 2)`` of a
    channels_last stack with B = 1 gives a batch stride they do not recognise); else s.flatten(1, 2)."""
    if channels_last:
        return s.permute(0, 3, 4, 1, 2).flatten(3).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    return s.flatten(1, 2)


class PlainPerCopy(nn.Module):
    """[B, n, ...] -> ``module`` on every copy -> [B, n, ...], as ``equifast.nn.pool.per_copy``:
    a 2-D pooling on the copies as channels [B, n*C, H, W] (max pooling in channels_last), any
    other module on the copies as a batch [B*n, ...]."""

    def __init__(self, module: nn.Module, per_channel: bool):
        super().__init__()
        self.module = module
        self.per_channel = per_channel
        self.channels_last = type(module) is nn.MaxPool2d

    def forward(self, s: Tensor) -> Tensor:
        if self.per_channel:
            x = copies_as_channels(s, self.channels_last)
            return self.module(x).unflatten(1, (s.shape[1], s.shape[2]))
        return self.module(s.flatten(0, 1)).unflatten(0, (s.shape[0], s.shape[1]))


class PlainHead(nn.Module):
    """[B, n, ...] -> Linear per copy on the flattened features -> [B, n*K]."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear

    def forward(self, s: Tensor) -> Tensor:
        return self.linear(s.flatten(2)).flatten(1)


class PlainEquivarify(nn.Module):
    """x -> [F(g⁻¹·x) for g] on dim 1 with the views built by plain ops (exact groups)."""

    def __init__(self, module: nn.Module, action: str, inverse_ops: Sequence[Op], cayley: List[List[int]]):
        super().__init__()
        self.module = module
        self.action = action
        self.inverse_ops = tuple(inverse_ops)          # op of g⁻¹ for every g
        self.n = len(cayley)
        self.register_buffer("cayley", torch.tensor(cayley, dtype=torch.int64).flatten(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        n = self.n
        if self.action == "image":
            views = torch.stack([act_plain(x, k, f) for k, f in self.inverse_ops], 1)
        else:
            views = x.index_select(1, self.cayley).unflatten(1, (n, n))          # (g⁻¹·s)[:, h] = s[:, g·h]
            if self.action == "canonical":
                views = torch.stack([act_plain(views[:, g], k, f) for g, (k, f) in enumerate(self.inverse_ops)], 1)
        y = self.module(views.flatten(0, 1))
        return y.unflatten(0, (x.shape[0], n))
