"""Equivariant network layers built on ``equifast.lift_conv`` / ``equifast.group_conv``.

Stacks are [B, n, C, H, W] (group axis second, n = |G|).

* ``LiftConv2d``      image [B, C_in, H, W] -> stack [B, n, C_out, H', W']
* ``GroupConv2d``     stack -> stack
* ``GroupBatchNorm2d`` stack -> stack, statistics shared over the group axis
* ``GroupPool``       stack [B, n, ...] -> [B, ...] (max/mean over copies: the invariant projection)
* ``PerCopy(m)``      apply an image module to every copy in one call
* ``Equivarify(F, G)`` x -> [F(g⁻¹x) for g in G] on dim 1 (the paper's lemma; any module F)
* ``OrientationHead`` the paper's |G| x classes scores; ``encode_labels`` / ``decode_scores``
* ``equivariance_error``, ``exactness_comparison`` measure equivariance
* ``export(model)``    the whole network as plain PyTorch (every layer also has ``.export()``)
* ``default_frame("canonical")`` the frame new conv layers take (a setting, or a ``with`` block)

``EquivariantLinear`` and ``DeepSets`` are re-exported lazily from ``equifast.parameter_sharing``.
"""
from ._frame import default_frame, get_default_frame
from .conv import GroupConv2d, LiftConv2d
from .equivarify import Equivarify, equivarify_views
from ._export import check_stack_flow, export
from .head import OrientationHead, decode_scores, element_angle, encode_labels, invariant_scores
from .metrics import StridedProbeNet, equivariance_error, exactness_comparison, format_exactness_table
from .norm import GroupBatchNorm2d
from .pool import GroupPool, PerCopy, group_pool

__all__ = [
    "LiftConv2d", "GroupConv2d", "GroupBatchNorm2d", "GroupPool", "PerCopy", "group_pool",
    "Equivarify", "equivarify_views", "OrientationHead", "encode_labels", "decode_scores", "element_angle",
    "invariant_scores", "equivariance_error", "exactness_comparison", "format_exactness_table", "StridedProbeNet",
    "export", "check_stack_flow", "default_frame", "get_default_frame",
]

_LAZY = {"EquivariantLinear": "equifast.parameter_sharing", "DeepSets": "equifast.parameter_sharing"}


def __getattr__(name):
    """Lazy re-exports: ``EquivariantLinear`` and ``DeepSets`` from ``equifast.parameter_sharing``
    (imported on first access, so a missing module never breaks ``import equifast.nn``)."""
    if name in _LAZY:
        import importlib
        try:
            module = importlib.import_module(_LAZY[name])
        except ImportError as exc:
            raise AttributeError(f"equifast.nn.{name} is provided by {_LAZY[name]}, which could not be "
                                 f"imported: {exc}") from exc
        try:
            return getattr(module, name)
        except AttributeError:
            raise AttributeError(f"{_LAZY[name]} has no attribute {name!r}") from None
    raise AttributeError(f"module 'equifast.nn' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
