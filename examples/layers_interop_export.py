"""Interop with escnn / e2cnn / GrouPy field-major tensors, and exporting layers as plain nn.Conv2d.

Whole networks: examples/layers_deploy.py (equifast.nn.export); escnn networks:
examples/layers_from_escnn.py (equifast.interop.from_escnn)."""
import torch

import equifast.nn as enn
from equifast.interop import from_field_major, to_field_major

# escnn regular fields: [B, C*n, H, W] with channel c*n + g  <->  equifast [B, n, C, H, W], no copy
y = torch.randn(2, 8 * 4, 16, 16)
s = from_field_major(y, 4)
assert s.shape == (2, 4, 8, 16, 16) and s.data_ptr() == y.data_ptr()
assert to_field_major(s).data_ptr() == y.data_ptr()
out = enn.GroupConv2d(8, 16, 3, padding=1, frame="canonical")(s)   # the ops read strided stacks directly
print("escnn-layout output:", tuple(to_field_major(out).shape))

# deployment: a canonical-frame lift is one nn.Conv2d with the expanded (rotated) filter bank
lift = enn.LiftConv2d(3, 8, 3, padding=1, frame="canonical")
conv = lift.to_conv2d()                                  # nn.Conv2d(3, 32, 3, padding=1)
x = torch.randn(2, 3, 16, 16)
assert torch.allclose(conv(x).view(2, 4, 8, 16, 16), lift(x), atol=1e-6)
# view frame at any stride: export() is rot90/flip views of the input + one conv
view = enn.LiftConv2d(3, 8, 3, stride=2, padding=1)
assert torch.allclose(view.export()(x), view(x), atol=1e-6)
# a group conv as one nn.Conv2d in escnn's field-major channel order
gconv = enn.GroupConv2d(16, 4, 3, padding=1, frame="canonical")
escnn_conv = gconv.to_conv2d(layout="field_major")
assert torch.allclose(from_field_major(escnn_conv(to_field_major(out)), 4), gconv(out), atol=1e-5)
print(conv, "->", "exported outputs match")
