"""The ``torch`` backend: the strongest plain-PyTorch formulation, one conv2d call per op.

The weight is expanded once into rotated / block-permuted copies and a single ``conv2d``
(cuDNN on GPU, oneDNN on CPU) evaluates every group copy; the output is then re-indexed.
Portable to every device; the fallback of ``backend="auto"`` and the main peer in benchmarks.
Backward is autograd through the forward (see ``equifast.backends``)."""
from .lift_conv import lift_conv
from .group_conv import group_conv

NAME = "torch"


def availability(device):
    return True, ""


def supports(plan, x, weight):
    return True, ""
