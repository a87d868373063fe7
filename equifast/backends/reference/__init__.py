"""The ``reference`` backend: the naive looped lifting, the oracle of every test.

Backward is ``torch.func.vjp`` through the forward (see ``equifast.backends``)."""
from .group_conv import group_conv_forward
from .lift_conv import lift_conv_forward

NAME = "reference"
INDEX_BITS = 64


def availability(device):
    return True, ""


def supports(plan, x, weight):
    return True, ""
