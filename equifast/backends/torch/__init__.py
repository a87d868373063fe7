"""The ``torch`` backend: the strongest plain-PyTorch formulation, one conv2d call per op.

The weight is expanded once into rotated / block-permuted copies and a single ``conv2d``
(cuDNN on GPU, oneDNN on CPU) evaluates every group copy; the output is then re-indexed.
Portable to every device; the fallback of ``backend="auto"`` and the main peer in benchmarks.
Backward: one ``convolution_backward`` per op on the rebuilt conv operands (no recomputed
forward), the cheap gathers differentiated by torch.func.vjp."""
from .group_conv import group_conv_backward, group_conv_forward
from .lift_conv import lift_conv_backward, lift_conv_forward

NAME = "torch"
INDEX_BITS = 64


def availability(device):
    return True, ""


def supports(plan, x, weight):
    return True, ""
