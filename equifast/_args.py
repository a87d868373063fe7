"""Argument checking and the resolved convolution plan shared by every backend.

``ConvPlan`` holds what a backend needs besides tensors: the group, stride (sh, sw),
explicit padding (top, bottom, left, right) — "same"/"valid" and pairs resolved the way
``torch.nn.functional.conv2d`` resolves them — dilation (dh, dw) and the frame.

Geometry is checked here once, in exact (Python) integer arithmetic, so that every backend gets
numbers its int64 index arithmetic can hold: each of stride, padding and dilation fits int64,
the padded input (H + top + bottom) and the dilated kernel (dilation·(k − 1) + 1) fit int64, and
the output has at most 2**63 − 1 elements; otherwise a ValueError names the argument. Every call
``torch.nn.functional.conv2d`` accepts either gets conv2d's output size (floor rounding, ``out_size``)
or one of these errors. The compiled kernels repeat the checks (csrc/equiconv.h) for direct calls.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch

from . import groups as _groups

FRAMES = ("view", "canonical")
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

IntPair = Union[int, Sequence[int]]
INT64_MAX = 2 ** 63 - 1


def out_size(H: int, W: int, kh: int, kw: int, stride, padding, dilation) -> Tuple[int, int]:
    """Output size (H', W') of a convolution, as ``torch.nn.functional.conv2d`` computes it
    (floor division); ``padding`` is explicit (top, bottom, left, right). The one definition used
    by the ops, their fake kernels and the compiled ops' fake kernels."""
    pt, pb, pl, pr = padding
    (sh, sw), (dh, dw) = stride, dilation
    return ((H + pt + pb - dh * (kh - 1) - 1) // sh + 1,
            (W + pl + pr - dw * (kw - 1) - 1) // sw + 1)


@dataclass(frozen=True)
class ConvPlan:
    group: _groups.Group
    stride: Tuple[int, int]
    padding: Tuple[int, int, int, int]   # top, bottom, left, right
    dilation: Tuple[int, int]
    frame: str

    @property
    def order(self) -> int:
        return self.group.order

    def out_size(self, H: int, W: int, kh: int, kw: int) -> Tuple[int, int]:
        return out_size(H, W, kh, kw, self.stride, self.padding, self.dilation)

    def schema_args(self):
        """The plan as custom-op arguments (group name, stride, padding, dilation, frame)."""
        return self.group.name, list(self.stride), list(self.padding), list(self.dilation), self.frame


def make_plan(group, stride, padding, dilation, frame, kh: int, kw: int, op: str) -> ConvPlan:
    group = _groups.get(group)
    if frame not in FRAMES:
        raise ValueError(f"{op}: frame must be one of {FRAMES}, got {frame!r}")
    stride = _pair(stride, "stride", op, minimum=1)
    dilation = _pair(dilation, "dilation", op, minimum=1)
    if isinstance(padding, str):
        if padding == "valid":
            pads = (0, 0, 0, 0)
        elif padding == "same":
            if stride != (1, 1):
                raise ValueError(f"{op}: padding='same' is not supported for strided convolutions "
                                 f"(stride={stride}), as in torch.nn.functional.conv2d")
            pads = []
            for d, k in zip(dilation, (kh, kw)):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            pads = tuple(pads)
        else:
            raise ValueError(f"{op}: padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    elif isinstance(padding, (tuple, list)) and len(padding) == 4:
        pads = tuple(_int(p, "padding", op, 0) for p in padding)
    else:
        ph, pw = _pair(padding, "padding", op, minimum=0)
        pads = (ph, ph, pw, pw)
    return ConvPlan(group, stride, pads, dilation, frame)


def plan_from_schema(group: str, stride, padding, dilation, frame: str) -> ConvPlan:
    return ConvPlan(_groups.get(group), tuple(stride), tuple(padding), tuple(dilation), frame)


def _int(v, name, op, minimum):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {v!r}")
    if v < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {v}")
    if v > INT64_MAX:
        raise ValueError(f"{op}: {name} must be at most 2**63 - 1 (int64), got {v}")
    return int(v)


def _pair(v: IntPair, name: str, op: str, minimum: int) -> Tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {v!r}")
        return _int(v[0], name, op, minimum), _int(v[1], name, op, minimum)
    x = _int(v, name, op, minimum)
    return x, x


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check_tensors(op: str, x: torch.Tensor, x_name: str, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
    for name, t in ((x_name, x), ("weight", weight), ("bias", bias)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t is not None and t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{op}: {name} has unsupported dtype {t.dtype}; expected one of "
                            f"float16, bfloat16, float32, float64")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if t.device != x.device:
            raise ValueError(f"{op}: {name} is on {t.device} but {x_name} is on {x.device}; "
                             f"all tensors must be on one device")
        if t.dtype != x.dtype:
            raise TypeError(f"{op}: {name} has dtype {t.dtype} but {x_name} has dtype {x.dtype}; "
                            f"all tensors must have one dtype")


def _check_weight_ndim(op, weight, ndim, shape_text):
    if weight.dim() != ndim:
        raise ValueError(f"{op}: expected weight of shape {shape_text} ({ndim}-D), "
                         f"got {weight.dim()}-D shape {_shape(weight)}")


def check_lift(x, weight, bias, group, stride, padding, dilation, frame) -> ConvPlan:
    """Validate a lift_conv call; returns its plan."""
    op = "lift_conv"
    check_tensors(op, x, "x", weight, bias)
    _check_weight_ndim(op, weight, 4, "[C_out, C_in, kh, kw]")
    plan = make_plan(group, stride, padding, dilation, frame, weight.shape[-2], weight.shape[-1], op)
    if x.dim() != 4:
        raise ValueError(f"{op}: expected input x of shape [B, C_in, H, W] (4-D), got {x.dim()}-D shape {_shape(x)}")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"{op}: weight has C_in={weight.shape[1]} input channels but x has "
                         f"{x.shape[1]} channels (x {_shape(x)}, weight {_shape(weight)})")
    _check_common(op, x, "x", weight, bias, plan)
    return plan


def check_group(s, weight, bias, group, stride, padding, dilation, frame) -> ConvPlan:
    """Validate a group_conv call; returns its plan."""
    op = "group_conv"
    check_tensors(op, s, "s", weight, bias)
    _check_weight_ndim(op, weight, 5, "[C_out, n, C_in, kh, kw]")
    plan = make_plan(group, stride, padding, dilation, frame, weight.shape[-2], weight.shape[-1], op)
    n = plan.order
    if s.dim() != 5:
        raise ValueError(f"{op}: expected input s of shape [B, n={n}, C_in, H, W] (5-D), "
                         f"got {s.dim()}-D shape {_shape(s)}")
    if s.shape[1] != n:
        raise ValueError(f"{op}: input s has group axis of size {s.shape[1]} (dim 1) but group "
                         f"{plan.group.name} has order {n}; expected s of shape [B, {n}, C_in, H, W]")
    if weight.shape[1] != n:
        raise ValueError(f"{op}: weight has group axis of size {weight.shape[1]} (dim 1) but group "
                         f"{plan.group.name} has order {n}; expected weight [C_out, {n}, C_in, kh, kw]")
    if weight.shape[2] != s.shape[2]:
        raise ValueError(f"{op}: weight has C_in={weight.shape[2]} input channels but s has "
                         f"{s.shape[2]} channels (s {_shape(s)}, weight {_shape(weight)})")
    _check_common(op, s, "s", weight, bias, plan)
    return plan


def _check_common(op, inp, name, weight, bias, plan: ConvPlan) -> None:
    H, W = int(inp.shape[-2]), int(inp.shape[-1])
    kh, kw = int(weight.shape[-2]), int(weight.shape[-1])
    group = plan.group
    if group.quarter_turns and plan.frame == "view" and op == "lift_conv" and H != W:
        raise ValueError(f"{op}: group {group.name} rotates by 90 degrees and needs a square input; "
                         f"got spatial size {H}x{W}")
    if group.quarter_turns and plan.frame == "canonical" and kh != kw:
        raise ValueError(f"{op}: frame='canonical' with group {group.name} rotates the kernel by 90 degrees "
                         f"and needs a square kernel; got weight with kernel size {kh}x{kw}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0]):
        raise ValueError(f"{op}: expected bias of shape [C_out={weight.shape[0]}], got {_shape(bias)}")
    if min(weight.shape) == 0 and weight.shape[0] != 0:
        raise ValueError(f"{op}: weight has a zero-size dimension: {_shape(weight)}")
    if H < 1 or W < 1:
        raise ValueError(f"{op}: input {name} has an empty spatial size {H}x{W}; expected at least 1x1")
    check_geometry(op, (H, W), (kh, kw), plan.stride, plan.padding, plan.dilation,
                   int(inp.shape[0]) * plan.order * int(weight.shape[0]))


def check_geometry(op: str, hw, khw, stride, padding, dilation, channels: int = 1) -> Tuple[int, int]:
    """Check that an H x W input and a kh x kw kernel give a non-empty output whose arithmetic fits
    int64 (see the module docstring); returns (H', W'). ``padding`` is explicit (top, bottom, left,
    right); ``channels``: the output's other dims (B·n·C_out), for the element count."""
    (H, W), (kh, kw) = hw, khw
    padding, stride, dilation = tuple(padding), tuple(stride), tuple(dilation)
    pt, pb, pl, pr = padding
    for axis, size, lo, hi, d, k in (("H", H, pt, pb, dilation[0], kh), ("W", W, pl, pr, dilation[1], kw)):
        if size + lo + hi > INT64_MAX:
            raise ValueError(f"{op}: padding (top, bottom, left, right)={padding} is too large: the padded "
                             f"input {axis} + padding = {size + lo + hi} exceeds 2**63 - 1 (int64)")
        if d * (k - 1) + 1 > INT64_MAX:
            raise ValueError(f"{op}: dilation {dilation} is too large: the dilated kernel dilation * (k - 1) + 1 "
                             f"= {d * (k - 1) + 1} exceeds 2**63 - 1 (int64)")
    Ho, Wo = out_size(H, W, kh, kw, stride, padding, dilation)
    if Ho <= 0 or Wo <= 0:
        raise ValueError(f"{op}: output size would be empty ({Ho}x{Wo}) for input {H}x{W}, kernel {kh}x{kw}, "
                         f"stride {stride}, padding (top, bottom, left, right)={padding}, "
                         f"dilation {dilation}: the padded input must be at least as large as the "
                         f"dilated kernel")
    if max(channels, 1) * Ho * Wo > INT64_MAX:
        raise ValueError(f"{op}: the output would have {max(channels, 1)} x {Ho} x {Wo} elements, more than "
                         f"2**63 - 1 (int64): padding {padding} is too large for stride {stride}")
    return Ho, Wo
