"""The public ops ``lift_conv`` and ``group_conv`` and their ``torch.library`` custom ops.

Custom ops (namespace ``equifast``), each with a fake kernel and registered autograd:

  lift_conv(Tensor x, Tensor weight, Tensor? bias, str group, int[] stride, int[] padding,
            int[] dilation, str frame, str backend) -> Tensor
  group_conv(Tensor s, Tensor weight, Tensor? bias, ...same...) -> Tensor
  lift_conv_backward / group_conv_backward(Tensor grad_out, Tensor x, Tensor weight, ...same...,
            bool[] output_mask) -> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)

``padding`` is explicit (top, bottom, left, right); the Python wrappers resolve ints, pairs,
"same" and "valid". The implementation is device-agnostic: it resolves ``backend`` ("auto",
an explicit name, or the ``EQUIFAST_BACKEND`` override) and calls that backend, so every backend
(reference, torch, triton, cuda, cpu) sits behind the same two ops. Backends with their own
backward run it through the ``*_backward`` ops; a backend without one (the reference) is
differentiated inside the backward op by ``torch.func.vjp`` through its forward (so the backward,
too, is one opaque op under torch.compile / export).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import backends as _backends
from . import groups as _groups
from ._args import ConvPlan, check_geometry, check_group, check_lift, out_size, plan_from_schema
from ._layout import empty_grads, empty_stack, is_channels_last, same_layout, stack_like

__all__ = ["lift_conv", "group_conv"]


# ---------------------------------------------------------------------------
# Forward ops
# ---------------------------------------------------------------------------
def _forward(kind: str, inp: Tensor, weight: Tensor, bias: Optional[Tensor], plan: ConvPlan, backend: str) -> Tensor:
    B = inp.shape[0]
    n, C_out = plan.order, weight.shape[0]
    # the Python wrappers checked the geometry already; a direct torch.ops.equifast call has not
    Ho, Wo = check_geometry(kind, inp.shape[-2:], weight.shape[-2:], plan.stride, plan.padding, plan.dilation)
    channels_last = is_channels_last(inp)
    impl = _backends.resolve(backend, plan, inp, weight, kind)  # first: an explicit backend is checked for empty inputs too
    if inp.numel() == 0 or C_out == 0:
        return empty_stack((B, n, C_out, Ho, Wo), channels_last, dtype=inp.dtype, device=inp.device).zero_()
    # backends may assume a contiguous bias (C_out values: the copy is free)
    out = getattr(impl, kind + "_forward")(inp, weight, None if bias is None else bias.contiguous(), plan)
    return stack_like(out, channels_last)


def fake_forward(inp: Tensor, weight: Tensor, order: int, stride, padding, dilation) -> Tensor:
    """The output of a forward op (lift_conv / group_conv, here or in ``equifast_C``) as an empty
    stack [B, n, C_out, H', W'] in the layout the op promises."""
    Ho, Wo = out_size(inp.shape[-2], inp.shape[-1], weight.shape[-2], weight.shape[-1], stride, padding, dilation)
    return empty_stack((inp.shape[0], order, weight.shape[0], Ho, Wo), is_channels_last(inp),
                       dtype=inp.dtype, device=inp.device)


@torch.library.custom_op("equifast::lift_conv", mutates_args=())
def _lift_conv_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], group: str, stride: List[int],
                  padding: List[int], dilation: List[int], frame: str, backend: str) -> Tensor:
    return _forward("lift_conv", x, weight, bias, plan_from_schema(group, stride, padding, dilation, frame), backend)


@torch.library.custom_op("equifast::group_conv", mutates_args=())
def _group_conv_op(s: Tensor, weight: Tensor, bias: Optional[Tensor], group: str, stride: List[int],
                   padding: List[int], dilation: List[int], frame: str, backend: str) -> Tensor:
    return _forward("group_conv", s, weight, bias, plan_from_schema(group, stride, padding, dilation, frame), backend)


@_lift_conv_op.register_fake
def _(x, weight, bias, group, stride, padding, dilation, frame, backend):
    return fake_forward(x, weight, _groups.get(group).order, stride, padding, dilation)


@_group_conv_op.register_fake
def _(s, weight, bias, group, stride, padding, dilation, frame, backend):
    return fake_forward(s, weight, _groups.get(group).order, stride, padding, dilation)


# ---------------------------------------------------------------------------
# Backward ops (every backend: its own backward, or torch.func.vjp through its forward)
# ---------------------------------------------------------------------------
def _vjp_backward(kind, impl, grad_out, inp, weight, plan, output_mask):
    """Gradients of a plain-PyTorch backend's forward by torch.func.vjp (autograd proper is switched
    off inside op implementations; functorch's transforms are not)."""
    forward = getattr(impl, kind + "_forward")
    if output_mask[0] and output_mask[1]:
        _, vjp = torch.func.vjp(lambda i, w: forward(i, w, None, plan), inp, weight)
        return vjp(grad_out) + (None,)
    if output_mask[0]:
        _, vjp = torch.func.vjp(lambda i: forward(i, weight, None, plan), inp)
        return vjp(grad_out)[0], None, None
    _, vjp = torch.func.vjp(lambda w: forward(inp, w, None, plan), weight)
    return None, vjp(grad_out)[0], None


