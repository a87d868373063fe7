"""Zero-copy conversion between equifast stacks and the field-major layout of escnn / e2cnn / GrouPy.

equifast stacks are [B, n, C, H, W] (group axis second). escnn/e2cnn regular fields and GrouPy's
P4/P4M feature maps are plain 4-D tensors [B, C*n, H, W] whose channel ``c*n + g`` holds field
(channel) c at group element g — i.e. memory ordered like [B, C, n, H, W].

* ``from_field_major(y, n)``: [B, C*n, H, W] -> [B, n, C, H, W] as a *view* of ``y`` (no copy: same
  storage, permuted strides). equifast's ops accept such strided stacks directly.
* ``to_field_major(s)``: [B, n, C, H, W] -> [B, C*n, H, W]; a view (no copy) when ``s`` has
  field-major memory (e.g. it came from ``from_field_major``), otherwise one copy
  (``copy="never"`` raises instead).

Round trip: ``to_field_major(from_field_major(y, n))`` shares ``y``'s storage
(``.data_ptr()`` equal).

Example (an escnn regular-field tensor through an equifast group convolution)::

    >>> import torch, equifast
    >>> from equifast.interop import from_field_major, to_field_major
    >>> y = torch.randn(2, 8 * 4, 16, 16)            # escnn: 8 regular C4 fields, channel c*4 + g
    >>> s = from_field_major(y, 4)                    # [2, 4, 8, 16, 16], no copy
    >>> s.data_ptr() == y.data_ptr()
    True
    >>> w = torch.randn(16, 4, 8, 3, 3)
    >>> out = equifast.group_conv(s, w, padding=1, frame="canonical")   # escnn's conventions
    >>> to_field_major(out).shape                     # back to [B, C*n, H, W] for escnn
    torch.Size([2, 64, 16, 16])

The canonical frame follows escnn's conventions for C_n (docs/conventions.md): an escnn ``R2Conv`` between
regular fields, exported to a plain conv, is a canonical-frame ``lift_conv`` / ``group_conv``.
GrouPy orders the elements of p4 / p4m its own way; the channel layout is the same, but map its
element order onto equifast's (``groups.get("C4")``: element k = rotation by 90°·k counter-clockwise)
before comparing numbers.

``from_escnn(module)`` converts an escnn network (R2Conv between trivial and regular fields,
InnerBatchNorm, GroupPooling, pointwise nonlinearities, pointwise pooling and dropout, and
SequentialModule / IdentityModule around them) into the equivalent canonical-frame equifast layers
with escnn's weights, for C_N / D_N with N in (1, 2, 4).
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor, nn

__all__ = ["from_field_major", "to_field_major", "is_field_major", "from_escnn"]


def from_field_major(y: Tensor, n: int) -> Tensor:
    """[B, C*n, H, W] (channel c*n + g) -> [B, n, C, H, W] view sharing ``y``'s storage (no copy)."""
    if y.dim() != 4:
        raise ValueError(f"from_field_major: expected [B, C*n, H, W] (4-D), got shape {list(y.shape)}")
    B, Cn, H, W = y.shape
    if n <= 0 or Cn % n:
        raise ValueError(f"from_field_major: {Cn} channels are not a multiple of the group order n={n}")
    return y.unflatten(1, (Cn // n, n)).transpose(1, 2)


def is_field_major(s: Tensor) -> bool:
    """True when the stack [B, n, C, H, W] can be viewed as [B, C*n, H, W] without a copy."""
    if s.dim() != 5:
        return False
    t = s.transpose(1, 2)
    B, C, n, H, W = t.shape
    try:
        t.view(B, C * n, H, W)
        return True
    except RuntimeError:
        return False


def to_field_major(s: Tensor, copy: str = "if_needed") -> Tensor:
    """[B, n, C, H, W] -> [B, C*n, H, W] (channel c*n + g).

    A view (no copy) when ``s`` has field-major memory; otherwise ``copy="if_needed"`` (default)
    copies once and ``copy="never"`` raises."""
    if s.dim() != 5:
        raise ValueError(f"to_field_major: expected a stack [B, n, C, H, W] (5-D), got shape {list(s.shape)}")
    if copy not in ("if_needed", "never"):
        raise ValueError(f"to_field_major: copy must be 'if_needed' or 'never', got {copy!r}")
    B, n, C, H, W = s.shape
    t = s.transpose(1, 2)
    try:
        return t.view(B, C * n, H, W)
    except RuntimeError:
        if copy == "never":
            raise ValueError("to_field_major: this stack's memory is not field-major ([B, C, n, H, W]); "
                             "a copy is needed (copy='if_needed')") from None
        return t.reshape(B, C * n, H, W)


# ---------------------------------------------------------------------------
# escnn -> equifast
# ---------------------------------------------------------------------------
def from_escnn(module, check: bool = True) -> nn.Module:
    """The equifast equivalent of an escnn module, with its weights (escnn's frame is equifast's
    ``frame="canonical"``).

    Converts:

    ===============================================  ===============================================
    escnn                                            equifast / torch
    ===============================================  ===============================================
    ``R2Conv`` trivial -> regular fields             ``LiftConv2d(..., frame="canonical")``
    ``R2Conv`` regular -> regular fields             ``GroupConv2d(..., frame="canonical")``
    ``InnerBatchNorm`` (regular / trivial fields)    ``GroupBatchNorm2d`` / ``nn.BatchNorm2d``
    ``GroupPooling``                                 ``GroupPool("max")``
    ``ReLU``, ``ELU``, ``LeakyReLU``,                ``nn.ReLU``, ``nn.ELU``, ``nn.LeakyReLU``,
    ``PointwiseNonLinearity``, ``PointwiseDropout``  ``nn.Sigmoid`` / ``nn.Tanh``, ``nn.Dropout``
    ``PointwiseMaxPool2D`` / ``AvgPool2D`` /         ``PerCopy(nn.MaxPool2d / AvgPool2d /
    ``AdaptiveAvgPool2D`` / ``AdaptiveMaxPool2D``    AdaptiveAvgPool2d / AdaptiveMaxPool2d)`` on stacks
    ``SequentialModule``, ``IdentityModule``         ``nn.Sequential``, ``nn.Identity``
    ===============================================  ===============================================

    Groups: escnn's ``rot2dOnR2(N)`` and ``flipRot2dOnR2(N)`` for N in (1, 2, 4) (C_N / D_N, whose
    rotations are exact on the pixel grid) and ``flip2dOnR2()`` (D1). The element order is matched by the image action, so no
    ordering is assumed; with ``check=True`` every expanded filter bank is compared with escnn's
    (a mismatch raises instead of giving a different network).

    The result takes plain tensors: images [B, C, H, W] where escnn has trivial fields, stacks
    [B, n, C, H, W] where it has regular fields (``from_field_major(x.tensor, n)`` converts an escnn
    tensor, ``to_field_major`` converts back). Anything else raises a ValueError naming the module.

    Example (escnn installed)::

        from escnn import gspaces, nn as escnn_nn
        gs = gspaces.rot2dOnR2(4)
        t, r = escnn_nn.FieldType(gs, [gs.trivial_repr]), escnn_nn.FieldType(gs, [gs.regular_repr] * 8)
        net = escnn_nn.SequentialModule(escnn_nn.R2Conv(t, r, 5, padding=2), escnn_nn.InnerBatchNorm(r),
                                        escnn_nn.ReLU(r), escnn_nn.GroupPooling(r)).eval()
        ours = equifast.interop.from_escnn(net)          # Sequential(LiftConv2d, GroupBatchNorm2d, ReLU, GroupPool)
        x = torch.randn(2, 1, 29, 29)
        torch.testing.assert_close(ours(x), net(escnn_nn.GeometricTensor(x, t)).tensor)
    """
    kind = type(module).__name__
    convert = _ESCNN_CONVERTERS.get(kind)
    if convert is None:
        raise ValueError(f"from_escnn: no equifast equivalent for escnn's {kind}; supported: "
                         f"{', '.join(sorted(_ESCNN_CONVERTERS))}")
    out = convert(module, check)
    out.train(module.training)
    return out


def _field_kind(field_type, what: str) -> str:
    """'image' (all trivial fields) or 'stack' (all regular fields)."""
    regular = field_type.gspace.regular_repr.name
    reps = field_type.representations
    if all(r.is_trivial() for r in reps):
        return "image"
    if all(r.name == regular for r in reps):
        return "stack"
    raise ValueError(f"from_escnn: {what} has fields {sorted(set(r.name for r in reps))}; equifast layers take "
                     f"only trivial fields (images) or regular fields (stacks)")


_SLOTS: Dict[str, tuple] = {}


def _escnn_group(gspace):
    """(equifast group name, slot[g] = escnn regular-field channel of equifast element g)."""
    G = gspace.fibergroup
    family = type(G).__name__
    if family == "CyclicGroup":
        N = G.order()
        candidates = [f"C{N}"] + (["D1"] if N == 2 else [])     # escnn's flip2dOnR2 is a C2 of flips
    elif family == "DihedralGroup":
        N = G.order() // 2
        candidates = [f"D{N}"]
    else:
        raise ValueError(f"from_escnn: equifast has no group for escnn's {G.name} ({family}); it converts "
                         f"rot2dOnR2(N), flipRot2dOnR2(N) and flip2dOnR2 for N in (1, 2, 4)")
    if N not in (1, 2, 4):
        raise ValueError(f"from_escnn: escnn's {G.name} rotates by 360/{N} degrees; equifast reproduces escnn's "
                         f"filters only where the rotations are exact on the pixel grid (N in 1, 2, 4)")
    key = repr(gspace)
    if key not in _SLOTS:
        for name in candidates:
            slot = _match_elements(gspace, name)
            if slot is not None:
                _SLOTS[key] = (name, slot)
                break
        else:
            raise ValueError(f"from_escnn: escnn's {G.name} ({gspace!r}) does not act on images as equifast's "
                             f"{' or '.join(candidates)} (a flip axis other than escnn's default?)")
    return _SLOTS[key]


def _match_elements(gspace, name: str):
    """slot[g] for equifast's group ``name``, or None when escnn's elements act on images otherwise."""
    from escnn import nn as escnn_nn
    from . import groups as _groups
    group = _groups.get(name)
    n = group.order
    if gspace.fibergroup.order() != n:
        return None
    trivial = escnn_nn.FieldType(gspace, [gspace.trivial_repr])
    regular = escnn_nn.FieldType(gspace, [gspace.regular_repr])
    probe = torch.arange(25, dtype=torch.float32).reshape(1, 1, 5, 5)
    onehot = torch.zeros(1, n, 1, 1)
    onehot[0, 0] = 1
    slot = [None] * n
    for element in gspace.fibergroup.elements:
        image = escnn_nn.GeometricTensor(probe, trivial).transform(element).tensor
        matches = [g for g in range(n) if torch.allclose(group.act(probe, g), image, atol=1e-3)]
        if len(matches) != 1:
            return None
        channel = escnn_nn.GeometricTensor(onehot, regular).transform(element).tensor.flatten().argmax().item()
        slot[matches[0]] = int(channel)
    return slot if sorted(slot) == list(range(n)) else None


def _convert_r2conv(m, check):
    from .nn import GroupConv2d, LiftConv2d
    name, slot = _escnn_group(m.in_type.gspace)
    src, dst = _field_kind(m.in_type, "R2Conv's in_type"), _field_kind(m.out_type, "R2Conv's out_type")
    if dst != "stack":
        raise ValueError("from_escnn: R2Conv to trivial fields has no equifast layer (equifast convolutions output "
                         "regular fields); pool over the group with GroupPooling instead")
    if m.groups != 1 or m.padding_mode != "zeros":
        raise ValueError(f"from_escnn: R2Conv with groups={m.groups}, padding_mode={m.padding_mode!r} has no equifast "
                         f"layer (groups=1, zero padding only)")
    n = len(slot)
    with torch.no_grad():
        filt, bias = m.expand_parameters()
    filt = filt.detach()
    C_out = m.out_type.size // n
    rows = filt.reshape(C_out, n, *filt.shape[1:])[:, slot]               # [C_out, n(g), in, kh, kw]
    kw = dict(stride=m.stride, padding=m.padding, dilation=m.dilation, bias=m.bias is not None,
              group=name, frame="canonical", dtype=filt.dtype, device=filt.device)
    if src == "image":
        layer = LiftConv2d(m.in_type.size, C_out, m.kernel_size, **kw)
        weight = rows[:, 0]
        full = rows.transpose(0, 1).reshape(n * C_out, *filt.shape[1:])
    else:
        C_in = m.in_type.size // n
        cols = rows.reshape(C_out, n, C_in, n, *filt.shape[2:])[:, :, :, slot]     # [C_out, g, C_in, h, kh, kw]
        weight = cols[:, 0].transpose(1, 2)                                         # [C_out, h, C_in, kh, kw]
        layer = GroupConv2d(C_in, C_out, m.kernel_size, **kw)
        full = cols.permute(1, 0, 3, 2, 4, 5).reshape(n * C_out, n * C_in, *filt.shape[2:])
    with torch.no_grad():
        layer.weight.copy_(weight)
        if layer.bias is not None:
            b = bias.detach().reshape(C_out, n)
            if check and not torch.allclose(b, b[:, :1].expand_as(b), atol=1e-6):
                raise ValueError("from_escnn: R2Conv's bias differs between the copies of a field")
            layer.bias.copy_(b[:, 0])
    if check:
        ours = layer.filter_bank()
        tol = 1e-5 * max(1.0, full.abs().max().item())
        if not torch.allclose(ours, full, atol=tol):
            raise ValueError(f"from_escnn: equifast's canonical filter bank differs from escnn's by "
                             f"{(ours - full).abs().max().item():.2e} for {m!r}: conventions do not match")
    return layer


def _convert_inner_bn(m, check):
    from .nn import GroupBatchNorm2d
    kind = _field_kind(m.in_type, "InnerBatchNorm's in_type")
    sizes = {r.size for r in m.in_type.representations}
    bn = getattr(m, f"batch_norm_[{sizes.pop()}]")
    C = len(m.in_type.representations)
    if kind == "stack":
        name, _ = _escnn_group(m.in_type.gspace)
        out = GroupBatchNorm2d(C, name, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    else:
        out = nn.BatchNorm2d(C, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    ref = bn.running_mean if bn.running_mean is not None else (bn.weight if bn.affine else None)
    if ref is not None:
        out = out.to(device=ref.device, dtype=ref.dtype)
    out.load_state_dict(bn.state_dict())
    return out


def _per_kind(m, make):
    from .nn import PerCopy
    plain = make()
    return PerCopy(plain) if _field_kind(m.in_type, f"{type(m).__name__}'s in_type") == "stack" else plain


def _convert_group_pooling(m, check):
    from .nn import GroupPool
    if _field_kind(m.in_type, "GroupPooling's in_type") != "stack":
        raise ValueError("from_escnn: GroupPooling of trivial fields is the identity; remove it")
    return GroupPool("max")


def _convert_pointwise(m, check):
    functions = {"p_relu": nn.ReLU, "p_elu": nn.ELU, "p_sigmoid": nn.Sigmoid, "p_tanh": nn.Tanh}
    fn = getattr(m, "_function", None)
    for key, cls in functions.items():
        if fn is not None and fn.__name__ == key[2:]:
            return cls()
    raise ValueError(f"from_escnn: PointwiseNonLinearity with {fn!r} is not one of {sorted(functions)}")


def _convert_sequential(m, check):
    return nn.Sequential(*[from_escnn(child, check) for child in m._modules.values()])


_ESCNN_CONVERTERS = {
    "R2Conv": _convert_r2conv,
    "InnerBatchNorm": _convert_inner_bn,
    "GroupPooling": _convert_group_pooling,
    "ReLU": lambda m, check: nn.ReLU(),
    "ELU": lambda m, check: nn.ELU(m.alpha),
    "LeakyReLU": lambda m, check: nn.LeakyReLU(m._negative_slope),
    "PointwiseNonLinearity": _convert_pointwise,
    "PointwiseDropout": lambda m, check: nn.Dropout(m.p),
    "PointwiseMaxPool2D": lambda m, check: _per_kind(m, lambda: nn.MaxPool2d(
        m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode)),
    "PointwiseAvgPool2D": lambda m, check: _per_kind(m, lambda: nn.AvgPool2d(
        m.kernel_size, m.stride, m.padding, ceil_mode=m.ceil_mode)),
    "PointwiseAdaptiveAvgPool2D": lambda m, check: _per_kind(m, lambda: nn.AdaptiveAvgPool2d(m.output_size)),
    "PointwiseAdaptiveMaxPool2D": lambda m, check: _per_kind(m, lambda: nn.AdaptiveMaxPool2d(m.output_size)),
    "SequentialModule": _convert_sequential,
    "IdentityModule": lambda m, check: nn.Identity(),
}
