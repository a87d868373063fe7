"""Convolution layers: ``LiftConv2d`` (image -> stack) and ``GroupConv2d`` (stack -> stack).

Both are thin ``nn.Module`` wrappers around ``equifast.lift_conv`` / ``equifast.group_conv`` with
``nn.Conv2d``-style arguments. A *stack* is a tensor [B, n, C, H, W] holding |G| = n copies.

Frames (see docs/nn.md):

* ``frame="view"`` (default, the paper's equivarification): copy g is the layer evaluated on
  the view g⁻¹·x. The output transforms by the *regular* action (a permutation of the copies),
  exactly, for any kernel size, stride, padding and dilation.
* ``frame="canonical"`` (Cohen & Welling's G-CNN): copy g is the input convolved with the filter
  rotated by g. The output transforms by the *canonical* action (permute copies and rotate each);
  exact only when the strided sampling grid is centred (odd kernel, "same" padding, stride 1, or
  odd input sizes with stride 2).

``frame=None`` (the default argument) takes ``equifast.nn.get_default_frame()`` ("view" unless
changed with ``equifast.nn.default_frame``).

Eval fast path: in eval mode, when no gradient of the weight is needed (``torch.no_grad()``,
``torch.inference_mode()`` or a frozen weight), a layer skips the op and its per-call filter
expansion where the backend the op would run (``backend`` "torch" or "fourier", or "auto" resolved;
decided once per input geometry) has a cached form:

* "torch" / "cpu" (dense convolution): one convolution with the expanded filter bank, cached (on CPU
  in float32 also in oneDNN's blocked weight layout: ``_DenseConv``). On CPU it computes in
  channels_last (oneDNN's fastest layout): its stacks come out channels_last (memory B, H, W, n, C),
  which every equifast layer reads without a copy;
* "fourier" (``GroupConv2d``, view frame): the group-Fourier filters, cached
  (``equifast.backends.fourier.group_conv.forward_prepared``).

The cache is rebuilt when the weight or bias changes in place (an optimizer step,
``load_state_dict``: the tensors' version counters), moves (``.to()``), or the layer is put in
training mode. Writes through ``.data`` bypass the version counter: call ``clear_cache()`` after
them. ``EQUIFAST_BACKEND`` set in the environment, any other backend (fused GPU kernels),
torch.compile / torch.export tracing and interpolated view-frame lifts always take the op.
"""
from __future__ import annotations

import math
import os
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import groups as _groups
from .._args import make_plan
from .._cache import ParameterCache
from .._layout import flatten_stack
from ..ops import group_conv, lift_conv
from . import _plain
from ._frame import get_default_frame

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


def _cpu_channels_last(t: Tensor) -> Tensor:
    """``t`` (an image or a filter bank) in channels_last on CPU, where oneDNN's convolutions are
    fastest in it (the eval fast path's convolutions read and write channels_last there); as is
    elsewhere."""
    if t.device.type != "cpu":
        return t
    return t.contiguous(memory_format=torch.channels_last)


def _onednn_pointwise():
    """oneDNN's convolution with a pre-reordered weight (the ops torch.compile's CPU backend runs on frozen
    weights), or None where this torch build lacks them."""
    if not torch.backends.mkldnn.is_available():
        return None
    ops = torch.ops.mkldnn
    try:
        return ops._reorder_convolution_weight.default, ops._convolution_pointwise.default
    except (AttributeError, RuntimeError):
        return None


