"""View-frame group convolution in the group-Fourier basis (see ``basis``): per run of irreducible
copies of one dimension d (at most n/2 rows: C4, C8, C16 and D8 3 runs, D4 2), one grouped conv2d.

forward, per run (S groups of d*C_in -> d*C_out channels):
    U = t_in ·_g s                       mix of the group axis          [B, S*d, C_in, H, W]
    Ŵ = t_w ·_h w                        transformed filters            [S*d*C_out, d*C_in, kh, kw]
    Y = conv2d(U, Ŵ, groups=S)           the only heavy step            [B, S*d, C_out, H', W']
    out += t_out ·_g Y                                                  [B, n, C_out, H', W']
The bias enters the run that holds the trivial representation as the grouped conv's bias.
backward, per run, with the same matrices transposed (no recomputed forward, no autograd):
    gY = t_outᵀ ·_g grad_out;  gU, gŴ = convolution_backward(gY, U, Ŵ, groups=S)
    grad_s += t_inᵀ ·_g gU;    grad_w += t_wᵀ ·_h gŴ
Mixes keep the stack's layout: contiguous [B, n, C, H, W] stacks are mixed as [B, n, C*H*W]
matrices; channels_last stacks (memory B, H, W, n, C) as [B*H*W, n, C], so that a run's U is a
channels_last image for the convolution without a copy.

Precision: float32/float64 compute in their own dtype. bfloat16 (and float16 off CPU) mixes in
float32 and convolves in its own dtype (U, Ŵ and Y are rounded to it); float16 on CPU runs in float32
and rounds once (oneDNN's CPU float16 convolution is unreliable, see ``equifast.backends._conv2d``).
Autocast is switched off inside: the dtypes are the ones chosen here.
"""
from __future__ import annotations

import threading
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from ..._layout import flatten_stack, is_channels_last, unflatten_stack
from . import basis as _basis

LOW_PRECISION = (torch.float16, torch.bfloat16)


def _dtypes(t: torch.Tensor) -> Tuple[torch.dtype, torch.dtype]:
    """(dtype of the group-axis mixes, dtype of the convolutions): low precision mixes in float32 and
    convolves in its own dtype, except float16 on CPU (see ``equifast.backends._conv2d``)."""
    if t.dtype == torch.float64:
        return torch.float64, torch.float64
    if t.dtype == torch.float16 and t.device.type == "cpu":
        return torch.float32, torch.float32
    return torch.float32, t.dtype


# ---------------------------------------------------------------------------------------------
# Matrices on device
# ---------------------------------------------------------------------------------------------
_MATRICES: Dict[tuple, tuple] = {}
_LOCK = threading.Lock()


