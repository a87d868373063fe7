"""GroupBatchNorm2d (statistics shared over the group axis), GroupPool (invariant projection), PerCopy."""
import torch
from torch import nn

import equifast.nn as enn
from equifast import groups

C4 = groups.get("C4")
net = nn.Sequential(
    enn.LiftConv2d(1, 8, 3, padding=1),
    enn.GroupBatchNorm2d(8),              # one mean/var per channel over (B, n, H, W)
    nn.ReLU(),
    enn.PerCopy(nn.MaxPool2d(2)),         # any image module, applied to every copy in one call
    enn.GroupConv2d(8, 8, 3, padding=1),
    enn.GroupPool("max"),                 # [B, n, C, H, W] -> [B, C, H, W], invariant to the copies' order
)
x = torch.randn(4, 1, 16, 16)
y = net(x)                                # [4, 8, 8, 8]
err = (net(C4.act(x, 1)) - y).abs().max().item()   # training mode: batch statistics, still exact
print(tuple(y.shape), f"invariance error: {err:.1e}")
assert err < 1e-5