class _DenseConv:
    """One plain convolution with a fixed filter bank: the eval fast path's "dense" operands.

    On CPU in float32 the bank is also reordered once into oneDNN's blocked weight layout, and
    channels_last inputs that need no gradient run oneDNN's convolution on it directly, skipping the
    weight reorder ``F.conv2d`` repeats on every call (noticeable at batch 1, where a call is short).
    Everything else runs ``F.conv2d`` on the bank (the same values to float rounding; tests/test_nn.py)."""

    def __init__(self, weight: Tensor, bias: Optional[Tensor], stride, padding, dilation, pack: bool = True):
        self.weight, self.bias = weight, bias
        self.stride, self.padding, self.dilation = tuple(stride), tuple(padding), tuple(dilation)
        self.packed = None
        cpu32 = weight.device.type == "cpu" and weight.dtype == torch.float32
        ops = _onednn_pointwise() if pack and cpu32 else None
        if ops is not None:
            reorder, self._run = ops
            try:
                self.packed = reorder(weight, list(self.padding), list(self.stride), list(self.dilation), 1, None)
            except RuntimeError:
                self.packed = None

    def __call__(self, x: Tensor) -> Tensor:
        if (self.packed is not None and torch.backends.mkldnn.enabled and x.dtype == torch.float32
                and x.device.type == "cpu" and x.is_contiguous(memory_format=torch.channels_last)
                and not (x.requires_grad and torch.is_grad_enabled())):
            return self._run(x, self.packed, self.bias, list(self.padding), list(self.stride), list(self.dilation),
                             1, "none", [None], "")
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)


class _GroupConvBase(ParameterCache):
    _op = None
    _in_dim = 4
    _input_text = ""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 bias: bool = True, group: Union[str, _groups.Group] = "C4", frame: Optional[str] = None,
                 backend: str = "auto", device=None, dtype=None):
        super().__init__()
        if frame is None:
            frame = get_default_frame()
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
        self._plan = make_plan(self.group, self.stride, self.padding, self.dilation, frame, *self.kernel_size,
                               type(self).__name__)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self._weight_shape(), **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.clear_cache()
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
        self.clear_cache()

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

    # ------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            fast = self._fast_path(x)
            if fast is not None:
                return self._fast_forward(x, *fast)
        if isinstance(x, Tensor) and x.dim() != self._in_dim:
            self._wrong_rank(x)
        return type(self)._op(x, self.weight, self.bias, group=self.group, stride=self.stride, padding=self.padding,
                              dilation=self.dilation, frame=self.frame, backend=self.backend)

    # backend the op would run -> eval fast path with cached operands: "dense" (the expanded filter
    # bank, one F.conv2d) or "fourier" (the group-Fourier filters, ``backends.fourier.forward_prepared``)
    _FAST_PATHS = {"torch": "dense", "cpu": "dense", "fourier": "fourier"}

    def _fast_path(self, x):
        """(path, cached operands) of the eval fast path for input ``x`` (path "dense" or "fourier"), or
        None (the op runs)."""
        if self.backend not in ("auto", "torch", "fourier") or type(x) is not Tensor or x.dim() != self._in_dim:
            return None
        w, b = self.weight, self.bias
        if x.dtype != w.dtype or x.device != w.device:
            return None
        if torch.is_grad_enabled() and (w.requires_grad or (b is not None and b.requires_grad)):
            return None
        if torch.compiler.is_compiling() or "EQUIFAST_BACKEND" in os.environ:
            return None
        path = self._path_for(x)
        operands = None if path is None else self._fast_operands(path)
        return None if operands is None else (path, operands)

    def _path_for(self, x: Tensor) -> Optional[str]:
        """The fast path of the backend the op would run on ``x`` ("auto" resolved), decided once per
        input geometry; None where that backend has no fast path here (fused GPU kernels, a backend that
        refuses the call: the op runs it, or raises its error)."""
        key = (tuple(x.shape), x.stride(), x.dtype, x.device)
        decisions = self.__dict__.setdefault("_fast_path_decisions", {})
        if key not in decisions:
            from .. import backends as _backends
            op = "lift_conv" if self._in_dim == 4 else "group_conv"
            try:
                name = _backends.resolve(self.backend, self._plan, x, self.weight, op).NAME
            except (RuntimeError, ValueError):
                name = None
            if len(decisions) > 64:
                decisions.clear()
            decisions[key] = self._FAST_PATHS.get(name)
        return decisions[key]

    def _fast_operands(self, path: str):
        """The cached operands of fast path ``path``, rebuilt when stale (None: no such fast path)."""
        operands = self.cached(dict)                        # emptied whenever a parameter changes
        if path not in operands:
            with torch.inference_mode(False), torch.no_grad():
                operands[path] = self._build_fast_operands(path)
        return operands[path]

    def _build_fast_operands(self, path: str):
        raise NotImplementedError

    def _fast_forward(self, x: Tensor, path: str, operands) -> Tensor:
        raise NotImplementedError


    def _wrong_rank(self, x: Tensor) -> None:
        raise NotImplementedError

    def output_size(self, H: int, W: int):
        """Spatial output size (H', W') for an H x W input."""
        return self._plan.out_size(H, W, *self.kernel_size)

    # ------------------------------------------------------------ deployment
    def _conv_padding(self):
        return _plain.conv_padding(self._plan.padding)

    def _symmetric_padding(self, what: str):
        pad2, extra = self._conv_padding()
        if extra is not None:
            raise ValueError(f"{what}: asymmetric explicit padding {self.padding} has no nn.Conv2d equivalent; "
                             f"export() handles it (nn.functional.pad before the conv)")
        return pad2

    def export(self) -> nn.Module:
        """A plain-PyTorch module (a ``torch.fx.GraphModule`` of torch ops and ``nn.Conv2d``) computing
        this layer's output; scriptable, ``torch.export``-able, and runnable without equifast
        (see ``equifast.nn.export``)."""
        from ._export import export
        return export(self)


