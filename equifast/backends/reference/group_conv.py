"""Reference group convolution: a Python loop over the group.

view frame:      out[:, g] = Σ_h conv2d(s[:, g·h], weight[:, h])
canonical frame: out[:, g] = Σ_h conv2d(s[:, h], act(weight[:, g⁻¹·h], g))
s: [B, n, C_in, H, W], weight: [C_out, n, C_in, kh, kw] -> out: [B, n, C_out, H', W'].
The sum over h is one conv2d over the n*C_in stacked channels.
"""
import torch

from .._conv2d import conv2d


def lift_weight_channels(weight):
    """[C_out, n, C_in, kh, kw] -> [C_out, n*C_in, kh, kw] (h-major channels)."""
    return weight.reshape(weight.shape[0], -1, *weight.shape[-2:])


def group_conv_forward(s, weight, bias, plan):
    group = plan.group
    n = group.order
    B, _, C_in, H, W = s.shape
    copies = []
    for g in range(n):
        if plan.frame == "view":
            shifted = s[:, [group.cayley[g][h] for h in range(n)]]            # s[:, g·h]
            copies.append(conv2d(shifted.reshape(B, n * C_in, H, W), lift_weight_channels(weight), bias, plan))
        else:
            w_g = group.act(weight[:, [group.cayley[group.inverse[g]][h] for h in range(n)]], g)
            copies.append(conv2d(s.reshape(B, n * C_in, H, W), lift_weight_channels(w_g), bias, plan))
    return torch.stack(copies, dim=1)
