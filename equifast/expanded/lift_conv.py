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

from .._layout import unflatten_stack
from ..groups import tap_sum
from ..reference.common import conv2d


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


def gather_views(x, group, elements):
    """[B, C, H, W] -> [B, len(elements), C, H, W] with slot i = act(x, elements[i]), one gather."""
    B, C, H, W = x.shape
    index, weight = group.tables_on(H, W, x.device, x.dtype)
    sel = torch.tensor(elements, device=x.device)
    idx, wts = index[sel], weight[sel]                             # [m, HW, T]
    m, T = idx.shape[0], idx.shape[-1]
    flat = x.reshape(B, 1, C, H * W).expand(B, m, C, H * W)
    views = flat.gather(3, idx.reshape(1, m, 1, H * W * T).expand(B, m, C, H * W * T))
    if group.exact:
        return views.reshape(B, m, C, H, W)
    return tap_sum(views.reshape(B, m, C, H * W, T), wts[None, :, None]).reshape(B, m, C, H, W)


def lift_conv(x, weight, bias, plan):
    group = plan.group
    n = group.order
    B, C_in, H, W = x.shape
    kh, kw = weight.shape[-2:]
    bank_bias = None if bias is None else bias.repeat(n)
    if plan.frame == "canonical":
        return unflatten_stack(conv2d(x, rotated_filter_bank(weight, group), bank_bias, plan), n)
    Ho, Wo = plan.out_size(H, W, kh, kw)
    if group.exact and weight.shape[0] * Ho * Wo < C_in * H * W and grid_is_centred(plan, H, W, kh, kw):
        y = unflatten_stack(conv2d(x, rotated_filter_bank(weight, group), bank_bias, plan), n)
        inverse_perm = group.tables_on(Ho, Wo, x.device, x.dtype)[0][list(group.inverse), :, 0]  # [n, HoWo]
        flat = y.reshape(B, n, -1, Ho * Wo) if y.is_contiguous() else y.contiguous().reshape(B, n, -1, Ho * Wo)
        out = flat.gather(3, inverse_perm[None, :, None, :].expand(B, n, flat.shape[2], Ho * Wo))
        return out.reshape(B, n, -1, Ho, Wo)
    views = gather_views(x, group, list(group.inverse))            # act(x, g⁻¹) in slot g
    y = conv2d(views.reshape(B * n, C_in, H, W), weight, bias, plan)
    return y.reshape(B, n, *y.shape[1:])
