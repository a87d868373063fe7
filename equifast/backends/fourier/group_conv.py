"""View-frame group convolution in the group-Fourier basis (see ``basis``): one plain conv2d per
*unit* of the basis, a unit being one irreducible block's filter matrix Ŵ (d x d filters of
C_out x C_in) with the copies that share it stacked along the batch.

The stack is handled as rows: ``U[r] = Σ_g t_in[r, g] s[:, g]``, laid out row-major as [R, B, C, H, W],
so that each row (or a unit's run of rows) is a dense image for the convolution without a copy:

    U = t_in ·_g s                       one batched product for every 1-d row      [R, B, C_in, H, W]
    Ŵ_k = t_w_k ·_h w                    all units in one small product             [d*C_out, d*C_in, kh, kw]
    Y_k = conv2d(U_k, Ŵ_k)               one call per unit, the only heavy step     [m*B, d*C_out, H', W']
    out = t_out ·_r Y                    one batched product                        [B, n, C_out, H', W']

A unit of dimension d > 1 (D_n's 2-d irreducibles, custom groups) reads its copies as [m, B, d, C, H, W]
(one product per copy). The bias enters the unit of the trivial representation as its conv's bias.
backward, with the same matrices transposed (no recomputed forward, no autograd):
    gY = t_outᵀ ·_g grad_out;  gU_k, gŴ_k = convolution_backward(gY_k, U_k, Ŵ_k)
    grad_s = t_inᵀ ·_r gU;     grad_w = t_wᵀ ·_k gŴ
Single convolutions per unit rather than one grouped convolution: oneDNN's grouped convolutions (and
their backward) were measured 1.3-2x slower per FLOP on CPU than the same work as separate calls.

Layouts: the rows are computed from a contiguous stack; a channels_last stack is made contiguous first
and the op returns outputs and gradients in the input's layout.

Precision: float32/float64 compute in their own dtype. bfloat16 (and float16 off CPU) mixes in
float32 and convolves in its own dtype (U, Ŵ and Y are rounded to it); float16 on CPU runs in float32
and rounds once (oneDNN's CPU float16 convolution is unreliable, see ``equifast.backends._conv2d``).
Autocast is switched off inside: the dtypes are the ones chosen here.

Eval-mode weight cache: ``prepare_weight`` returns the transformed filters of every unit (no
autograd) and ``forward_prepared`` runs the forward with them.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from . import basis as _basis

LOW_PRECISION = (torch.float16, torch.bfloat16)


def _dtypes(dtype: torch.dtype, device: torch.device) -> Tuple[torch.dtype, torch.dtype]:
    """(dtype of the group-axis mixes, dtype of the convolutions): low precision mixes in float32 and
    convolves in its own dtype, except float16 on CPU (see ``equifast.backends._conv2d``)."""
    if dtype == torch.float64:
        return torch.float64, torch.float64
    if dtype == torch.float16 and torch.device(device).type == "cpu":
        return torch.float32, torch.float32
    return torch.float32, dtype


# ---------------------------------------------------------------------------------------------
# Units: the convolutions of a basis
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Unit:
    """One convolution: m copies of one irreducible (dimension d) sharing the filter matrix Ŵ."""
    d: int
    m: int
    t_in: torch.Tensor              # [m*d, n], copy-major
    t_w: torch.Tensor               # [d*d, n]
    t_out: torch.Tensor             # [n, m*d]
    bias: Optional[torch.Tensor]    # [d]: the conv's bias is bias ⊗ b (only in the trivial unit)


@dataclass(frozen=True)
class Units:
    flat: Tuple[Unit, ...]          # d = 1: their rows together form t_in_flat / t_out_flat
    blocks: Tuple[Unit, ...]        # d > 1
    t_in_flat: torch.Tensor         # [R, n]
    t_out_flat: torch.Tensor        # [n, R]
    t_w: torch.Tensor               # [Σ d², n]: every unit's t_w, flat units first

    @property
    def all(self) -> Tuple[Unit, ...]:
        return self.flat + self.blocks


def units_of(b: _basis.Basis) -> List[Unit]:
    """The basis' blocks as units (float64, CPU): the copies of a block with identical filter matrices
    t_w (the copies of one irreducible) share one convolution, stacked along the batch; a bias in
    such a unit would differ per copy, so copies carrying the bias stay alone."""
    out = []
    for blk in b.blocks:
        S, d = blk.groups, blk.d
        copies: List[List[int]] = []
        for s in range(S):
            alone = bool(blk.bias[s * d:(s + 1) * d].any())
            for c in copies:
                if not alone and not bool(blk.bias[c[0] * d:(c[0] + 1) * d].any()) and torch.equal(blk.t_w[c[0]], blk.t_w[s]):
                    c.append(s)
                    break
            else:
                copies.append([s])
        for c in copies:
            rows = torch.cat([torch.arange(s * d, (s + 1) * d) for s in c])
            bias = blk.bias[rows[:d]]
            out.append(Unit(d, len(c), blk.t_in[rows], blk.t_w[c[0]].reshape(d * d, -1), blk.t_out[:, rows],
                            bias if bool(bias.any()) else None))
    return out


_UNITS: Dict[tuple, Units] = {}
_LOCK = threading.Lock()


def _units(group, device, dtype) -> Units:
    """The units of ``group`` on ``device`` in ``dtype`` (cached)."""
    key = (group.name, id(group), str(device), dtype)
    hit = _UNITS.get(key)
    if hit is None:
        def move(u):
            return Unit(u.d, u.m, u.t_in.to(device, dtype), u.t_w.to(device, dtype), u.t_out.to(device, dtype),
                        None if u.bias is None else u.bias.to(device, dtype))
        units = [move(u) for u in units_of(_basis.get(group))]
        flat = tuple(u for u in units if u.d == 1)
        blocks = tuple(u for u in units if u.d > 1)
        n = group.order
        hit = Units(flat, blocks,
                    torch.cat([u.t_in for u in flat]) if flat else torch.zeros(0, n, dtype=dtype, device=device),
                    torch.cat([u.t_out for u in flat], 1) if flat else torch.zeros(n, 0, dtype=dtype, device=device),
                    torch.cat([u.t_w for u in flat + blocks]))
        with _LOCK:
            _UNITS[key] = hit
    return hit


# ---------------------------------------------------------------------------------------------
# Group-axis mixes (contiguous stacks viewed as [B, n, X])
# ---------------------------------------------------------------------------------------------
def mix_rows(T: torch.Tensor, v: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[r, b] = Σ_g T[r, g] v[b, g] for v [B, n, X], into ``out`` [R, B, X] (row-major: each row is a
    dense batch of images). One batched product writing straight into the rows."""
    torch.bmm(T.expand(v.shape[0], -1, -1), v, out=out.view(T.shape[0], v.shape[0], -1).transpose(0, 1))
    return out


