"""Equivarify: the paper's lemma — ANY module F becomes x -> [F(g⁻¹x) for g in G], in one batched call."""
import torch
from torch import nn

import equifast.nn as enn
from equifast import groups

C4 = groups.get("C4")
mlp = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 64), nn.ReLU(), nn.Linear(64, 10))   # not equivariant
eq = enn.Equivarify(mlp, "C4")
x = torch.randn(5, 1, 28, 28)
y = eq(x)                                   # [5, 4, 10]: copy g = mlp(rotate(x, -g·90°))
assert torch.allclose(y[:, 0], mlp(x), atol=1e-6)   # p ∘ F̂ = F
err = (eq(C4.act(x, 1)) - C4.act_regular(y, 1)).abs().max().item()
print("MLP:", tuple(y.shape), f"equivariance error {err:.1e}")
assert err < 1e-5

cnn = nn.Sequential(nn.Conv2d(1, 8, 5), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
eq = enn.Equivarify(cnn, "D4")
y = eq(x)                                   # [5, 8, 10]
inv = enn.GroupPool("max")(y)               # [5, 10], invariant to rotations and flips
err = (enn.GroupPool("max")(eq(torch.flip(x, dims=(-1,)))) - inv).abs().max().item()
print("CNN:", tuple(y.shape), f"invariance error {err:.1e}")
assert err < 1e-5
