"""Ready-made networks: the paper's Figure 3 network, its plain-CNN original, and a residual G-CNN.

* ``Figure3Net``  — Bao et al., Figure 3: conv1 lifted (4 copies), conv2 and conv3 on the stacked
  copies (equivarified), pooling and a dense layer per copy: 40 outputs = 10 digits x 4 angles.
  Default constructor: ``Figure3Net()`` takes single-channel square images of any size ≥ 4
  (the demo uses scikit-learn's 8x8 digits as they are; MNIST is 28x28).
* ``PlainCNN``    — the same network before equivarification (what the paper equivarifies).
* ``ResGCNN``     — a deeper G-CNN for 32x32 images: residual blocks, stride-2 stages, C4 or D4,
  view or canonical frame, invariant logits.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from . import groups as _groups
from .nn import GroupBatchNorm2d, GroupConv2d, GroupPool, LiftConv2d, OrientationHead, PerCopy

__all__ = ["Figure3Net", "PlainCNN", "ResGCNN", "GroupResBlock"]


class Figure3Net(nn.Module):
    """The paper's Figure 3 network (view frame, exactly equivariant).

    ``Figure3Net(group="C4", backend="auto", width=16, num_classes=10, in_channels=1, pool_size=2,
    batch_norm=True)``

    Layers (w = width, n = |G|):
        conv1 ``LiftConv2d(in_channels, w, 3, padding=1)``           image -> [B, n, w, H, W]
        conv2 ``GroupConv2d(w, 2w, 3, padding=1)`` + 2x2 max pool     -> [B, n, 2w, H/2, W/2]
        conv3 ``GroupConv2d(2w, 2w, 3, padding=1)``                    -> [B, n, 2w, H/2, W/2]
        pool  adaptive average pool to pool_size x pool_size, per copy
        dense ``OrientationHead(2w·pool_size², num_classes)``          -> [B, n*num_classes]
    each conv followed by ``GroupBatchNorm2d`` (if ``batch_norm``) and ReLU.

    Shapes: input [B, in_channels, H, W] (square, H ≥ 4); output scores [B, n*num_classes]
    (40 for C4 and 10 classes), slot g*num_classes + m = "class m, rotated by g" (see
    ``equifast.nn.encode_labels``). ``predict(x)`` decodes (class, element);
    ``invariant(x)`` gives rotation-invariant class scores [B, num_classes].
    The default ``Figure3Net()`` takes [B, 1, H, H] images (demo: 8x8 digits; MNIST: 28x28).
    """

    def __init__(self, group: Union[str, _groups.Group] = "C4", backend: str = "auto", width: int = 16,
                 num_classes: int = 10, in_channels: int = 1, pool_size: int = 2, batch_norm: bool = True):
        super().__init__()
        self.group = _groups.get(group)
        self.num_classes = num_classes
        w = width
        kw = dict(group=self.group, backend=backend, frame="view")   # view frame whatever default_frame says
        norm = (lambda c: GroupBatchNorm2d(c, self.group)) if batch_norm else (lambda c: nn.Identity())
        self.conv1 = LiftConv2d(in_channels, w, 3, padding=1, bias=not batch_norm, **kw)
        self.bn1 = norm(w)
        self.conv2 = GroupConv2d(w, 2 * w, 3, padding=1, bias=not batch_norm, **kw)
        self.bn2 = norm(2 * w)
        self.pool2 = PerCopy(nn.MaxPool2d(2))
        self.conv3 = GroupConv2d(2 * w, 2 * w, 3, padding=1, bias=not batch_norm, **kw)
        self.bn3 = norm(2 * w)
        self.pool = PerCopy(nn.AdaptiveAvgPool2d(pool_size))
        self.head = OrientationHead(2 * w * pool_size * pool_size, num_classes, self.group)

    def features(self, x: Tensor) -> Tensor:
        """[B, C_in, H, W] -> per-copy features [B, n, 2w, pool_size, pool_size]."""
        s = F.relu(self.bn1(self.conv1(x)))
        s = self.pool2(F.relu(self.bn2(self.conv2(s))))
        s = F.relu(self.bn3(self.conv3(s)))
        return self.pool(s)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    @torch.no_grad()
    def predict(self, x: Tensor):
        """(classes [B], group elements [B]) of the argmax over the n*num_classes scores."""
        return self.head.decode(self(x))

    def invariant(self, x: Tensor) -> Tensor:
        """Rotation-invariant class scores [B, num_classes] (GroupPool of the scores)."""
        return self.head.invariant(self(x))


class PlainCNN(nn.Module):
    """The network Figure3Net equivarifies, as a plain CNN (conv1, conv2, pool, conv3, pool, dense).

    ``PlainCNN(width=16, num_classes=10, in_channels=1, pool_size=2, batch_norm=True)``;
    input [B, in_channels, H, W] -> logits [B, num_classes]. Not equivariant: the contrast in the demo.
    """

    def __init__(self, width: int = 16, num_classes: int = 10, in_channels: int = 1, pool_size: int = 2,
                 batch_norm: bool = True):
        super().__init__()
        w = width
        norm = (lambda c: nn.BatchNorm2d(c)) if batch_norm else (lambda c: nn.Identity())
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1, bias=not batch_norm), norm(w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=not batch_norm), norm(2 * w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=not batch_norm), norm(2 * w), nn.ReLU(),
            nn.AdaptiveAvgPool2d(pool_size), nn.Flatten(),
            nn.Linear(2 * w * pool_size * pool_size, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class GroupResBlock(nn.Module):
    """Residual block on stacks: GroupConv(3x3, stride) -> GBN -> ReLU -> GroupConv(3x3) -> GBN, plus a
    shortcut (identity, or 1x1 GroupConv + GBN when the stride or width changes), then ReLU.
    [B, n, C_in, H, W] -> [B, n, C_out, H/stride, W/stride]."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, group="C4", frame: str = "view",
                 backend: str = "auto"):
        super().__init__()
        kw = dict(group=group, frame=frame, backend=backend, bias=False)
        self.conv1 = GroupConv2d(in_channels, out_channels, 3, stride=stride, padding=1, **kw)
        self.bn1 = GroupBatchNorm2d(out_channels)
        self.conv2 = GroupConv2d(out_channels, out_channels, 3, padding=1, **kw)
        self.bn2 = GroupBatchNorm2d(out_channels)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(GroupConv2d(in_channels, out_channels, 1, stride=stride, **kw),
                                          GroupBatchNorm2d(out_channels))

    def forward(self, s: Tensor) -> Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(s)))))
        return F.relu(y + (s if self.shortcut is None else self.shortcut(s)))


