"""Fused Triton group convolution: forward, grad input, grad weight (one GEMM launch each).

s: [B, n, C_in, H, W], w: [C_out, n, C_in, kh, kw] -> y: [B, n, C_out, H', W'], with
p = i·sh - pt + a·dh, q = j·sw - pl + c·dw.

view frame       y[b,g] = Σ_h conv2d(s[b, g·h], w[:, h])
canonical frame  y[b,g] = Σ_h conv2d(s[b, h], act(w[:, g⁻¹·h], g))
Substituting s = g·h (view) both are y[b,g] = Σ_s conv2d(s[b, s], W[g, s]) with W[g, s] = w[:, g⁻¹·s]
(view) or act(w[:, g⁻¹·s], g) (canonical).

forward      ``_forward``: W built by a small pre-pass on the filters (``_forward.group_weight``),
             one implicit GEMM with rows = output pixels, columns = (g, co) (N = n·C_out),
             K = (s, tap, ci): the stack is read once for all n copies.
grad input   gs[b,h'] = Σ_g conv_transpose(dy[b, g], W_g) with weight slot g⁻¹·h' in both frames
             (canonical: acted by g). Stride 1: the forward GEMM on dy with the flipped filters
             W[g, h'] (``_forward.group_weight_adjoint``), columns (h', ci). Strided: rows = input
             pixels, columns = C_in, K = (g, tap, co), in gather form (no atomics); grid axis 1 =
             input slot h'.
grad weight  gw[co,k,ci,tap'] = Σ_g Σ_t' T_g^T[tap',t'] Σ_{b,i,j} dy[b,g,co,i,j] · s[b, g·k, ci, p(tap), q(tap)]
             (both frames read input slot g·k; the view frame has tap = tap', the canonical frame
             the adjoint table of act(·, g)). Rows = C_out, columns = (k, tap', ci), reduction over
             pixels, optionally split over grid axis 1 into float32 partials summed on the host.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common as C
from . import _forward as F
from ._common import adjoint_tap, gather_taps, pixel_bij, tile_2d, transposed_tap


@triton.jit
def _group_conv_grad_input_kernel(dy_ptr, w_ptr, gs_ptr, bx_slot, ktab, kwt,
                        n, C_in, H, W, C_out, Ho, Wo, KW, KK,
                        sdb, sdg, sdc, sdh, sdw, sgb, sgg, sgc, sgh, sgw,
                        sh, sw, pt, pl, dh, dw, M, K,
                        W_MAP: tl.constexpr, TK: tl.constexpr, WEIGHTED: tl.constexpr, PREC: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    hp = tl.program_id(1)                                # input slot h'
    rm, rn, m_ok, n_ok = tile_2d(tl.program_id(0), M, C_in, BLOCK_M, BLOCK_N)
    bb, vr, vc = pixel_bij(rm, H, W)
    vi = vr + pt
    vj = vc + pl
    dy_row = (dy_ptr + bb.to(tl.int64) * sdb)[:, None]
    KC = KK * C_out
    KCin = KK * C_in
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):                     # K = (g, tap, co)
        rk = k0 + tl.arange(0, BLOCK_K)
        k_ok = rk < K
        g = rk // KC
        tap = (rk % KC) // C_out
        co = rk % C_out
        w_slot = tl.load(bx_slot + hp * n + g, mask=k_ok, other=0)
        ii, jj, t_ok = transposed_tap(vi, vj, tap, KW, dh, dw, sh, sw, Ho, Wo)
        ok = m_ok[:, None] & k_ok[None, :] & t_ok
        a = tl.load(dy_row + ((g * sdg + co * sdc)[None, :] + ii * sdh + jj * sdw), mask=ok, other=0.0)
        w_ok = k_ok[:, None] & n_ok[None, :]
        tap2 = tl.broadcast_to(tap[:, None], (BLOCK_K, BLOCK_N))
        g2 = tl.broadcast_to(g[:, None], (BLOCK_K, BLOCK_N))
        b = gather_taps(w_ptr, (co * (n * KCin) + w_slot * KCin)[:, None] + (rn * KK)[None, :], tap2, w_ok,
                        ktab, kwt, g2, KK, W_MAP, TK, WEIGHTED)
        acc = tl.dot(a, b, acc, input_precision=PREC)
    gs_row = gs_ptr + bb.to(tl.int64) * sgb + (hp * sgg + vr * sgh + vc * sgw)
    tl.store(gs_row[:, None] + (rn * sgc)[None, :], acc.to(gs_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _group_conv_grad_weight_kernel(dy_ptr, s_ptr, gw_ptr, bw_slot, ttab, twt,
                        n, C_in, H, W, C_out, Ho, Wo, KW, KK,
                        sdb, sdg, sdc, sdh, sdw, ssb, ssg, ssc, ssh, ssw,
                        sh, sw, pt, pl, dh, dw, M, N, CHUNK,
                        W_MAP: tl.constexpr, TT: tl.constexpr, WEIGHTED: tl.constexpr, PREC: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    split = tl.program_id(1)
    rm, rn, m_ok, n_ok = tile_2d(tl.program_id(0), C_out, N, BLOCK_M, BLOCK_N)   # C_out x (k, tap', ci)
    KC = KK * C_in
    kslot = rn // KC
    tapp = (rn % KC) // C_in
    ci = rn % C_in
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for g in range(0, n):
        src_slot = tl.load(bw_slot + g * n + kslot, mask=n_ok, other=0)
        cofs = (src_slot * ssg + ci * ssc)[None, :]
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
                b = tl.load((s_ptr + b64 * ssb)[:, None] + (cofs + p * ssh + q * ssw), mask=ok, other=0.0)
                part = tl.dot(a, b, part, input_precision=PREC)
            if W_MAP and WEIGHTED:
                # a zero-weight tap (outside the image) read the placeholder tap: drop it, do not multiply 0·inf
                acc += tl.where(cw[None, :] != 0, part * cw[None, :], 0.0)
            else:
                acc += part
    gw_tile = gw_ptr + split.to(tl.int64) * C_out * N + ((rm * N)[:, None] + (kslot * KC + ci * KK + tapp)[None, :])
    tl.store(gw_tile, acc.to(gw_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


# ---------------------------------------------------------------------------
# Host wrappers
# ---------------------------------------------------------------------------
def _slot_tables(group, device):
    """Slot maps of the backward kernels: bx[h'][g] = g⁻¹·h' (weight slot of grad input slot h'),
    bw[g][k] = g·k (input slot of grad weight slot k); the same in both frames."""
    n, cay, inv = group.order, group.cayley, group.inverse
    bx = [[cay[inv[g]][hp] for g in range(n)] for hp in range(n)]
    bw = [[cay[g][k] for k in range(n)] for g in range(n)]
    return {"bx": C.int_table(bx, device), "bw": C.int_table(bw, device)}


def _kernel_map(plan, kh, kw, device, transposed):
    if plan.frame == "canonical":
        return C.gather_table(plan.group, kh, kw, list(range(plan.order)), device, transposed=transposed), True
    return (C.dummy(device), C.dummy(device, torch.float32)), False


def _out_stack(s, shape):
    from ..._layout import empty_stack, is_channels_last
    return empty_stack(shape, is_channels_last(s), dtype=s.dtype, device=s.device)


def group_conv_forward(s, weight, bias, plan):
    """One GEMM launch (``_forward``): the Cayley shift (and, canonical, the act on the filters)
    folded into the filters by a small pre-pass, so all n copies are N = n·C_out columns over
    K = (slot, tap, ci) and the stack is read once."""
    B, n, C_in, H, W = s.shape
    C_out, _, _, kh, kw = weight.shape
    Ho, Wo = plan.out_size(H, W, kh, kw)
    y = _out_stack(s, (B, n, C_out, Ho, Wo))
    if B * Ho * Wo == 0 or C_out == 0:
        return y.zero_()
    w_k = F.group_weight(weight, plan)
    return F.conv_forward(s, w_k, bias, y, [(s.stride(3), s.stride(4), 0)], 1, plan.stride, plan.dilation,
                          (plan.padding[0], plan.padding[2]), C_out, kh, kw)


def group_conv_backward(grad_out, s, weight, plan, output_mask):
    B, n, C_in, H, W = s.shape
    C_out, _, _, kh, kw = weight.shape
    Ho, Wo = grad_out.shape[-2:]
    weight = weight.contiguous()
    (sh, sw), (dh, dw) = plan.stride, plan.dilation
    pt, _, pl, _ = plan.padding
    prec = C.dot_precision(s.dtype)
    weighted = not plan.group.exact
    slots = _slot_tables(plan.group, s.device)
    gs = gw = None
    if output_mask[0] and (sh, sw) == (1, 1):
        # stride 1: a convolution of grad_out with the flipped, slot-transposed filters (the forward
        # GEMM: grad_out read once for all n input slots, no table or division in its loop)
        gs = _out_stack(s, s.shape)
        if C_out == 0:
            gs.zero_()
        elif B * H * W:
            F.conv_forward(grad_out, F.group_weight_adjoint(weight, plan), None, gs,
                           [(grad_out.stride(3), grad_out.stride(4), 0)], 1, (1, 1), (dh, dw),
                           ((kh - 1) * dh - pt, (kw - 1) * dw - pl), C_in, kh, kw)
    elif output_mask[0]:
        gs = _out_stack(s, s.shape)
        M, K = B * H * W, n * kh * kw * C_out
        (ktab, kwt), w_map = _kernel_map(plan, kh, kw, s.device, False)
        kernel, meta = C.launcher(_group_conv_grad_input_kernel, ("M", "K", "C_in", "W_MAP", "WEIGHTED"))
        grid = lambda META: (triton.cdiv(M, META["BLOCK_M"]) * triton.cdiv(C_in, META["BLOCK_N"]), n)
        kernel[grid](grad_out, weight, gs, slots["bx"], ktab, kwt,
                     n, C_in, H, W, C_out, Ho, Wo, kw, kh * kw,
                     *grad_out.stride(), *gs.stride(), sh, sw, pt, pl, dh, dw, M, K,
                     W_MAP=w_map, TK=ktab.shape[-1] if w_map else 1, WEIGHTED=weighted, PREC=prec, **meta)
    if output_mask[1] and C_out == 0:
        gw = torch.zeros_like(weight)
    elif output_mask[1]:
        M, N = B * Ho * Wo, n * kh * kw * C_in
        (ttab, twt), w_map = _kernel_map(plan, kh, kw, s.device, True)
        kernel, meta = C.launcher(_group_conv_grad_weight_kernel, ("M", "N", "C_out", "n", "W_MAP", "WEIGHTED"))
        splits, chunk = C.split_reduction(C_out, N, M, s.device)
        part = C.split_partials(splits, weight.shape, weight.dtype, s.device)
        grid = lambda META: (triton.cdiv(C_out, META["BLOCK_M"]) * triton.cdiv(N, META["BLOCK_N"]), splits)
        kernel[grid](grad_out, s, part, slots["bw"], ttab, twt,
                     n, C_in, H, W, C_out, Ho, Wo, kw, kh * kw,
                     *grad_out.stride(), *s.stride(), sh, sw, pt, pl, dh, dw, M, N, chunk,
                     W_MAP=w_map, TT=ttab.shape[-1] if w_map else 1, WEIGHTED=weighted, PREC=prec, **meta)
        gw = C.sum_partials(part, weight.dtype)
    return gs, gw, None