def unmix_rows(T: torch.Tensor, Y: torch.Tensor, accumulate: Optional[torch.Tensor] = None) -> torch.Tensor:
    """out[b, g] = Σ_r T[g, r] Y[r, b] for rows Y [R, B, X]: [B, n, X] (added into ``accumulate``)."""
    Yt = Y.transpose(0, 1)
    Tb = T.expand(Yt.shape[0], -1, -1)
    if accumulate is None:
        return torch.bmm(Tb, Yt)
    return accumulate.baddbmm_(Tb, Yt)


def transformed_weights(weight: torch.Tensor, units: Units, conv_dtype) -> List[torch.Tensor]:
    """Ŵ of every unit (flat units first) [d*C_out, d*C_in, kh, kw], Ŵ[(a, o), (b, c)] =
    Σ_h t_w[(a, b), h] weight[o, h, c]: one small product over the weight."""
    C_out, n, C_in, kh, kw = weight.shape
    w = weight.to(units.t_w.dtype).transpose(0, 1).reshape(n, -1)
    mixed = torch.matmul(units.t_w, w)                                  # [(unit a b), (o c k l)]
    hats, row = [], 0
    for u in units.all:
        d = u.d
        h = mixed[row:row + d * d]
        row += d * d
        if d > 1:
            h = h.view(d, d, C_out, C_in, kh, kw).permute(0, 2, 1, 3, 4, 5)
        hats.append(h.reshape(d * C_out, d * C_in, kh, kw).to(conv_dtype))
    return hats


def weight_grad(units: Units, g_hats: List[torch.Tensor], shape) -> torch.Tensor:
    """The adjoint of ``transformed_weights``: [C_out, n, C_in, kh, kw] from every unit's gŴ."""
    C_out, n, C_in, kh, kw = shape
    parts = []
    for u, g in zip(units.all, g_hats):
        d = u.d
        g = g.to(units.t_w.dtype)
        if d > 1:
            g = g.reshape(d, C_out, d, C_in, kh * kw).permute(0, 2, 1, 3, 4)
        parts.append(g.reshape(d * d, -1))
    g = torch.cat(parts) if len(parts) > 1 else parts[0]
    return torch.matmul(units.t_w.t(), g).view(n, C_out, C_in, kh, kw).transpose(0, 1)


# ---------------------------------------------------------------------------------------------
# Convolution with explicit padding
# ---------------------------------------------------------------------------------------------
def _conv(x, weight, bias, plan):
    pt, pb, pl, pr = plan.padding
    if pt == pb and pl == pr:
        return F.conv2d(x, weight, bias, plan.stride, (pt, pl), plan.dilation)
    return F.conv2d(F.pad(x, (pl, pr, pt, pb)), weight, bias, plan.stride, 0, plan.dilation)


