"""Move an escnn network to equifast in one call (equifast.interop.from_escnn), then export it.

Needs escnn (which needs numpy < 2; see tests/test_interop.py for a side environment). Without
escnn this example says so and shows the one-line default-frame switch only.
"""
import warnings

import torch
from torch import nn

import equifast.nn as enn

# an escnn-style (canonical-frame) network written with equifast directly: one switch, no frame= per layer
with enn.default_frame("canonical"):
    net = nn.Sequential(enn.LiftConv2d(1, 8, 5, padding=2), enn.GroupBatchNorm2d(8), nn.ReLU(),
                        enn.GroupConv2d(8, 8, 3, padding=1), enn.GroupPool("max"))
print("frames:", {type(m).__name__: m.frame for m in net if hasattr(m, "frame")})

try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from escnn import gspaces
        from escnn import nn as escnn_nn
except Exception as exc:   # not installed, or broken by numpy 2
    print(f"escnn is not available ({type(exc).__name__}); skipping the conversion")
else:
    from equifast.interop import from_escnn
    gs = gspaces.rot2dOnR2(4)
    t = escnn_nn.FieldType(gs, [gs.trivial_repr])
    r = escnn_nn.FieldType(gs, [gs.regular_repr] * 8)
    theirs = escnn_nn.SequentialModule(escnn_nn.R2Conv(t, r, 5, padding=2), escnn_nn.InnerBatchNorm(r),
                                       escnn_nn.ReLU(r), escnn_nn.R2Conv(r, r, 3, padding=1),
                                       escnn_nn.GroupPooling(r)).eval()
    ours = from_escnn(theirs)
    x = torch.randn(2, 1, 29, 29)
    with torch.no_grad():
        expected = theirs(escnn_nn.GeometricTensor(x, t)).tensor
        print("from_escnn max |difference|:", float((ours(x) - expected).abs().max()))
        print("export max |difference|:", float((enn.export(ours)(x) - expected).abs().max()))
    print(ours)
