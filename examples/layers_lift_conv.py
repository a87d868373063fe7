"""LiftConv2d: an image to a stack of |G| copies, exactly equivariant (view frame)."""
import torch

import equifast.nn as enn
from equifast import groups

C4 = groups.get("C4")
lift = enn.LiftConv2d(3, 8, kernel_size=3, stride=2, padding=1, group="C4")   # conv2d-style arguments
x = torch.randn(2, 3, 32, 32)
s = lift(x)                                          # [B, n, C_out, H', W'] = [2, 4, 8, 16, 16]
print(lift, tuple(s.shape))
# rotating the input by 90° permutes the copies (regular action), even with stride 2 on an even size
err = (lift(C4.act(x, 1)) - C4.act_regular(s, 1)).abs().max().item()
print(f"equivariance error: {err:.1e}")
assert err < 1e-5
