"""``Equivarify``: the paper's Lemma 3.2 as a module — lift ANY map F to the G-equivariant F̂."""
from __future__ import annotations

from typing import Union

import torch
from torch import Tensor, nn

from .. import groups as _groups

__all__ = ["Equivarify", "equivarify_views"]

ACTIONS = ("image", "regular", "canonical")


def equivarify_views(x: Tensor, group, action: str = "image") -> Tensor:
    """All inverse views of ``x``: out[:, g] = g⁻¹·x, shape [B, n, *x.shape[1:]].

    ``action`` says how G acts on x: "image" (on the last two dims: x is [B, ..., H, W]),
    "regular" (x is a stack [B, n, ...]; (g·s)[:, h] = s[:, g⁻¹h]) or "canonical" (a stack
    [B, n, ..., H, W]; regular permutation and image action together)."""
    G = _groups.get(group)
    n = G.order
    inv = list(G.inverse)
    if action == "image":
        if x.dim() < 3:
            raise ValueError(f"Equivarify: action='image' needs input [B, ..., H, W], got shape {list(x.shape)}")
        return G.act_all(x, inv, dim=1)                                  # [B, n, ...]
    if action not in ("regular", "canonical"):
        raise ValueError(f"Equivarify: action must be one of {ACTIONS}, got {action!r}")
    if x.dim() < 2 or x.shape[1] != n:
        raise ValueError(f"Equivarify: action={action!r} needs a stack [B, {n}, ...] for group {G.name}, "
                         f"got shape {list(x.shape)}")
    # (g⁻¹·s)[:, h] = s[:, g·h]
    table = G.cayley_tensor(x.device)
    views = x[:, table]                                                   # [B, n(g), n(h), ...]
    if action == "canonical":
        views = G.act_each(views.transpose(0, 1), inv).transpose(0, 1)   # rotate view g by g⁻¹
    return views


class Equivarify(nn.Module):
    """Equivarification (Lemma 3.2 of Bao et al.): F̂(x) = [F(g⁻¹·x) for g in G], stacked on dim 1.

    ``Equivarify(module, group="C4", action="image")``

    Wraps any module F (an MLP on flattened images, a CNN, a whole classifier) without knowing what
    it computes. All |G| views go through F in ONE batched call (batch B·n), so F runs at its batched
    speed and parameters are not duplicated.

    Shapes:
        input  x: [B, *in]  — ``action="image"``: [B, ..., H, W] (square H = W for 90° rotations);
                  ``"regular"``/``"canonical"``: a stack [B, n, ...] (to equivarify a layer that reads
                  all copies, as the paper's head dense∘pool∘conv3).
        output:   [B, n, *out] where F maps [N, *in] -> [N, *out]; copy g = F(g⁻¹·x).

    F̂ is exactly equivariant: F̂(h·x) = h·F̂(x) with the regular action on the output
    (``group.act_regular``), and p(F̂(x)) = F̂(x)[:, 0] = F(x). Batch-norm layers inside F in training
    mode see all views in one batch, which keeps this exact.

    Example::

        >>> import torch, equifast.nn as enn
        >>> mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        >>> enn.Equivarify(mlp, "C4")(torch.randn(5, 1, 8, 8)).shape
        torch.Size([5, 4, 10])
    """

    def __init__(self, module: nn.Module, group: Union[str, _groups.Group] = "C4", action: str = "image"):
        super().__init__()
        if action not in ACTIONS:
            raise ValueError(f"Equivarify: action must be one of {ACTIONS}, got {action!r}")
        self.module = module
        self.group = _groups.get(group)
        self.action = action

    def forward(self, x: Tensor) -> Tensor:
        B, n = x.shape[0], self.group.order
        views = equivarify_views(x, self.group, self.action)              # [B, n, *in]
        y = self.module(views.reshape(B * n, *views.shape[2:]))
        return y.reshape(B, n, *y.shape[1:])

    def _export_module(self) -> nn.Module:
        from ._plain import PlainEquivarify, image_ops
        ops = image_ops(self.group) if self.action != "regular" else [(0, False)] * self.group.order
        if ops is None:
            raise ValueError(f"export: Equivarify with group {self.group.name} and action={self.action!r} "
                             f"rotates by interpolation, which has no plain-PyTorch form; exact groups "
                             f"(C1, C2, C4, D1, D2, D4) or action='regular' export")
        return PlainEquivarify(self.module, self.action, [ops[i] for i in self.group.inverse],
                               [list(row) for row in self.group.cayley])

    def export(self) -> nn.Module:
        """Plain PyTorch (the views by rot90 / flip / index_select, then F); see ``equifast.nn.export``."""
        from ._export import export
        return export(self)

    def extra_repr(self) -> str:
        return f"group={self.group.name}, action={self.action!r}"