class ResGCNN(nn.Module):
    """A residual G-CNN for 32x32 images (CIFAR-style), C4 or D4, with invariant logits.

    ``ResGCNN(group="C4", frame="view", in_channels=3, num_classes=10, widths=(8, 16, 32),
    blocks=(1, 1, 1), backend="auto")``

    Stem ``LiftConv2d(in_channels, widths[0], 3, padding=1)`` + GBN + ReLU, then one stage per width of
    ``GroupResBlock`` (the first block of every stage after the first has stride 2), then GroupPool
    (max over copies), global average pool and a linear classifier.

    Shapes: input [B, in_channels, H, W] (32x32 in the design; any square size works) -> logits
    [B, num_classes], invariant under G. In the view frame the invariance is exact even with the
    stride-2 stages on even sizes; in the canonical frame stride 2 on even sizes breaks it (see
    ``equifast.nn.exactness_comparison``). Channel counts are per copy: the activations are n times
    wider than a plain CNN of the same widths.
    """

    def __init__(self, group: Union[str, _groups.Group] = "C4", frame: str = "view", in_channels: int = 3,
                 num_classes: int = 10, widths: Sequence[int] = (8, 16, 32), blocks: Sequence[int] = (1, 1, 1),
                 backend: str = "auto"):
        super().__init__()
        if len(widths) != len(blocks):
            raise ValueError("ResGCNN: widths and blocks must have the same length")
        self.group = _groups.get(group)
        kw = dict(group=self.group, frame=frame, backend=backend)
        self.stem = LiftConv2d(in_channels, widths[0], 3, padding=1, bias=False, **kw)
        self.stem_bn = GroupBatchNorm2d(widths[0])
        layers, c = [], widths[0]
        for i, (w, b) in enumerate(zip(widths, blocks)):
            for j in range(b):
                layers.append(GroupResBlock(c, w, stride=2 if (i > 0 and j == 0) else 1, **kw))
                c = w
        self.stages = nn.Sequential(*layers)
        self.pool = GroupPool("max")
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        s = self.stages(F.relu(self.stem_bn(self.stem(x))))
        return self.fc(self.pool(s).mean(dim=(-2, -1)))
