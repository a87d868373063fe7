"""The paper's orientation head: |G| x classes scores, the equivariant label encoding and its decoder."""
from __future__ import annotations

from typing import Tuple, Union

import torch
from torch import Tensor, nn

from .. import groups as _groups

__all__ = ["OrientationHead", "encode_labels", "decode_scores", "element_angle", "invariant_scores"]


def encode_labels(labels: Tensor, elements: Tensor, num_classes: int, order: int = None) -> Tensor:
    """The paper's equivariant label encoding (Section 5).

    An upright image x₀ of class m, transformed by group element k (x = g^k·x₀), gets the target
    slot k: index ``k * num_classes + m`` of the |G|·num_classes scores. With ``order=n`` given, the
    one-hot vector [B, n*num_classes] 0 ⊕ … ⊕ e_m ⊕ … ⊕ 0 (e_m in block k) is returned instead, as
    written in the paper.

    Shapes: labels [B] (class m), elements [B] (k in 0..n-1) -> [B] long (or [B, n*num_classes] float).
    Upright training images use k = 0 (index m), which is what the paper trains on.
    """
    labels = torch.as_tensor(labels)
    elements = torch.as_tensor(elements, device=labels.device)
    if bool((labels < 0).any()) or bool((labels >= num_classes).any()):
        raise ValueError(f"encode_labels: labels must lie in [0, {num_classes})")
    if bool((elements < 0).any()) or (order is not None and bool((elements >= order).any())):
        raise ValueError(f"encode_labels: group elements must lie in [0, {order if order else 'n'})")
    index = elements.long() * num_classes + labels.long()
    if order is None:
        return index
    return torch.nn.functional.one_hot(index, order * num_classes).float()


def decode_scores(scores: Tensor, num_classes: int) -> Tuple[Tensor, Tensor]:
    """Argmax decoder: scores [B, n*num_classes] (or [B, n, num_classes]) -> (classes [B], elements [B]).

    The element k says which transformation g^k took the canonical (upright) pose to the input;
    ``element_angle(group, k)`` converts it to degrees."""
    flat = scores.reshape(scores.shape[0], -1)
    if flat.shape[1] % num_classes:
        raise ValueError(f"decode_scores: {flat.shape[1]} scores are not a multiple of num_classes={num_classes}")
    best = flat.argmax(dim=1)
    return best % num_classes, torch.div(best, num_classes, rounding_mode="floor")


def element_angle(group, elements: Tensor) -> Tensor:
    """Rotation angle in degrees (counter-clockwise) of group elements k: 360·(k mod r)/r, where r is the
    number of rotations (n for C_n, n/2 for D_n; elements ≥ r of D_n are rotation·flip)."""
    G = _groups.get(group)
    r = G.order // 2 if G.name.startswith("D") else G.order
    return (torch.as_tensor(elements) % r).to(torch.float32) * (360.0 / r)


def invariant_scores(scores: Tensor, num_classes: int, mode: str = "max") -> Tensor:
    """GroupPool of the scores: [B, n*num_classes] -> [B, num_classes], invariant under G.

    ``mode="max"`` (max over copies) or ``"logsumexp"`` (the log of the class marginal of the softmax
    over all n·num_classes scores)."""
    s = scores.reshape(scores.shape[0], -1, num_classes)
    if mode == "max":
        return s.amax(dim=1)
    if mode == "logsumexp":
        return s.logsumexp(dim=1)
    raise ValueError(f"invariant_scores: mode must be 'max' or 'logsumexp', got {mode!r}")


class OrientationHead(nn.Module):
    """Dense layer applied to every copy (shared weights): the paper's "dense", equivarified.

    ``OrientationHead(in_features, num_classes, group="C4", bias=True)``

    Shapes:
        input  s: [B, n, F] or [B, n, C, H, W] (flattened per copy, F = C·H·W = ``in_features``)
        output:   [B, n*num_classes] scores; slot g*num_classes + m scores "class m, transformed by g"
                  (the paper's 40 outputs for 10 digits x 4 angles).

    Equivariant (view frame): permuting the copies permutes the blocks of num_classes scores.
    Train with ``cross_entropy(scores, encode_labels(y, k, num_classes))``; decode with
    ``decode_scores``; ``invariant(scores)`` gives class scores invariant under G.

    Example::

        >>> import torch, equifast.nn as enn
        >>> head = enn.OrientationHead(32, 10, group="C4")
        >>> scores = head(torch.randn(2, 4, 32))
        >>> scores.shape, [t.shape for t in head.decode(scores)]
        (torch.Size([2, 40]), [torch.Size([2]), torch.Size([2])])
    """

    def __init__(self, in_features: int, num_classes: int, group: Union[str, _groups.Group] = "C4",
                 bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.group = _groups.get(group)
        self.in_features, self.num_classes = int(in_features), int(num_classes)
        self.linear = nn.Linear(in_features, num_classes, bias=bias, device=device, dtype=dtype)

    def forward(self, s: Tensor) -> Tensor:
        if s.dim() < 3 or s.shape[1] != self.group.order:
            raise ValueError(f"OrientationHead: expected [B, {self.group.order}, ...] features, got {list(s.shape)}")
        return self.linear(s.flatten(2)).flatten(1)

    def _export_module(self) -> nn.Module:
        from ._plain import PlainHead
        return PlainHead(self.linear)

    def export(self) -> nn.Module:
        """Plain PyTorch (``nn.Linear`` per copy); see ``equifast.nn.export``."""
        from ._export import export
        return export(self)

    def encode(self, labels: Tensor, elements: Tensor) -> Tensor:
        """Target indices [B] for cross-entropy (see ``encode_labels``)."""
        return encode_labels(labels, elements, self.num_classes)

    def decode(self, scores: Tensor) -> Tuple[Tensor, Tensor]:
        """(classes [B], group elements [B]) from scores [B, n*num_classes]."""
        return decode_scores(scores, self.num_classes)

    def angle(self, elements: Tensor) -> Tensor:
        """Degrees of rotation of decoded elements (see ``element_angle``)."""
        return element_angle(self.group, elements)

    def invariant(self, scores: Tensor, mode: str = "max") -> Tensor:
        """Class scores [B, num_classes] invariant under G (GroupPool over the copies)."""
        return invariant_scores(scores, self.num_classes, mode)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}, group={self.group.name}"
