"""Fused Triton lifting convolution: forward, grad input, grad weight (one launch each).

x: [B, C_in, H, W], w: [C_out, C_in, kh, kw] -> y: [B, n, C_out, H', W'], with
p = i·sh - pt + a·dh, q = j·sw - pl + c·dw and K = (tap (a, c), ci) flattened (ci fastest).

view frame       y[b,g,co,i,j] = Σ_{ci,a,c} w[co,ci,a,c] · X_g[b,ci,p,q],   X_g = act(x, g⁻¹)
                 X_g[p,q] = Σ_t T[g⁻¹][(p,q),t] · x[index[g⁻¹][(p,q),t]] (zero outside [0,H)x[0,W)):
                 the rotated view is read through the group's gather table, never materialised.
canonical frame  y[b,g] = conv2d(x, act(w, g)), act(w, g)[tap] = Σ_t T[g][tap,t] · w[index[g][tap,t]].

forward      ``_forward``: one implicit GEMM launch, ``tl.dot`` on tiles of the input dtype with float32
             accumulation. View frame: copy g (grid axis 1) reads X_g through affine strides
             (exact rotations / flips: X_g[p, q] = x[off_g + p·sph_g + q·spw_g], no table) or,
             for interpolated / other groups, from views precomputed by a gather pre-pass.
             Canonical frame: the n acted filters act(w, g) (a small pre-pass) are N = n·C_out
             columns of one GEMM, so x is read once for all copies.

grad input   gx[b,ci,P] = Σ_g (adjoint of X_g)(conv_transpose(dy[:, g], w))[P]: rows = input
             pixels, columns = C_in, reduction over (g, adjoint taps t', kernel tap, C_out), in
             gather form (the adjoint table of act(·, g⁻¹), for exact groups the inverse
             permutation; strided convs keep only taps with (p + pt - a·dh) divisible by sh).
             Canonical: gx = Σ_g conv_transpose(dy[:, g], act(w, g)).
grad weight  gw[co,ci,a,c] = Σ_{g,b,i,j} dy[b,g,co,i,j] · X_g[b,ci,p,q] (view); canonical:
             gw[co,ci,tap'] = Σ_g Σ_t' T_g^T[tap',t'] · Σ_{b,i,j} dy[b,g,co,i,j] x[b,ci,p(tap),q(tap)],
             tap = index_g^T[tap', t']. Rows = C_out, columns = (tap', ci), reduction over pixels,
             optionally split over a second grid axis into float32 partials summed on the host.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common as C
from . import _forward as F
from ._common import adjoint_tap, gather_pixels, gather_taps, pixel_bij, tile_2d, transposed_tap


@triton.jit
def _lift_conv_grad_input_kernel(dy_ptr, w_ptr, gx_ptr, ttab, twt, ktab, kwt,
                       C_in, H, W, C_out, Ho, Wo, KW, KK, n,
                       sdb, sdg, sdc, sdh, sdw, sgb, sgc, sgh, sgw,
                       sh, sw, pt, pl, dh, dw, M, K,
                       IN_MAP: tl.constexpr, TT: tl.constexpr, W_MAP: tl.constexpr, TK: tl.constexpr,
                       WEIGHTED: tl.constexpr, PREC: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rm, rn, m_ok, n_ok = tile_2d(tl.program_id(0), M, C_in, BLOCK_M, BLOCK_N)
    bb, pr, pc = pixel_bij(rm, H, W)
    dy_row = (dy_ptr + bb.to(tl.int64) * sdb)[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for g in range(0, n):
        for t in range(0, TT):
            if IN_MAP:
                row = (g * H * W + pr * W + pc) * TT + t
                vp = tl.load(ttab + row, mask=m_ok, other=0)
                rw = tl.load(twt + row, mask=m_ok, other=0.0)
                vi = vp // W + pt
                vj = vp % W + pl
            else:
                rw = tl.zeros((BLOCK_M,), dtype=tl.float32) + 1.0
                vi = pr + pt
                vj = pc + pl
            part = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                rk = k0 + tl.arange(0, BLOCK_K)
                k_ok = rk < K
                tap = rk // C_out
                co = rk % C_out
                ii, jj, t_ok = transposed_tap(vi, vj, tap, KW, dh, dw, sh, sw, Ho, Wo)
                ok = m_ok[:, None] & k_ok[None, :] & t_ok
                a = tl.load(dy_row + ((g * sdg + co * sdc)[None, :] + ii * sdh + jj * sdw), mask=ok, other=0.0)
                w_ok = k_ok[:, None] & n_ok[None, :]
                tap2 = tl.broadcast_to(tap[:, None], (BLOCK_K, BLOCK_N))
                b = gather_taps(w_ptr, (co * (C_in * KK))[:, None] + (rn * KK)[None, :], tap2, w_ok, ktab, kwt, g, KK,
                                W_MAP, TK, WEIGHTED)
                part = tl.dot(a, b, part, input_precision=PREC)
            if IN_MAP and WEIGHTED:
                acc += part * rw[:, None]
            else:
                acc += part
    gx_row = gx_ptr + bb.to(tl.int64) * sgb + (pr * sgh + pc * sgw)
    tl.store(gx_row[:, None] + (rn * sgc)[None, :], acc.to(gx_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _lift_conv_grad_weight_kernel(dy_ptr, x_ptr, gw_ptr, itab, iwt, ttab, twt,
                       C_in, H, W, C_out, Ho, Wo, KW, KK, n,
                       sdb, sdg, sdc, sdh, sdw, sxb, sxc, sxh, sxw,
                       sh, sw, pt, pl, dh, dw, M, N, CHUNK,
                       IN_MAP: tl.constexpr, TI: tl.constexpr, W_MAP: tl.constexpr, TT: tl.constexpr,
                       WEIGHTED: tl.constexpr, PREC: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    split = tl.program_id(1)
    rm, rn, m_ok, n_ok = tile_2d(tl.program_id(0), C_out, N, BLOCK_M, BLOCK_N)   # C_out x (tap', ci)
    tapp = rn // C_in
    ci = rn % C_in
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for g in range(0, n):
        for t in range(0, TT):
            tap, cw = adjoint_tap(ttab, twt, g, tapp, t, KK, n_ok, W_MAP, TT)
            da = (tap // KW) * dh - pt
            dc = (tap % KW) * dw - pl
            part = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for k0 in range(0, CHUNK, BLOCK_K):
                rk = split * CHUNK + k0 + tl.arange(0, BLOCK_K)
                k_ok = rk < M
                bb, ii, jj = pixel_bij(rk, Ho, Wo)
                b64 = bb.to(tl.int64)
                dy_col = dy_ptr + b64 * sdb + (g * sdg + ii * sdh + jj * sdw)
                a = tl.load(dy_col[None, :] + (rm * sdc)[:, None], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
                p = (ii * sh)[:, None] + da[None, :]
                q = (jj * sw)[:, None] + dc[None, :]
                ok = k_ok[:, None] & n_ok[None, :] & (p >= 0) & (p < H) & (q >= 0) & (q < W)
                b = gather_pixels((x_ptr + b64 * sxb)[:, None], (ci * sxc)[None, :], p, q, ok, itab, iwt, g, H, W,
                                  sxh, sxw, IN_MAP, TI, WEIGHTED)
                part = tl.dot(a, b, part, input_precision=PREC)
            if W_MAP and WEIGHTED:
                # a zero-weight tap (outside the image) read the placeholder tap: drop it, do not multiply 0·inf
                acc += tl.where(cw[None, :] != 0, part * cw[None, :], 0.0)
            else:
                acc += part
    gw_tile = gw_ptr + split.to(tl.int64) * C_out * N + ((rm * N)[:, None] + (ci * KK + tapp)[None, :])
    tl.store(gw_tile, acc.to(gw_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


# ---------------------------------------------------------------------------
# Host wrappers
# ---------------------------------------------------------------------------
def _maps(plan, H, W, kh, kw, device, kind):
    """(IN_MAP tables, W_MAP tables, flags) for ``kind`` in fwd / bwd_x / bwd_w."""
    group = plan.group
    n = group.order
    none = (C.dummy(device), C.dummy(device, torch.float32))
    if plan.frame == "view":
        elements = list(group.inverse)                      # copy g reads act(x, g⁻¹)
        tab = C.gather_table(group, H, W, elements, device, transposed=(kind == "bwd_x"))
        return tab, none, True, False
    tab = C.gather_table(group, kh, kw, list(range(n)), device, transposed=(kind == "bwd_w"))
    return none, tab, False, True


def _alloc_like_input(x, shape):
    fmt = torch.channels_last if (x.dim() == 4 and not x.is_contiguous()
                                  and x.is_contiguous(memory_format=torch.channels_last)) else torch.contiguous_format
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)


def _out_stack(x, B, n, C_out, Ho, Wo):
    from ..._layout import empty_stack, is_channels_last
    return empty_stack((B, n, C_out, Ho, Wo), is_channels_last(x), dtype=x.dtype, device=x.device)


def lift_conv_forward(x, weight, bias, plan):
    """One GEMM launch (``_forward``): view frame = the n affine views of x (exact rotations /
    flips) on grid axis 1, or views precomputed by a gather pre-pass (interpolated groups, other
    permutations); canonical frame = the acted filters as N = n·C_out columns, x read once."""
    B, C_in, H, W = x.shape
    C_out, _, kh, kw = weight.shape
    n = plan.order
    Ho, Wo = plan.out_size(H, W, kh, kw)
    y = _out_stack(x, B, n, C_out, Ho, Wo)
    if B * Ho * Wo == 0 or C_out == 0:
        return y.zero_()
    group = plan.group
    if plan.frame == "canonical":
        x5, copies, aff = x.unsqueeze(1), 1, [(x.stride(2), x.stride(3), 0)]
        w_k = F.lift_weight(weight, plan, folded=n > 1)
    else:
        maps = F.affine_maps(group, H, W, group.inverse)                  # copy g reads act(x, g⁻¹)
        if maps is not None:
            x5, aff = x.unsqueeze(1), F.view_strides(maps, x.stride(2), x.stride(3))
        else:
            views = group.act_all(x, elements=list(group.inverse), dim=1)   # [B, n, C_in, H, W]
            x5 = views[:, :1]
            aff = [(views.stride(3), views.stride(4), g * views.stride(1)) for g in range(n)]
        copies = n
        w_k = F.lift_weight(weight, plan, folded=False)
    return F.conv_forward(x5, w_k, bias, y, aff, copies, plan.stride, plan.dilation,
                          (plan.padding[0], plan.padding[2]), C_out, kh, kw)


def lift_conv_backward(grad_out, x, weight, plan, output_mask):
    B, C_in, H, W = x.shape
    C_out, _, kh, kw = weight.shape
    n = plan.order
    Ho, Wo = grad_out.shape[-2:]
    weight = weight.contiguous()
    (sh, sw), (dh, dw) = plan.stride, plan.dilation
    pt, _, pl, _ = plan.padding
    prec = C.dot_precision(x.dtype)
    weighted = not plan.group.exact
    gx = gw = None
    if output_mask[0]:
        gx = _alloc_like_input(x, x.shape)
        M, K = B * H * W, kh * kw * C_out
        (ttab, twt), (ktab, kwt), in_map, w_map = _maps(plan, H, W, kh, kw, x.device, "bwd_x")
        kernel, meta = C.launcher(_lift_conv_grad_input_kernel, ("M", "K", "C_in", "n", "IN_MAP", "W_MAP", "WEIGHTED"))
        grid = lambda META: (triton.cdiv(M, META["BLOCK_M"]) * triton.cdiv(C_in, META["BLOCK_N"]),)
        kernel[grid](grad_out, weight, gx, ttab, twt, ktab, kwt,
                     C_in, H, W, C_out, Ho, Wo, kw, kh * kw, n,
                     *grad_out.stride(), *gx.stride(), sh, sw, pt, pl, dh, dw, M, K,
                     IN_MAP=in_map, TT=ttab.shape[-1] if in_map else 1, W_MAP=w_map,
                     TK=ktab.shape[-1] if w_map else 1, WEIGHTED=weighted, PREC=prec, **meta)
    if output_mask[1] and C_out == 0:
        gw = torch.zeros_like(weight)
    elif output_mask[1]:
        M, N = B * Ho * Wo, kh * kw * C_in
        (itab, iwt), (ttab, twt), in_map, w_map = _maps(plan, H, W, kh, kw, x.device, "bwd_w")
        kernel, meta = C.launcher(_lift_conv_grad_weight_kernel, ("M", "N", "C_out", "n", "IN_MAP", "W_MAP", "WEIGHTED"))
        splits, chunk = C.split_reduction(C_out, N, M, x.device)
        part = C.split_partials(splits, weight.shape, weight.dtype, x.device)
        grid = lambda META: (triton.cdiv(C_out, META["BLOCK_M"]) * triton.cdiv(N, META["BLOCK_N"]), splits)
        kernel[grid](grad_out, x, part, itab, iwt, ttab, twt,
                     C_in, H, W, C_out, Ho, Wo, kw, kh * kw, n,
                     *grad_out.stride(), *x.stride(), sh, sw, pt, pl, dh, dw, M, N, chunk,
                     IN_MAP=in_map, TI=itab.shape[-1] if in_map else 1, W_MAP=w_map,
                     TT=ttab.shape[-1] if w_map else 1, WEIGHTED=weighted, PREC=prec, **meta)
        gw = C.sum_partials(part, weight.dtype)
    return gx, gw, None
