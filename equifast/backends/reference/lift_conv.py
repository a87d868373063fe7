"""Reference lifting convolution: a Python loop over the group.

view frame:      out[:, g] = conv2d(act(x, g⁻¹), weight)
canonical frame: out[:, g] = conv2d(x, act(weight, g))
x: [B, C_in, H, W], weight: [C_out, C_in, kh, kw] -> out: [B, n, C_out, H', W'].
"""
import torch

from .._conv2d import conv2d


def lift_conv_forward(x, weight, bias, plan):
    group = plan.group
    copies = []
    for g in range(group.order):
        if plan.frame == "view":
            copies.append(conv2d(group.act(x, group.inverse[g]), weight, bias, plan))
        else:
            copies.append(conv2d(x, group.act(weight, g), bias, plan))
    return torch.stack(copies, dim=1)
