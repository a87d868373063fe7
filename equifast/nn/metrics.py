"""Measuring equivariance: ``equivariance_error`` and the strided/even-size ``exactness_comparison``."""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence

import torch
from torch import Tensor, nn

from .. import groups as _groups
from .conv import GroupConv2d, LiftConv2d
from .pool import GroupPool

__all__ = ["equivariance_error", "exactness_comparison", "StridedProbeNet", "format_exactness_table"]


def _act_input(G, x, g, action):
    if action == "image":
        return G.act(x, g)
    if action in ("regular", "canonical"):
        return G.act_stack(x, g, "view" if action == "regular" else "canonical")
    raise ValueError(f"unknown action {action!r}")


def _act_output(G, y, g, action):
    if action == "invariant":
        return y
    if action == "image":
        return G.act(y, g)
    if action == "regular":
        return G.act_regular(y, g)
    if action == "canonical":
        return G.act_canonical(y, g)
    if action == "scores":  # [B, n*K] flattened regular stack
        return G.act_regular(y.reshape(y.shape[0], G.order, -1), g).reshape(y.shape)
    raise ValueError(f"unknown output action {action!r}")


@torch.no_grad()
def equivariance_error(fn: Callable[[Tensor], Tensor], x: Tensor, group, in_action: str = "image",
                       out_action: str = "regular", relative: bool = True) -> float:
    """max over g ∈ G of max|fn(g·x) − g·fn(x)|, divided by max|fn(x)| when ``relative``.

    ``in_action``: "image" (x [B, C, H, W]), "regular" or "canonical" (x a stack).
    ``out_action``: "regular" (a view-frame stack [B, n, ...]), "canonical" (a canonical-frame stack),
    "scores" (flattened |G|·K scores [B, n*K]), "image", or "invariant" (fn(g·x) == fn(x)).
    """
    G = _groups.get(group)
    y = fn(x)
    scale = y.abs().max().item() if relative else 1.0
    worst = 0.0
    for g in range(1, G.order):
        diff = (fn(_act_input(G, x, g, in_action)) - _act_output(G, y, g, out_action)).abs().max().item()
        worst = max(worst, diff)
    return worst / scale if scale > 0 else worst


class StridedProbeNet(nn.Module):
    """A two-layer G-CNN with an invariant output, to probe exactness: LiftConv2d -> ReLU ->
    GroupConv2d -> ReLU -> GroupPool(max) -> global mean. [B, C_in, H, W] -> [B, C]."""

    def __init__(self, frame: str, kernel_size: int = 3, stride: int = 2, padding=1, in_channels: int = 3,
                 channels: int = 8, group="C4", backend: str = "auto", dtype=torch.float64):
        super().__init__()
        self.lift = LiftConv2d(in_channels, channels, kernel_size, stride=stride, padding=padding, group=group,
                               frame=frame, backend=backend, dtype=dtype)
        self.conv = GroupConv2d(channels, channels, kernel_size, stride=stride, padding=padding, group=group,
                                frame=frame, backend=backend, dtype=dtype)
        self.pool = GroupPool("max")

    def forward(self, x: Tensor) -> Tensor:
        s = torch.relu(self.conv(torch.relu(self.lift(x))))
        return self.pool(s).mean(dim=(-2, -1))


PROBE_CONFIGS = (
    ("3x3, stride 1, padding 1", dict(kernel_size=3, stride=1, padding=1)),
    ("3x3, stride 2, padding 1", dict(kernel_size=3, stride=2, padding=1)),
    ("4x4 (even), stride 1, padding 'same'", dict(kernel_size=4, stride=1, padding="same")),
    ("4x4 (even), stride 2, padding 1", dict(kernel_size=4, stride=2, padding=1)),
)


def exactness_comparison(sizes: Sequence[int] = (32, 33), group="C4", batch: int = 4, seed: int = 0,
                         backend: str = "auto", dtype=torch.float64) -> List[Dict]:
    """Invariance error of ``StridedProbeNet`` in the view frame vs the canonical frame.

    For every probe configuration (stride, kernel size, padding) and input size, the same weights
    are used in both frames; the error is max over g of |net(g·x) − net(x)| / max|net(x)|
    (float64 by default, so exact means ~1e-16). Returns rows
    ``{"config", "size", "view", "canonical"}``.
    """
    rows = []
    for name, cfg in PROBE_CONFIGS:
        for size in sizes:
            gen = torch.Generator().manual_seed(seed)
            x = torch.randn(batch, 3, size, size, generator=gen, dtype=dtype)
            torch.manual_seed(seed)
            view = StridedProbeNet("view", group=group, backend=backend, dtype=dtype, **cfg)
            canon = StridedProbeNet("canonical", group=group, backend=backend, dtype=dtype, **cfg)
            canon.load_state_dict(view.state_dict())
            rows.append({"config": name, "size": int(size),
                         "view": equivariance_error(view, x, group, "image", "invariant"),
                         "canonical": equivariance_error(canon, x, group, "image", "invariant")})
    return rows


def format_exactness_table(rows: List[Dict], markdown: bool = True) -> str:
    """The rows of ``exactness_comparison`` as a table (markdown or plain text)."""
    head = ("layer configuration", "input", "view frame (equifast)", "canonical frame (filter rotation)")
    lines = []
    if markdown:
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for r in rows:
            lines.append(f"| {r['config']} | {r['size']}x{r['size']} | {r['view']:.1e} | {r['canonical']:.1e} |")
    else:
        lines.append(f"{head[0]:<38} {head[1]:>7} {'view':>10} {'canonical':>10}")
        for r in rows:
            lines.append(f"{r['config']:<38} {str(r['size']) + 'x' + str(r['size']):>7} "
                         f"{r['view']:>10.1e} {r['canonical']:>10.1e}")
    return "\n".join(lines)