class LiftConv2d(_GroupConvBase):
    """Lifting convolution: an image to a stack of |G| copies.

    ``LiftConv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
    group="C4", frame=None, backend="auto")``  (``frame=None``: ``equifast.nn.get_default_frame()``)

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
    _in_dim = 4

    def _weight_shape(self):
        return (self.out_channels, self.in_channels, *self.kernel_size)

    def _wrong_rank(self, x: Tensor) -> None:
        if x.dim() == 5:
            raise ValueError(f"LiftConv2d: got a 5-D stack {list(x.shape)}; a lifting layer takes images "
                             f"[B, C_in={self.in_channels}, H, W]. Use GroupConv2d on stacks (or "
                             f"equifast.nn.PerCopy(nn.Conv2d(...)) to convolve every copy alike)")
        raise ValueError(f"LiftConv2d: expected an image [B, C_in={self.in_channels}, H, W] (4-D), "
                         f"got {x.dim()}-D shape {list(x.shape)}")

    # ------------------------------------------------------------ eval fast path
    def _build_fast_operands(self, path: str):
        if path != "dense":
            return None
        n = self.order
        bias = None if self.bias is None else self.bias.detach()
        pad2, _ = self._conv_padding()
        if self.frame == "canonical":
            return _DenseConv(_cpu_channels_last(self.filter_bank()), None if bias is None else bias.repeat(n),
                              self.stride, pad2, self.dilation), None
        ops = _plain.image_ops(self.group)
        if ops is None:
            return None                               # interpolated views: the op
        # the stacked views it convolves are contiguous, never channels_last: no blocked bank
        return (_DenseConv(self.weight.detach(), bias, self.stride, pad2, self.dilation, pack=False),
                tuple(ops[i] for i in self.group.inverse))

    def _fast_forward(self, x: Tensor, path: str, operands) -> Tensor:
        conv, views = operands
        _, extra = self._conv_padding()
        n = self.order
        if views is not None:
            x = torch.stack([_plain.act_plain(x, k, f) for k, f in views], 1).flatten(0, 1)
        else:
            x = _cpu_channels_last(x)
        if extra is not None:
            x = F.pad(x, extra)
        y = conv(x)
        if views is not None:
            return y.unflatten(0, (-1, n))
        return y.unflatten(1, (n, self.out_channels))

    # ------------------------------------------------------------ deployment
    def filter_bank(self) -> Tensor:
        """The expanded filter bank [n*C_out, C_in, kh, kw]: block g is ``group.act(weight, g)``."""
        n = self.order
        w = self.weight.detach()
        bank = self.group.act_all(w)                                   # [n, C_out, C_in, kh, kw]
        return bank.reshape(n * self.out_channels, self.in_channels, *self.kernel_size)

    def view_identity_holds(self) -> bool:
        """Whether the view-frame output equals the canonical one rotated back copy by copy
        (exact group, odd square kernel, stride 1, padding = dilation·(k-1)/2)."""
        kh, kw = self.kernel_size
        dh, dw = self.dilation
        pt, pb, pl, pr = self._plan.padding
        return (self.group.exact and kh == kw and kh % 2 == 1 and self.stride == (1, 1)
                and (not self.group.quarter_turns or dh == dw)
                and (pt, pb, pl, pr) == (dh * (kh - 1) // 2,) * 2 + (dw * (kw - 1) // 2,) * 2)

    def to_conv2d(self, layout: str = "group_major") -> nn.Conv2d:
        """Export a plain ``nn.Conv2d`` [C_in -> n*C_out] with the expanded filter bank, for deployment.

        Its output y [B, n*C_out, H', W'] holds the canonical-frame copies: with
        ``layout="group_major"`` channel g*C_out + c (``y.view(B, n, C_out, H', W')`` is our stack);
        with ``layout="field_major"`` channel c*n + g (escnn / e2cnn / GrouPy order; see
        ``equifast.interop.from_field_major``).

        * ``frame="canonical"``: y is exactly this layer's output.
        * ``frame="view"``: allowed where the identity holds (``view_identity_holds()``); then
          y[:, g] = g·(layer output)[:, g]. ``export()`` reproduces a view-frame layer at any stride
          (the views by rot90 / flip, then one conv).
        """
        if layout not in ("group_major", "field_major"):
            raise ValueError(f"to_conv2d: layout must be 'group_major' or 'field_major', got {layout!r}")
        if self.frame == "view" and not self.view_identity_holds():
            raise ValueError("to_conv2d: a view-frame LiftConv2d is a plain convolution with a rotated filter bank "
                             "only for an exact group, an odd square kernel, stride 1 and 'same' padding; "
                             f"this layer has {self.extra_repr()}. Use export() for any stride.")
        n, C = self.order, self.out_channels
        pad2 = self._symmetric_padding("to_conv2d")
        bank = self.filter_bank()
        bias = None if self.bias is None else self.bias.detach().repeat(n)
        if layout == "field_major":
            bank = bank.reshape(n, C, *bank.shape[1:]).transpose(0, 1).reshape(n * C, *bank.shape[1:])
            bias = None if bias is None else bias.reshape(n, C).t().reshape(-1)
        return _plain.make_conv(bank, bias, self.stride, pad2, self.dilation)

    def _export_module(self, affine=None) -> nn.Module:
        """The plain module; ``affine`` = (scale, shift) [C_out] is folded into the conv (export folds an
        eval-mode batch norm that follows the layer)."""
        n, C = self.order, self.out_channels
        pad2, extra = self._conv_padding()
        bias = None if self.bias is None else self.bias.detach()
        if self.frame == "canonical":
            bank, bias = _plain.fold_affine(self.filter_bank(), None if bias is None else bias.repeat(n), affine, C)
            conv = _plain.make_conv(bank, bias, self.stride, pad2, self.dilation)
            return _plain.PlainLift(conv, n, C, extra, None)
        ops = _plain.image_ops(self.group)
        if ops is None:
            raise ValueError(f"export: a view-frame LiftConv2d with group {self.group.name} samples its views "
                             f"by interpolation, which depends on the image size and has no plain-PyTorch form; "
                             f"exact groups (C1, C2, C4, D1, D2, D4) export, and so does frame='canonical'")
        weight, bias = _plain.fold_affine(self.weight.detach(), bias, affine, C)
        conv = _plain.make_conv(weight, bias, self.stride, pad2, self.dilation)
        return _plain.PlainLift(conv, n, C, extra, [ops[i] for i in self.group.inverse])


class GroupConv2d(_GroupConvBase):
    """Group convolution: a stack of |G| copies to a stack.

    ``GroupConv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
    group="C4", frame=None, backend="auto")``  (``frame=None``: ``equifast.nn.get_default_frame()``)

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
    _in_dim = 5

    def _weight_shape(self):
        return (self.out_channels, self.order, self.in_channels, *self.kernel_size)

    def _wrong_rank(self, x: Tensor) -> None:
        n = self.order
        if x.dim() == 4:
            raise ValueError(f"GroupConv2d: got a 4-D tensor {list(x.shape)}; it takes stacks "
                             f"[B, n={n}, C_in={self.in_channels}, H, W]. Lift images with LiftConv2d first; a "
                             f"flattened stack [B, n*C, H, W] is x.unflatten(1, ({n}, C)) (group-major) or "
                             f"equifast.interop.from_field_major(x, {n}) (escnn's field-major channels)")
        raise ValueError(f"GroupConv2d: expected a stack [B, n={n}, C_in={self.in_channels}, H, W] (5-D), "
                         f"got {x.dim()}-D shape {list(x.shape)}")

    # ------------------------------------------------------------ eval fast path
    def _build_fast_operands(self, path: str):
        if path == "fourier":
            from ..backends.fourier.group_conv import prepare_weight
            w = self.weight.detach()
            bias = None if self.bias is None else self.bias.detach()
            return prepare_weight(w, self.group, w.device, w.dtype), bias
        bias = None if self.bias is None else self.bias.detach().repeat(self.order)
        return _DenseConv(_cpu_channels_last(self.filter_bank()), bias, self.stride, self._conv_padding()[0],
                          self.dilation)

    def _fast_forward(self, s: Tensor, path: str, operands) -> Tensor:
        if path == "fourier":
            from ..backends.fourier.group_conv import forward_prepared
            prepared, bias = operands
            return forward_prepared(s, prepared, bias, self._plan)
        _, extra = self._conv_padding()
        x = _cpu_channels_last(flatten_stack(s))
        if extra is not None:
            x = F.pad(x, extra)
        return operands(x).unflatten(1, (self.order, self.out_channels))

    # ------------------------------------------------------------ deployment
    def filter_bank(self, layout: str = "group_major") -> Tensor:
        """The block-permuted filter bank [n*C_out, n*C_in, kh, kw] of the equivalent plain convolution
        over the flattened stack: ``layout="group_major"`` reads [B, n*C_in, H, W] (channel g*C + c,
        ``s.flatten(1, 2)``) and writes channel g*C_out + c; ``"field_major"`` reads and writes channel
        c*n + g (escnn / e2cnn)."""
        from ..backends.torch.group_conv import permuted_filter_bank
        if layout not in ("group_major", "field_major"):
            raise ValueError(f"filter_bank: layout must be 'group_major' or 'field_major', got {layout!r}")
        bank = permuted_filter_bank(self.weight.detach(), self.group, self.frame)
        if layout == "field_major":
            n, O, I = self.order, self.out_channels, self.in_channels
            bank = bank.reshape(n, O, n, I, *self.kernel_size).permute(1, 0, 3, 2, 4, 5) \
                       .reshape(O * n, I * n, *self.kernel_size)
        return bank

    def to_conv2d(self, layout: str = "group_major") -> nn.Conv2d:
        """Export a plain ``nn.Conv2d`` [n*C_in -> n*C_out] equal to this layer on flattened stacks
        (both frames, any stride; symmetric padding — ``export()`` also handles asymmetric padding).

        * ``layout="group_major"``: ``conv(s.flatten(1, 2)).unflatten(1, (n, C_out))`` is this layer's
          output (channel g*C + c).
        * ``layout="field_major"``: input and output channel c*n + g, escnn / e2cnn's layout:
          ``from_field_major(conv(to_field_major(s)), n)`` is this layer's output.
        """
        if layout not in ("group_major", "field_major"):
            raise ValueError(f"to_conv2d: layout must be 'group_major' or 'field_major', got {layout!r}")
        pad2 = self._symmetric_padding("to_conv2d")
        bias = None if self.bias is None else self.bias.detach()
        if bias is not None:
            bias = bias.repeat(self.order) if layout == "group_major" else bias.repeat_interleave(self.order)
        return _plain.make_conv(self.filter_bank(layout), bias, self.stride, pad2, self.dilation)

    def _export_module(self, affine=None) -> nn.Module:
        """The plain module; ``affine`` = (scale, shift) [C_out] is folded into the conv."""
        pad2, extra = self._conv_padding()
        bias = None if self.bias is None else self.bias.detach().repeat(self.order)
        bank, bias = _plain.fold_affine(self.filter_bank(), bias, affine, self.out_channels)
        conv = _plain.make_conv(bank, bias, self.stride, pad2, self.dilation)
        return _plain.PlainGroupConv(conv, self.order, self.out_channels, extra)