def _backward(kind: str, grad_out, inp, weight, plan, backend, output_mask):
    output_mask = tuple(bool(m) for m in output_mask)
    if inp.numel() == 0 or weight.shape[0] == 0:
        gx, gw = torch.zeros_like(inp), torch.zeros_like(weight)
        gb = grad_out.new_zeros(weight.shape[0])
    else:
        impl = _backends.resolve(backend, plan, inp, weight, kind)
        grad_out = stack_like(grad_out, is_channels_last(grad_out))
        if hasattr(impl, kind + "_backward"):
            gx, gw, gb = getattr(impl, kind + "_backward")(grad_out, inp, weight, plan, output_mask)
        elif output_mask[0] or output_mask[1]:
            gx, gw, gb = _vjp_backward(kind, impl, grad_out, inp, weight, plan, output_mask)
        else:
            gx = gw = gb = None
        if output_mask[2] and gb is None:
            gb = grad_out.sum(dim=(0, 1, 3, 4))
    # outputs must not alias each other: a fresh empty tensor for each gradient not asked for
    return (same_layout(gx, inp) if output_mask[0] else inp.new_empty(0),
            gw.contiguous() if output_mask[1] else inp.new_empty(0),
            gb if output_mask[2] else inp.new_empty(0))


def _fake_backward(grad_out, inp, weight, output_mask):
    gx, gw = empty_grads(inp, weight, output_mask)
    return gx, gw, inp.new_empty(weight.shape[0] if output_mask[2] else 0)


@torch.library.custom_op("equifast::lift_conv_backward", mutates_args=())
def _lift_conv_backward_op(grad_out: Tensor, x: Tensor, weight: Tensor, group: str, stride: List[int],
                           padding: List[int], dilation: List[int], frame: str, backend: str,
                           output_mask: List[bool]) -> Tuple[Tensor, Tensor, Tensor]:
    return _backward("lift_conv", grad_out, x, weight, plan_from_schema(group, stride, padding, dilation, frame),
                     backend, output_mask)


@torch.library.custom_op("equifast::group_conv_backward", mutates_args=())
def _group_conv_backward_op(grad_out: Tensor, s: Tensor, weight: Tensor, group: str, stride: List[int],
                            padding: List[int], dilation: List[int], frame: str, backend: str,
                            output_mask: List[bool]) -> Tuple[Tensor, Tensor, Tensor]:
    return _backward("group_conv", grad_out, s, weight, plan_from_schema(group, stride, padding, dilation, frame),
                     backend, output_mask)


@_lift_conv_backward_op.register_fake
def _(grad_out, x, weight, group, stride, padding, dilation, frame, backend, output_mask):
    return _fake_backward(grad_out, x, weight, output_mask)


