"""Convolution layers: ``LiftConv2d`` (image -> stack) and ``GroupConv2d`` (stack -> stack).

Both are thin ``nn.Module`` wrappers around ``equifast.lift_conv`` / ``equifast.group_conv`` with
``nn.Conv2d``-style arguments. A *stack* is a tensor [B, n, C, H, W] holding |G| = n copies.

Frames (see docs/DESIGN):

* ``frame="view"`` (default, the paper's equivarification): copy g is the layer evaluated on
  the view g⁻¹·x. The output transforms by the *regular* action (a permutation of the copies),
  exactly, for any kernel size, stride, padding and dilation.
* ``frame="canonical"`` (Cohen & Welling's G-CNN): copy g is the input convolved with the filter
  rotated by g. The output transforms by the *canonical* action (permute copies and rotate each);
  exact only when the strided sampling grid is centred (odd kernel, "same" padding, stride 1, or
  odd input sizes with stride 2).
"""
from __future__ import annotations

import math
from typing import Union

import torch
from torch import Tensor, nn

from .. import groups as _groups
from .._args import make_plan
from ..ops import group_conv, lift_conv

__all__ = ["LiftConv2d", "GroupConv2d"]


def _pair(v):
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"expected an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _padding_arg(padding):
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
        return padding
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        return tuple(int(p) for p in padding)
    return _pair(padding)