def _conv_backward(grad_y, x, weight, plan, need_x, need_w):
    pt, pb, pl, pr = plan.padding
    symmetric = pt == pb and pl == pr
    if symmetric:
        inp = x
    elif need_w:
        inp = F.pad(x, (pl, pr, pt, pb))
    else:           # the input gradient reads only the input's shape
        inp = x.new_empty(x.shape[0], x.shape[1], x.shape[2] + pt + pb, x.shape[3] + pl + pr)
    gx, gw, _ = torch.ops.aten.convolution_backward(
        grad_y, inp, weight, None, list(plan.stride), [pt, pl] if symmetric else [0, 0], list(plan.dilation),
        False, [0, 0], 1, [bool(need_x), bool(need_w), False])
    if gx is not None and not symmetric:
        gx = gx[..., pt:pt + x.shape[-2], pl:pl + x.shape[-1]]
    return gx, gw


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------
def group_conv_forward(s, weight, bias, plan):
    with torch.autocast(s.device.type, enabled=False):   # dtypes are chosen here (``_dtypes``)
        return forward_prepared(s, prepare_weight(weight, plan.group, s.device, s.dtype), bias, plan)


def group_conv_backward(grad_out, s, weight, plan, output_mask):
    """(grad_s, grad_weight, None): the bias gradient is left to the op (a sum of grad_out)."""
    with torch.autocast(s.device.type, enabled=False):
        return _backward(grad_out, s, weight, plan, output_mask)


@dataclass(frozen=True)
class Prepared:
    """The transformed filters of every unit of ``group`` for inputs of ``dtype`` (see ``prepare_weight``)."""
    group: object
    dtype: torch.dtype
    units: Units
    hats: Tuple[torch.Tensor, ...]
    weight_shape: Tuple[int, ...]


def prepare_weight(weight: torch.Tensor, group, device, dtype) -> Prepared:
    """The transformed filters Ŵ of every unit, for a forward on inputs of ``dtype`` on ``device``
    (no autograd: for an eval-mode cache, which must be rebuilt when the weight changes)."""
    if weight.dim() != 5 or weight.shape[1] != group.order:
        raise ValueError(f"prepare_weight: weight must be [C_out, {group.order}, C_in, kh, kw] for group "
                         f"{group.name}, got {tuple(weight.shape)}")
    mix_dtype, conv_dtype = _dtypes(dtype, device)
    units = _units(group, device, mix_dtype)
    with torch.no_grad():
        hats = transformed_weights(weight.detach().to(device), units, conv_dtype)
    return Prepared(group, dtype, units, tuple(hats), tuple(weight.shape))


def forward_prepared(s: torch.Tensor, prepared: Prepared, bias: Optional[torch.Tensor], plan) -> torch.Tensor:
    """group_conv's forward (view frame) of ``s`` with the filters of ``prepare_weight``."""
    if s.dtype != prepared.dtype or s.dim() != 5 or s.shape[1] != prepared.group.order \
            or s.shape[2] != prepared.weight_shape[2]:
        raise ValueError(f"forward_prepared: s must be a [B, {prepared.group.order}, {prepared.weight_shape[2]}, "
                         f"H, W] stack of {prepared.dtype}, got {tuple(s.shape)} of {s.dtype}")
    with torch.autocast(s.device.type, enabled=False):
        return _forward(s, prepared, bias, plan)


def _forward(s, prepared, bias, plan):
    dtype = s.dtype
    units, hats = prepared.units, prepared.hats
    mix_dtype, conv_dtype = units.t_w.dtype, hats[0].dtype
    C_out, n, C_in, kh, kw = prepared.weight_shape
    B, _, _, H, W = s.shape
    Ho, Wo = plan.out_size(H, W, kh, kw)
    if B == 0:
        return s.new_zeros(0, n, C_out, Ho, Wo)
    v = s.to(mix_dtype).contiguous().view(B, n, C_in * H * W)
    b_mix = None if bias is None else bias.to(mix_dtype)
    R = units.t_in_flat.shape[0]
    out = None
    if R:
        U = mix_rows(units.t_in_flat, v, v.new_empty(R, B, C_in, H, W)).to(conv_dtype)
        Ys, row = [], 0
        for u, w_hat in zip(units.flat, hats):
            b = None if u.bias is None or b_mix is None else (u.bias[:, None] * b_mix).reshape(-1).to(conv_dtype)
            Ys.append(_conv(U[row:row + u.m].view(u.m * B, C_in, H, W), w_hat, b, plan))
            row += u.m
        del U                                   # peak memory: the rows go before the outputs are gathered
        Y = torch.cat(Ys) if len(Ys) > 1 else Ys[0]
        del Ys
        out = unmix_rows(units.t_out_flat, Y.view(R, B, -1).to(mix_dtype))
        del Y
    for u, w_hat in zip(units.blocks, hats[len(units.flat):]):
        d, m = u.d, u.m
        U = v.new_empty(m, B, d, C_in * H * W)
        for c in range(m):
            torch.bmm(u.t_in[c * d:(c + 1) * d].expand(B, -1, -1), v, out=U[c])
        b = None if u.bias is None or b_mix is None else (u.bias[:, None] * b_mix).reshape(-1).to(conv_dtype)
        Y = _conv(U.view(m * B, d * C_in, H, W).to(conv_dtype), w_hat, b, plan).to(mix_dtype).view(m, B, d, -1)
        del U
        for c in range(m):
            Tc = u.t_out[:, c * d:(c + 1) * d].expand(B, -1, -1)
            out = torch.bmm(Tc, Y[c]) if out is None else out.baddbmm_(Tc, Y[c])
        del Y
    return out.view(B, n, C_out, Ho, Wo).to(dtype)