@_group_conv_backward_op.register_fake
def _(grad_out, s, weight, group, stride, padding, dilation, frame, backend, output_mask):
    return _fake_backward(grad_out, s, weight, output_mask)


# ---------------------------------------------------------------------------
# Autograd
# ---------------------------------------------------------------------------
def _setup_context(ctx, inputs, output):
    inp, weight, bias, group, stride, padding, dilation, frame, backend = inputs
    ctx.save_for_backward(inp, weight, bias)
    ctx.schema_args = (group, stride, padding, dilation, frame, backend)


def _make_backward(backward_op):
    def backward(ctx, grad_out):
        inp, weight, bias = ctx.saved_tensors
        output_mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2]]
        grads = (None, None, None)
        if any(output_mask):
            gx, gw, gb = backward_op(grad_out, inp, weight, *ctx.schema_args, output_mask)
            grads = tuple(g if m else None for g, m in zip((gx, gw, gb), output_mask))
        return grads + (None,) * 6
    return backward


_lift_conv_op.register_autograd(_make_backward(_lift_conv_backward_op), setup_context=_setup_context)
_group_conv_op.register_autograd(_make_backward(_group_conv_backward_op), setup_context=_setup_context)


# ---------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------
def _autocast(*tensors):
    """Cast float32 tensors to the autocast dtype, as conv2d does under torch.autocast."""
    if not isinstance(tensors[0], torch.Tensor):
        return tensors
    device_type = tensors[0].device.type
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) if t is not None and t.dtype == torch.float32 else t for t in tensors)


def lift_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *, group="C4", stride=1, padding=0,
              dilation=1, frame: str = "view", backend: str = "auto") -> Tensor:
    """Lifting convolution: evaluate a conv2d on the whole group orbit of ``x``.

    Args:
        x: [B, C_in, H, W] (contiguous or channels_last).
        weight: [C_out, C_in, kh, kw], shared by all |G| copies.
        bias: optional [C_out], shared by all copies.
        group: a name ("C4", "D4", "C8", ...) or an ``equifast.groups.Group``.
        stride, padding, dilation: as ``torch.nn.functional.conv2d`` (padding: int, pair,
            "same", "valid", or an explicit (top, bottom, left, right) 4-tuple).
        frame: "view" — out[:, g] = conv2d(act(x, g⁻¹), weight), exactly equivariant under the
            regular action for any kernel, stride, padding and dilation; or "canonical" —
            out[:, g] = conv2d(x, act(weight, g)), the G-CNN lifting layer.
        backend: "auto", "reference", "torch", "triton", "cuda", "cpu" or "fourier" (group_conv only).

    Returns:
        [B, n, C_out, H', W'] with n = |G| (channels_last stack when x is channels_last).
    """
    _backends.check_name(backend, "lift_conv")
    x, weight, bias = _autocast(x, weight, bias)
    plan = check_lift(x, weight, bias, group, stride, padding, dilation, frame)
    return _lift_conv_op(x, weight, bias, *plan.schema_args(), backend)


def group_conv(s: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *, group="C4", stride=1, padding=0,
               dilation=1, frame: str = "view", backend: str = "auto") -> Tensor:
    """Group convolution on a stack of group copies.

    Args:
        s: [B, n, C_in, H, W], any strides (a permuted view of a field-major [B, C_in, n, H, W]
            tensor is accepted without a copy on the caller's side).
        weight: [C_out, n, C_in, kh, kw].
        bias: optional [C_out], shared by all copies.
        frame: "view" — out[:, g] = Σ_h conv2d(s[:, g·h], weight[:, h]) (the cyclic shift);
            or "canonical" — out[:, g] = Σ_h conv2d(s[:, h], act(weight[:, g⁻¹·h], g)).
        Other arguments as in ``lift_conv``.

    Returns:
        [B, n, C_out, H', W'].
    """
    _backends.check_name(backend, "group_conv")
    s, weight, bias = _autocast(s, weight, bias)
    plan = check_group(s, weight, bias, group, stride, padding, dilation, frame)
    return _group_conv_op(s, weight, bias, *plan.schema_args(), backend)