class _GroupConvBase(nn.Module):
    _op = None

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 bias: bool = True, group: Union[str, _groups.Group] = "C4", frame: str = "view",
                 backend: str = "auto", device=None, dtype=None):
        super().__init__()
        if in_channels <= 0 or out_channels <= 0:
            raise ValueError(f"{type(self).__name__}: in_channels and out_channels must be positive, "
                             f"got {in_channels} and {out_channels}")
        if frame not in ("view", "canonical"):
            raise ValueError(f"{type(self).__name__}: frame must be 'view' or 'canonical', got {frame!r}")
        self.group = _groups.get(group)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _padding_arg(padding)
        self.dilation = _pair(dilation)
        self.frame = frame
        self.backend = backend
        # validate the arguments once, with the op's own messages
        make_plan(self.group, self.stride, self.padding, self.dilation, frame, *self.kernel_size, type(self).__name__)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self._weight_shape(), **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    @property
    def order(self) -> int:
        return self.group.order

    def _weight_shape(self):
        raise NotImplementedError

    def reset_parameters(self) -> None:
        """Kaiming-uniform init as ``nn.Conv2d`` (a=√5), fan_in = C_in·kh·kw (lift) or n·C_in·kh·kw (group)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding!r}")
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.bias is None:
            s += ", bias=False"
        s += f", group={self.group.name}, frame={self.frame!r}"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        return s

    def forward(self, x: Tensor) -> Tensor:
        return type(self)._op(x, self.weight, self.bias, group=self.group, stride=self.stride, padding=self.padding,
                              dilation=self.dilation, frame=self.frame, backend=self.backend)

    def output_size(self, H: int, W: int):
        """Spatial output size (H', W') for an H x W input."""
        plan = make_plan(self.group, self.stride, self.padding, self.dilation, self.frame, *self.kernel_size,
                         type(self).__name__)
        return plan.out_size(H, W, *self.kernel_size)


class LiftConv2d(_GroupConvBase):
    """Lifting convolution: an image to a stack of |G| copies.

    ``LiftConv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
    group="C4", frame="view", backend="auto")``

    Shapes:
        input  x: [B, C_in, H, W]
        output:   [B, n, C_out, H', W']  (n = |G|; H', W' as ``nn.Conv2d``)
        weight:   [C_out, C_in, kh, kw]  (shared by all n copies; as many parameters as ``nn.Conv2d``)
        bias:     [C_out]                (shared by all copies)

    ``frame="view"``: out[:, g] = conv2d(g⁻¹·x, weight) — lift(h·x) = h·lift(x) with the regular
    action, exactly, for any kernel, stride, padding, dilation. ``frame="canonical"``:
    out[:, g] = conv2d(x, g·weight) (the G-CNN lifting layer).

    Example::

        >>> import torch, equifast.nn as enn
        >>> layer = enn.LiftConv2d(3, 8, 3, padding=1, group="C4")
        >>> layer(torch.randn(2, 3, 16, 16)).shape
        torch.Size([2, 4, 8, 16, 16])
    """

    _op = staticmethod(lift_conv)

    def _weight_shape(self):
        return (self.out_channels, self.in_channels, *self.kernel_size)

    # ------------------------------------------------------------ deployment
    def filter_bank(self) -> Tensor:
        """The expanded filter bank [n*C_out, C_in, kh, kw]: block g is ``group.act(weight, g)``."""
        n = self.order
        w = self.weight.detach()
        bank = torch.stack([self.group.act(w, g) for g in range(n)], 0)
        return bank.reshape(n * self.out_channels, self.in_channels, *self.kernel_size)

    def view_identity_holds(self) -> bool:
        """Whether the view-frame output equals the canonical one rotated back copy by copy
        (DESIGN §2: exact group, odd square kernel, stride 1, padding = dilation·(k-1)/2)."""
        kh, kw = self.kernel_size
        dh, dw = self.dilation
        pad = self.padding
        if pad == "same":
            pad = (dh * (kh - 1) // 2, dw * (kw - 1) // 2)
        elif pad == "valid":
            pad = (0, 0)
        if len(pad) == 4:
            if pad[0] != pad[1] or pad[2] != pad[3]:
                return False
            pad = (pad[0], pad[2])
        return (self.group.exact and kh == kw and kh % 2 == 1 and self.stride == (1, 1)
                and (not self.group.quarter_turns or dh == dw)
                and pad == (dh * (kh - 1) // 2, dw * (kw - 1) // 2))

    def to_conv2d(self, layout: str = "group_major") -> nn.Conv2d:
        """Export a plain ``nn.Conv2d`` [C_in -> n*C_out] with the expanded filter bank, for deployment.

        Its output y [B, n*C_out, H', W'] holds the canonical-frame copies: with
        ``layout="group_major"`` channel g*C_out + c (``y.view(B, n, C_out, H', W')`` is our stack);
        with ``layout="field_major"`` channel c*n + g (escnn / e2cnn / GrouPy order; see
        ``equifast.interop.from_field_major``).

        * ``frame="canonical"``: y is exactly this layer's output.
        * ``frame="view"``: allowed where the DESIGN identity holds (``view_identity_holds()``); then
          y[:, g] = g·(layer output)[:, g]. ``export()`` appends the fixed re-indexing that undoes the
          rotation, giving exactly the layer's output.
        """
        if self.frame == "view" and not self.view_identity_holds():
            raise ValueError("to_conv2d: a view-frame LiftConv2d is a plain convolution with a rotated filter bank "
                             "only for an exact group, an odd square kernel, stride 1 and 'same' padding; "
                             f"this layer has {self.extra_repr()}")
        if layout not in ("group_major", "field_major"):
            raise ValueError(f"to_conv2d: layout must be 'group_major' or 'field_major', got {layout!r}")
        n, C = self.order, self.out_channels
        pad = self.padding
        padding_mode_pad = None
        if isinstance(pad, tuple) and len(pad) == 4:
            if pad[0] == pad[1] and pad[2] == pad[3]:
                pad = (pad[0], pad[2])
            else:
                padding_mode_pad = pad
                pad = 0
        if padding_mode_pad is not None:
            raise ValueError("to_conv2d: asymmetric explicit padding has no nn.Conv2d equivalent")
        conv = nn.Conv2d(self.in_channels, n * C, self.kernel_size, stride=self.stride, padding=pad,
                         dilation=self.dilation, bias=self.bias is not None,
                         device=self.weight.device, dtype=self.weight.dtype)
        bank = self.filter_bank()
        bias = None if self.bias is None else self.bias.detach().repeat(n)
        if layout == "field_major":
            bank = bank.reshape(n, C, *bank.shape[1:]).transpose(0, 1).reshape(n * C, *bank.shape[1:])
            bias = None if bias is None else bias.reshape(n, C).t().reshape(-1)
        with torch.no_grad():
            conv.weight.copy_(bank)
            if bias is not None:
                conv.bias.copy_(bias)
        return conv

    def export(self) -> nn.Module:
        """A plain-PyTorch module (no equifast ops) computing exactly this layer's output
        [B, n, C_out, H', W']: ``to_conv2d()`` followed, in the view frame, by a fixed pixel gather."""
        return _ExportedLift(self.to_conv2d(), self.group, self.out_channels, self.frame == "view")


class _ExportedLift(nn.Module):
    """nn.Conv2d with the expanded bank, then [B, n*C, H, W] -> [B, n, C, H, W] (view frame: un-rotate copy g by g⁻¹)."""

    def __init__(self, conv: nn.Conv2d, group: _groups.Group, out_channels: int, unrotate: bool):
        super().__init__()
        self.conv = conv
        self.n, self.out_channels = group.order, out_channels
        self.group = group
        self.unrotate = unrotate
        self._perm_cache = {}

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        B, _, H, W = y.shape
        y = y.reshape(B, self.n, self.out_channels, H, W)
        if not self.unrotate:
            return y
        key = (H, W, y.device)
        perm = self._perm_cache.get(key)
        if perm is None:
            perm = self.group.permutations(H, W)[list(self.group.inverse)].to(y.device)   # [n, HW]
            self._perm_cache[key] = perm
        flat = y.reshape(B, self.n, self.out_channels, H * W)
        out = flat.gather(3, perm[None, :, None, :].expand(B, self.n, self.out_channels, H * W))
        return out.reshape(B, self.n, self.out_channels, H, W)


class GroupConv2d(_GroupConvBase):
    """Group convolution: a stack of |G| copies to a stack.

    ``GroupConv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
    group="C4", frame="view", backend="auto")``

    Shapes:
        input  s: [B, n, C_in, H, W]  (any strides; channels_last stacks stay channels_last)
        output:   [B, n, C_out, H', W']
        weight:   [C_out, n, C_in, kh, kw]  (n times the parameters of ``nn.Conv2d(C_in, C_out)``:
                  a standard convolution over the n stacked copies, as the paper's conv2/conv3)
        bias:     [C_out]

    ``frame="view"``: out[:, g] = Σ_h conv2d(s[:, g·h], weight[:, h]) — the paper's layer (the
    convolution of the stacked copies, equivarified; for C4 a cyclic shift of the copies).
    Exactly equivariant under the regular action for any kernel/stride/padding.
    ``frame="canonical"``: out[:, g] = Σ_h conv2d(s[:, h], g·weight[:, g⁻¹·h]) (G-CNN).

    Example::

        >>> import torch, equifast.nn as enn
        >>> layer = enn.GroupConv2d(8, 16, 3, padding=1, group="C4")
        >>> layer(torch.randn(2, 4, 8, 16, 16)).shape
        torch.Size([2, 4, 16, 16, 16])
    """

    _op = staticmethod(group_conv)

    def _weight_shape(self):
        return (self.out_channels, self.order, self.in_channels, *self.kernel_size)

    def filter_bank(self) -> Tensor:
        """The block-permuted filter bank [n*C_out, n*C_in, kh, kw] of the equivalent plain convolution
        over the flattened stack [B, n*C_in, H, W] (``equifast._layout.flatten_stack``)."""
        from ..backends.torch.group_conv import permuted_filter_bank
        return permuted_filter_bank(self.weight.detach(), self.group, self.frame)

    def to_conv2d(self) -> nn.Conv2d:
        """Export a plain ``nn.Conv2d`` [n*C_in -> n*C_out] on group-major flattened stacks:
        ``conv(s.reshape(B, n*C_in, H, W)).view(B, n, C_out, H', W')`` equals this layer's output
        (both frames, any stride; symmetric padding)."""
        pad = self.padding
        if isinstance(pad, tuple) and len(pad) == 4:
            if pad[0] != pad[1] or pad[2] != pad[3]:
                raise ValueError("to_conv2d: asymmetric explicit padding has no nn.Conv2d equivalent")
            pad = (pad[0], pad[2])
        n = self.order
        conv = nn.Conv2d(n * self.in_channels, n * self.out_channels, self.kernel_size, stride=self.stride,
                         padding=pad, dilation=self.dilation, bias=self.bias is not None,
                         device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.filter_bank())
            if self.bias is not None:
                conv.bias.copy_(self.bias.detach().repeat(n))
        return conv
