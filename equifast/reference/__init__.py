"""The ``reference`` backend: the naive looped lifting, the oracle of every test.

Backward is autograd through the forward (see ``equifast.backends``)."""
from .lift_conv import lift_conv
from .group_conv import group_conv

NAME = "reference"


def availability(device):
    return True, ""


def supports(plan, x, weight):
    return True, ""
