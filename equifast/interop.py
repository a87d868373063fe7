"""Zero-copy conversion between equifast stacks and the field-major layout of escnn / e2cnn / GrouPy.

equifast stacks are [B, n, C, H, W] (group axis second). escnn/e2cnn regular fields and GrouPy's
P4/P4M feature maps are plain 4-D tensors [B, C*n, H, W] whose channel ``c*n + g`` holds field
(channel) c at group element g — i.e. memory ordered like [B, C, n, H, W].

* ``from_field_major(y, n)``: [B, C*n, H, W] -> [B, n, C, H, W] as a *view* of ``y`` (no copy: same
  storage, permuted strides). equifast's ops accept such strided stacks directly.
* ``to_field_major(s)``: [B, n, C, H, W] -> [B, C*n, H, W]; a view (no copy) when ``s`` has
  field-major memory (e.g. it came from ``from_field_major``), otherwise one copy
  (``copy="never"`` raises instead).

Round trip: ``to_field_major(from_field_major(y, n))`` shares ``y``'s storage
(``.data_ptr()`` equal).

Example (an escnn regular-field tensor through an equifast group convolution)::

    >>> import torch, equifast
    >>> from equifast.interop import from_field_major, to_field_major
    >>> y = torch.randn(2, 8 * 4, 16, 16)            # escnn: 8 regular C4 fields, channel c*4 + g
    >>> s = from_field_major(y, 4)                    # [2, 4, 8, 16, 16], no copy
    >>> s.data_ptr() == y.data_ptr()
    True
    >>> w = torch.randn(16, 4, 8, 3, 3)
    >>> out = equifast.group_conv(s, w, padding=1, frame="canonical")   # escnn's conventions
    >>> to_field_major(out).shape                     # back to [B, C*n, H, W] for escnn
    torch.Size([2, 64, 16, 16])

The canonical frame follows escnn's conventions for C_n (DESIGN §2): an escnn ``R2Conv`` between
regular fields, exported to a plain conv, is a canonical-frame ``lift_conv`` / ``group_conv``.
GrouPy orders the elements of p4 / p4m its own way; the channel layout is the same, but map its
element order onto equifast's (``groups.get("C4")``: element k = rotation by 90°·k counter-clockwise)
before comparing numbers.
"""
from __future__ import annotations

from torch import Tensor

__all__ = ["from_field_major", "to_field_major", "is_field_major"]


def from_field_major(y: Tensor, n: int) -> Tensor:
    """[B, C*n, H, W] (channel c*n + g) -> [B, n, C, H, W] view sharing ``y``'s storage (no copy)."""
    if y.dim() != 4:
        raise ValueError(f"from_field_major: expected [B, C*n, H, W] (4-D), got shape {list(y.shape)}")
    B, Cn, H, W = y.shape
    if n <= 0 or Cn % n:
        raise ValueError(f"from_field_major: {Cn} channels are not a multiple of the group order n={n}")
    return y.unflatten(1, (Cn // n, n)).transpose(1, 2)


def is_field_major(s: Tensor) -> bool:
    """True when the stack [B, n, C, H, W] can be viewed as [B, C*n, H, W] without a copy."""
    if s.dim() != 5:
        return False
    t = s.transpose(1, 2)
    B, C, n, H, W = t.shape
    try:
        t.view(B, C * n, H, W)
        return True
    except RuntimeError:
        return False


def to_field_major(s: Tensor, copy: str = "if_needed") -> Tensor:
    """[B, n, C, H, W] -> [B, C*n, H, W] (channel c*n + g).

    A view (no copy) when ``s`` has field-major memory; otherwise ``copy="if_needed"`` (default)
    copies once and ``copy="never"`` raises."""
    if s.dim() != 5:
        raise ValueError(f"to_field_major: expected a stack [B, n, C, H, W] (5-D), got shape {list(s.shape)}")
    if copy not in ("if_needed", "never"):
        raise ValueError(f"to_field_major: copy must be 'if_needed' or 'never', got {copy!r}")
    B, n, C, H, W = s.shape
    t = s.transpose(1, 2)
    try:
        return t.view(B, C * n, H, W)
    except RuntimeError:
        if copy == "never":
            raise ValueError("to_field_major: this stack's memory is not field-major ([B, C, n, H, W]); "
                             "a copy is needed (copy='if_needed')") from None
        return t.reshape(B, C * n, H, W)
