"""OrientationHead: the paper's |G| x classes scores, its label encoding and the (class, angle) decoder."""
import torch

import equifast.nn as enn
from equifast import groups
from equifast.models import Figure3Net

C4 = groups.get("C4")
# labels: an upright digit m rotated by k·90° has target slot k·10 + m (the paper's 0 ⊕ e_m ⊕ 0 ⊕ 0)
print(enn.encode_labels(torch.tensor([7, 7]), torch.tensor([0, 1]), num_classes=10))          # tensor([ 7, 17])
print(enn.encode_labels(torch.tensor([7]), torch.tensor([1]), 10, order=4).view(4, 10))

model = Figure3Net().eval()             # conv1 lifted, conv2/conv3 on stacked copies, pool, OrientationHead
x = torch.rand(3, 1, 8, 8)
scores = model(x)                       # [3, 40]
cls, k = model.head.decode(scores)      # number and group element
print("number", cls.tolist(), "angle", model.head.angle(k).tolist())
cls_r, k_r = model.predict(C4.act(x, 1))            # rotate by 90°: same number, angle + 90°
assert torch.equal(cls_r, cls) and torch.equal(k_r, (k + 1) % 4)
print("invariant class scores:", tuple(model.invariant(x).shape))
