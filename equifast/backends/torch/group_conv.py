"""Group convolution as one conv2d over the stacked n*C_in channels with a block-permuted filter bank.

view frame:      out[:, g] = Σ_h conv2d(s[:, g·h], w[:, h]) = Σ_h' conv2d(s[:, h'], w[:, g⁻¹·h'])
canonical frame: out[:, g] = Σ_h conv2d(s[:, h], act(w[:, g⁻¹·h], g))
Both are conv2d(s as [B, n*C_in, H, W], bank [n*C_out, n*C_in, kh, kw]) with
bank[g, :, h'] = w[:, g⁻¹·h'] (canonical: rotated by g), read as [B, n, C_out, H', W'].
"""
import torch

from ..._layout import flatten_stack, unflatten_stack
from .._conv2d import conv2d, conv2d_backward


def permuted_filter_bank(weight, group, frame):
    """[C_out, n, C_in, kh, kw] -> [n*C_out, n*C_in, kh, kw]."""
    n = group.order
    C_out, _, C_in, kh, kw = weight.shape
    bank = weight[:, group.slot_table(weight.device)].transpose(0, 1)   # [n(g), C_out, n(h'), C_in, kh, kw]
    if frame == "canonical":
        bank = group.act_each(bank)
    return bank.reshape(n * C_out, n * C_in, kh, kw)


def conv_operands(s, weight, plan):
    """(input [B, n*C_in, H, W], filter bank [n*C_out, n*C_in, kh, kw]) of the one conv2d."""
    n = plan.group.order
    B, _, C_in, H, W = s.shape
    bank = permuted_filter_bank(weight, plan.group, plan.frame)
    if not s.is_contiguous() and s.transpose(1, 2).is_contiguous():
        # field-major [B, C_in, n, H, W] memory (escnn / GrouPy): read it as (channel, group)
        # channels and reorder the bank's input channels instead of copying the input
        bank = bank.reshape(n * weight.shape[0], n, C_in, *bank.shape[-2:]).transpose(1, 2) \
                   .reshape(n * weight.shape[0], C_in * n, *bank.shape[-2:])
        return s.transpose(1, 2).reshape(B, C_in * n, H, W), bank
    return flatten_stack(s), bank


def group_conv_forward(s, weight, bias, plan):
    n = plan.group.order
    inp, bank = conv_operands(s, weight, plan)
    return unflatten_stack(conv2d(inp, bank, None if bias is None else bias.repeat(n), plan), n)


def group_conv_backward(grad_out, s, weight, plan, output_mask):
    """Gradients of s and weight: one ``convolution_backward`` on the conv operands (the convolution
    is not recomputed); the filter-bank and layout steps are differentiated by torch.func.vjp."""
    need_x, need_w = bool(output_mask[0]), bool(output_mask[1])
    (inp, bank), operands_vjp = torch.func.vjp(lambda t, w: conv_operands(t, w, plan), s, weight)
    g_inp, g_bank = conv2d_backward(flatten_stack(grad_out), inp, bank, plan, need_x, need_w)
    gs, gw = operands_vjp((torch.zeros_like(inp) if g_inp is None else g_inp,
                           torch.zeros_like(bank) if g_bank is None else g_bank))
    return (gs if need_x else None), (gw if need_w else None), None
