"""GroupConv2d: stack -> stack, in the view frame (the paper's layer) and the canonical frame (G-CNN)."""
import torch

import equifast.nn as enn
from equifast import groups

D4 = groups.get("D4")
for frame in ("view", "canonical"):
    conv = enn.GroupConv2d(8, 16, kernel_size=3, padding=1, group="D4", frame=frame)
    s = torch.randn(2, 8, 8, 12, 12)                 # [B, n=8, C_in, H, W]
    y = conv(s)                                       # [2, 8, 16, 12, 12]
    # view-frame outputs transform by the regular action, canonical ones by the canonical action
    err = max((conv(D4.act_stack(s, g, frame)) - D4.act_stack(y, g, frame)).abs().max().item() for g in range(8))
    print(f"{frame:>9}: {tuple(y.shape)}, weight {tuple(conv.weight.shape)}, equivariance error {err:.1e}")
    assert err < 1e-4
