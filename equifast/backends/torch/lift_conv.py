"""Lifting convolution as one conv2d over an expanded filter bank (or over all views at once).

canonical frame: out[:, g] = conv2d(x, act(weight, g))
    -> one conv2d with the n rotated filters stacked on the output channels.
view frame:      out[:, g] = conv2d(act(x, g⁻¹), weight)
    (a) all n views gathered in one op into a [B*n, C_in, H, W] batch, then one conv2d
        (any stride, padding, group; re-indexes the input);
    (b) exact group and a centred sampling grid (the conv's strided grid maps onto itself under
        the group): out[:, g] = act(conv2d(x, act(weight, g)), g⁻¹)  -> filter rotation, one
        conv2d, then one gather that re-indexes the output.
    (b) is taken when it can be and the output is smaller than the input (re-indexing the
    smaller tensor); lifting layers (few input channels) take (a).
"""
import torch

from ..._layout import flatten_stack, unflatten_stack
from .._conv2d import conv2d, conv2d_backward


def rotated_filter_bank(weight, group):
    """[C_out, C_in, kh, kw] -> [n*C_out, C_in, kh, kw] with block g = act(weight, g)."""
    n = group.order
    bank = group.act_each(weight.unsqueeze(0).expand(n, *weight.shape))
    return bank.reshape(n * weight.shape[0], *weight.shape[1:])


def grid_is_centred(plan, H, W, kh, kw):
    """True when the strided sampling grid of the conv is symmetric under the group's image action."""
    Ho, Wo = plan.out_size(H, W, kh, kw)
    pt, _, pl, _ = plan.padding
    (sh, sw), (dh, dw) = plan.stride, plan.dilation
    rows = (Ho - 1) * sh + dh * (kh - 1) - (H - 1) == 2 * pt
    cols = (Wo - 1) * sw + dw * (kw - 1) - (W - 1) == 2 * pl
    if plan.group.quarter_turns:
        return rows and cols and (sh, dh, kh, pt) == (sw, dw, kw, pl)
    return rows and cols


def uses_filter_rotation(plan, x, weight):
    """Path (b): exact group, centred grid, and an output smaller than the input."""
    C_in, H, W = x.shape[-3:]
    kh, kw = weight.shape[-2:]
    Ho, Wo = plan.out_size(H, W, kh, kw)
    return plan.group.exact and weight.shape[0] * Ho * Wo < C_in * H * W and grid_is_centred(plan, H, W, kh, kw)


def act_slots(stack, group, elements):
    """[B, m, C, H, W] -> slot i acted on by elements[i] (one gather)."""
    return group.act_each(stack.transpose(0, 1), elements).transpose(0, 1)


def lift_conv_forward(x, weight, bias, plan):
    group = plan.group
    n = group.order
    B, C_in, H, W = x.shape
    bank_bias = None if bias is None else bias.repeat(n)
    if plan.frame == "canonical":
        return unflatten_stack(conv2d(x, rotated_filter_bank(weight, group), bank_bias, plan), n)
    if uses_filter_rotation(plan, x, weight):
        y = unflatten_stack(conv2d(x, rotated_filter_bank(weight, group), bank_bias, plan), n)
        return act_slots(y, group, list(group.inverse))             # slot g: act(·, g⁻¹)
    views = group.act_all(x, list(group.inverse), dim=1)          # act(x, g⁻¹) in slot g
    y = conv2d(views.reshape(B * n, C_in, H, W), weight, bias, plan)
    return y.reshape(B, n, *y.shape[1:])


def lift_conv_backward(grad_out, x, weight, plan, output_mask):
    """Gradients of x and weight: one ``convolution_backward`` on the rebuilt conv operands (the
    convolution is not recomputed); the cheap gathers are differentiated by torch.func.vjp."""
    need_x, need_w = bool(output_mask[0]), bool(output_mask[1])
    group = plan.group
    n = group.order
    B, C_in, H, W = x.shape
    if plan.frame == "canonical" or uses_filter_rotation(plan, x, weight):
        bank, bank_vjp = torch.func.vjp(lambda w: rotated_filter_bank(w, group), weight)
        if plan.frame == "view":  # out[:, g] = act(z[:, g], g⁻¹): the adjoint acts by g
            grad_out = act_slots(grad_out, group, list(range(n)))
        gx, g_bank = conv2d_backward(flatten_stack(grad_out), x, bank, plan, need_x, need_w)
        return gx, (bank_vjp(g_bank)[0] if need_w else None), None
    elements = list(group.inverse)
    if need_x:
        views, views_vjp = torch.func.vjp(lambda t: group.act_all(t, elements, dim=1), x)
    else:
        views = group.act_all(x, elements, dim=1)
    g_views, gw = conv2d_backward(grad_out.reshape(B * n, *grad_out.shape[2:]),
                                  views.reshape(B * n, C_in, H, W), weight, plan, need_x, need_w)
    gx = views_vjp(g_views.reshape(B, n, C_in, H, W))[0] if need_x else None
    return gx, gw, None