def _backward(grad_out, s, weight, plan, output_mask):
    need_x, need_w = bool(output_mask[0]), bool(output_mask[1])
    if not (need_x or need_w):
        return None, None, None
    dtype = s.dtype
    mix_dtype, conv_dtype = _dtypes(s.dtype, s.device)
    units = _units(plan.group, s.device, mix_dtype)
    C_out, n, C_in, kh, kw = weight.shape
    B, _, _, H, W = s.shape
    Ho, Wo = grad_out.shape[-2:]
    if B == 0:
        return (s.new_zeros(s.shape) if need_x else None), (weight.new_zeros(weight.shape) if need_w else None), None
    hats = transformed_weights(weight, units, conv_dtype)
    v = s.to(mix_dtype).contiguous().view(B, n, C_in * H * W)
    g = grad_out.to(mix_dtype).contiguous().view(B, n, C_out * Ho * Wo)
    R = units.t_in_flat.shape[0]
    grad_s, g_hats = None, []
    if R:
        gY = mix_rows(units.t_out_flat.t(), g, g.new_empty(R, B, C_out, Ho, Wo)).to(conv_dtype)
        U = mix_rows(units.t_in_flat, v, v.new_empty(R, B, C_in, H, W)).to(conv_dtype) if need_w else None
        gUs, row = [], 0
        for u, w_hat in zip(units.flat, hats):
            rows = slice(row, row + u.m)
            x = U[rows].view(u.m * B, C_in, H, W) if need_w else \
                torch.empty(u.m * B, C_in, H, W, dtype=conv_dtype, device=s.device)   # its shape only
            gU, gW = _conv_backward(gY[rows].view(u.m * B, C_out, Ho, Wo), x, w_hat, plan, need_x, need_w)
            row += u.m
            if need_x:
                gUs.append(gU)
            if need_w:
                g_hats.append(gW)
        del gY, U
        if need_x:
            gU = torch.cat(gUs) if len(gUs) > 1 else gUs[0].contiguous()
            del gUs
            grad_s = unmix_rows(units.t_in_flat.t(), gU.view(R, B, -1).to(mix_dtype))
            del gU
    for u, w_hat in zip(units.blocks, hats[len(units.flat):]):
        d, m = u.d, u.m
        gY = g.new_empty(m, B, d, C_out * Ho * Wo)
        for c in range(m):
            torch.bmm(u.t_out[:, c * d:(c + 1) * d].t().expand(B, -1, -1), g, out=gY[c])
        if need_w:
            U = v.new_empty(m, B, d, C_in * H * W)
            for c in range(m):
                torch.bmm(u.t_in[c * d:(c + 1) * d].expand(B, -1, -1), v, out=U[c])
            x = U.view(m * B, d * C_in, H, W).to(conv_dtype)
        else:
            x = torch.empty(m * B, d * C_in, H, W, dtype=conv_dtype, device=s.device)
        gU, gW = _conv_backward(gY.view(m * B, d * C_out, Ho, Wo).to(conv_dtype), x, w_hat, plan, need_x, need_w)
        del gY, x
        if need_w:
            g_hats.append(gW)
        if need_x:
            gU = gU.to(mix_dtype).reshape(m, B, d, -1)
            for c in range(m):
                Tc = u.t_in[c * d:(c + 1) * d].t().expand(B, -1, -1)
                grad_s = torch.bmm(Tc, gU[c]) if grad_s is None else grad_s.baddbmm_(Tc, gU[c])
            del gU
    gs = None if grad_s is None else grad_s.view(s.shape).to(dtype)
    gw = weight_grad(units, g_hats, weight.shape).to(dtype) if need_w else None
    return gs, gw, None
