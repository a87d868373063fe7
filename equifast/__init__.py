"""equifast: fast equivariant convolutions for PyTorch.

``lift_conv`` evaluates a convolution on the whole group orbit of its input; ``group_conv``
convolves a stack of group copies. Both are ``torch.library`` custom ops (namespace
``equifast``) with fake kernels and autograd, behind several backends (see
``available_backends``). Importing equifast compiles nothing and queries no device.
"""
from . import groups
from .backends import available_backends
from .ops import group_conv, lift_conv

__version__ = "0.1.0"

__all__ = ["lift_conv", "group_conv", "groups", "available_backends", "__version__"]


def __getattr__(name):  # lazy submodules: equifast.nn, equifast.models, ...
    import importlib
    if name in ("nn", "models", "data", "interop", "backends", "ops", "parameter_sharing"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'equifast' has no attribute {name!r}")