def _chunks(block: _basis.Block, rows: int):
    """``block`` split into as few runs of consecutive groups of at most ``rows`` rows as possible (of
    near-equal size). With rows = n/2 one call's transformed operands are at most half the stack:
    lower peak memory (C_n's three-product blocks have more rows than the group has elements) and,
    measured on CPU, 5-25% faster than one call per block (smaller working sets)."""
    S, d = block.groups, block.d
    count = -(-S * d // rows) if S * d > rows else 1
    bounds = [round(i * S / count) for i in range(count + 1)]
    for a, b in zip(bounds, bounds[1:]):
        yield block.d, b - a, block.t_in[a * d:b * d], block.t_w[a:b], block.t_out[:, a * d:b * d], \
            block.bias[a * d:b * d]


def _matrices(group, device, dtype):
    """Per call (d, S, t_in [S*d, n], t_w [S*d*d, n], t_out [n, S*d], bias [S*d] or None) on ``device``
    in ``dtype``."""
    key = (group.name, id(group), str(device), dtype)
    hit = _MATRICES.get(key)
    if hit is None:
        rows = max(1, group.order // 2)
        hit = tuple((d, S, t_in.to(device, dtype), t_w.reshape(-1, t_w.shape[-1]).to(device, dtype),
                     t_out.to(device, dtype), bias.to(device, dtype) if bool(bias.any()) else None)
                    for b in _basis.get(group).blocks for d, S, t_in, t_w, t_out, bias in _chunks(b, rows))
        with _LOCK:
            _MATRICES[key] = hit
    return hit


# ---------------------------------------------------------------------------------------------
# Group-axis mixes
# ---------------------------------------------------------------------------------------------
def _prepare(s: torch.Tensor) -> Tuple[torch.Tensor, bool]:
    """``s`` as a contiguous or channels_last stack (copied otherwise) and whether it is channels_last."""
    if is_channels_last(s):
        return s, True
    return s.contiguous(), False


def mix(T: torch.Tensor, s: torch.Tensor, channels_last: bool, accumulate: Optional[torch.Tensor] = None):
    """out[:, r] = Σ_g T[r, g] s[:, g] for a stack s [B, n, C, H, W] in its layout; adds into
    ``accumulate`` (a stack of the result's shape and layout, returned) when given."""
    B, n, C, H, W = s.shape
    R = T.shape[0]
    if channels_last:
        v = s.permute(0, 3, 4, 1, 2).reshape(B * H * W, n, C)
    else:
        v = s.reshape(B, n, C * H * W)
    if accumulate is None:
        out = torch.matmul(T, v)
    else:
        acc = accumulate.permute(0, 3, 4, 1, 2).reshape(B * H * W, R, C) if channels_last \
            else accumulate.view(B, R, C * H * W)
        out = acc.baddbmm_(T.expand(v.shape[0], R, n), v)
    if channels_last:
        return out.view(B, H, W, R, C).permute(0, 3, 4, 1, 2)
    return out.view(B, R, C, H, W)


def transform_weight(t_w: torch.Tensor, weight: torch.Tensor, d: int, S: int) -> torch.Tensor:
    """Ŵ [S*d*C_out, d*C_in, kh, kw] with Ŵ[(s, a, o), (b, c)] = Σ_h t_w[(s, a, b), h] weight[o, h, c]."""
    C_out, n, C_in, kh, kw = weight.shape
    mixed = torch.matmul(t_w, weight.transpose(0, 1).reshape(n, -1))          # [(s a b), (o c k l)]
    mixed = mixed.view(S, d, d, C_out, C_in, kh, kw).permute(0, 1, 3, 2, 4, 5, 6)
    return mixed.reshape(S * d * C_out, d * C_in, kh, kw)


def weight_grad(t_w: torch.Tensor, g_hat: torch.Tensor, d: int, S: int, shape) -> torch.Tensor:
    """The adjoint of ``transform_weight``: [C_out, n, C_in, kh, kw] from gŴ."""
    C_out, n, C_in, kh, kw = shape
    g = g_hat.reshape(S, d, C_out, d, C_in, kh * kw).permute(0, 1, 3, 2, 4, 5).reshape(S * d * d, -1)
    return torch.matmul(t_w.t(), g).view(n, C_out, C_in, kh, kw).transpose(0, 1)


def transformed_weights(weight: torch.Tensor, mats, conv_dtype) -> List[torch.Tensor]:
    """Ŵ of every block, computed on every call (one small matmul over the weight). Not cached across
    calls: a cache keyed on the weight's version counter goes stale when the weight is edited through
    ``.data`` (torch.autograd.gradcheck perturbs its inputs that way; so do some EMA updates)."""
    w = weight.to(mats[0][2].dtype)
    return [transform_weight(t_w, w, d, S).to(conv_dtype) for d, S, _, t_w, _, _ in mats]


# ---------------------------------------------------------------------------------------------
# Convolution with explicit padding and groups
# ---------------------------------------------------------------------------------------------
def _conv(x, weight, bias, plan, groups):
    pt, pb, pl, pr = plan.padding
    if pt == pb and pl == pr:
        return F.conv2d(x, weight, bias, plan.stride, (pt, pl), plan.dilation, groups)
    return F.conv2d(F.pad(x, (pl, pr, pt, pb)), weight, bias, plan.stride, 0, plan.dilation, groups)


def _conv_backward(grad_y, x, weight, plan, groups, need_x, need_w):
    pt, pb, pl, pr = plan.padding
    symmetric = pt == pb and pl == pr
    inp = x if symmetric else F.pad(x, (pl, pr, pt, pb))
    gx, gw, _ = torch.ops.aten.convolution_backward(
        grad_y, inp, weight, None, list(plan.stride), [pt, pl] if symmetric else [0, 0], list(plan.dilation),
        False, [0, 0], groups, [bool(need_x), bool(need_w), False])
    if gx is not None and not symmetric:   # the crop, in the input's layout
        fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
        gx = gx[..., pt:pt + x.shape[-2], pl:pl + x.shape[-1]].contiguous(memory_format=fmt)
    return gx, gw


def _empty_image(B, C, H, W, channels_last, dtype, device):
    if channels_last:
        return torch.empty(B, H, W, C, dtype=dtype, device=device).permute(0, 3, 1, 2)
    return torch.empty(B, C, H, W, dtype=dtype, device=device)


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------
def group_conv_forward(s, weight, bias, plan):
    with torch.autocast(s.device.type, enabled=False):   # dtypes are chosen here (``_dtypes``)
        return _forward(s, weight, bias, plan)


def group_conv_backward(grad_out, s, weight, plan, output_mask):
    """(grad_s, grad_weight, None): the bias gradient is left to the op (a sum of grad_out)."""
    with torch.autocast(s.device.type, enabled=False):
        return _backward(grad_out, s, weight, plan, output_mask)


def _forward(s, weight, bias, plan):
    dtype = s.dtype
    mix_dtype, conv_dtype = _dtypes(s)
    mats = _matrices(plan.group, s.device, mix_dtype)
    s, cl = _prepare(s.to(mix_dtype))
    hats = transformed_weights(weight, mats, conv_dtype)
    out = None
    for (d, S, t_in, _, t_out, bias_vec), w_hat in zip(mats, hats):
        U = flatten_stack(mix(t_in, s, cl).to(conv_dtype))
        b = None
        if bias is not None and bias_vec is not None:
            b = (bias_vec[:, None] * bias.to(mix_dtype)[None, :]).reshape(-1).to(conv_dtype)
        Y = _conv(U, w_hat, b, plan, S)
        del U                                   # peak memory: one run's operands at a time
        out = mix(t_out, unflatten_stack(Y, t_in.shape[0]).to(mix_dtype), cl, accumulate=out)
        del Y
    return out.to(dtype)


def _backward(grad_out, s, weight, plan, output_mask):
    need_x, need_w = bool(output_mask[0]), bool(output_mask[1])
    if not (need_x or need_w):
        return None, None, None
    dtype = s.dtype
    mix_dtype, conv_dtype = _dtypes(s)
    mats = _matrices(plan.group, s.device, mix_dtype)
    s, cl = _prepare(s.to(mix_dtype))
    g_out, g_cl = _prepare(grad_out.to(mix_dtype))
    hats = transformed_weights(weight, mats, conv_dtype)
    grad_s, grad_w = None, None
    for (d, S, t_in, t_w, t_out, _), w_hat in zip(mats, hats):
        gY = flatten_stack(mix(t_out.t(), g_out, g_cl).to(conv_dtype))
        if need_w:
            U = flatten_stack(mix(t_in, s, cl).to(conv_dtype))
        else:  # the input gradient reads only U's shape and layout
            U = _empty_image(s.shape[0], t_in.shape[0] * s.shape[2], s.shape[3], s.shape[4], cl, conv_dtype, s.device)
        gU, gW = _conv_backward(gY, U, w_hat, plan, S, need_x, need_w)
        del gY, U                               # peak memory: one run's operands at a time
        if need_x:
            fmt = torch.channels_last if cl else torch.contiguous_format
            gU = unflatten_stack(gU.contiguous(memory_format=fmt).to(mix_dtype), t_in.shape[0])
            grad_s = mix(t_in.t(), gU, cl, accumulate=grad_s)
            del gU
        if need_w:
            gw = weight_grad(t_w, gW.to(mix_dtype), d, S, weight.shape)
            grad_w = gw if grad_w is None else grad_w.add_(gw)
    return (None if grad_s is None else grad_s.to(dtype)), (None if grad_w is None else grad_w.to(dtype)), None
