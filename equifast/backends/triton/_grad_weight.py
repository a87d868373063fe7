"""The weight-gradient implicit GEMM both ops share: the adjoint of ``_forward`` in its filters.

    gw_k[(gc, co), s, a, c, ci] = Σ_g Σ_{b, i, j} dy[b, g + gc, co, i, j] · X_g[b, s, ci, p, q]
    p = i·sh - pt + a·dh,  q = j·sw - pl + c·dw,  X_g[..., p, q] = x[..., off_g + p·sph_g + q·spw_g]

i.e. the gradient of the forward GEMM's K-major filters w_k [N, S, kh, kw, C_in]; the host takes it
back through the adjoint of the filter pre-pass (``_forward.lift_weight_grad`` / ``group_weight_grad``,
a permutation or gather of the tiny filters) to the op's weight.
Rows = N = (gc, co) (grad_out channels), columns = K = (s, a, c, ci), reduction over the copies g
(grid-less loop: view-frame lifts, one affine view per copy; every other case one copy) and the
output pixels of the images of this program's split (grid axis 1; deterministic float32 partials
summed on the host, no atomics).

Inner loop: no division, modulo or table. The output pixels (i, j) of a BLOCK_K step are carried
from the previous step (j += BLOCK_K % Wo with one carry into i), so addresses are a per-pixel
offset plus a per-column offset. Two column layouts (constexpr ``TAP_MODE``):
* C_in >= 16: a program's columns are one (s, tap) and a block of ci: the tap is a scalar, the
  input mask is per pixel only, channels_last inputs give contiguous ci runs;
* small C_in: the columns are a flat block of K, their (s, a, c, ci) decoded once per program.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common as C
from . import _forward as F


@triton.jit
def _conv_grad_weight_kernel(x_ptr, dy_ptr, gw_ptr, aff_ptr,
                             S, C_in, H, W, N, C_out, Ho, Wo, HoWo, KH, KW, KT,
                             sxb, sxs, sxc, syb, syg, syc, syh, syw,
                             sh, sw, pt, pl, dh, dw, copies, chunks, per_split, bands, ROWS,
                             TAP_MODE: tl.constexpr, COL_FLAT: tl.constexpr, PIX_FLAT: tl.constexpr,
                             ALIGN: tl.constexpr, PREC: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    if TAP_MODE:                                            # columns: one (s, a, c), a block of ci
        ncb = tl.cdiv(C_in, BLOCK_N)
        num_cols = S * KH * KW * ncb
        rest = pid % num_cols
        tap_s = rest // ncb                                 # scalars, once per program
        c = tap_s % KW
        a = (tap_s // KW) % KH
        s = tap_s // (KH * KW)
        ci = (rest % ncb) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = ci < C_in
        kcol = tap_s * C_in + ci
    else:                                                   # columns: a flat block of K = (s, a, c, ci)
        num_cols = tl.cdiv(KT, BLOCK_N)
        kcol = (pid % num_cols) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = kcol < KT
        ci = kcol % C_in                                    # decoded once per program
        tap = kcol // C_in
        c = tap % KW
        a = (tap // KW) % KH
        s = tap // (KH * KW)
    da = a * dh - pt                                        # input row of pixel row i: i·sh + da
    dc = c * dw - pl
    xcol = s * sxs + ci * sxc
    rn = (pid // num_cols) * BLOCK_M + tl.arange(0, BLOCK_M)  # rows: grad_out channels (gc, co)
    m_ok = rn < N
    if COL_FLAT:
        dycol = rn * syc
    else:
        dycol = (rn // C_out) * syg + (rn % C_out) * syc
    rk = tl.arange(0, BLOCK_K)                              # pixel pieces of one step, once
    ki = rk // Wo
    kj = rk % Wo
    step_i = BLOCK_K // Wo
    step_j = BLOCK_K % Wo
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    lo = split * per_split
    hi = tl.minimum(lo + per_split, chunks)
    for g in range(0, copies):
        sph, spw, off = F.affine_view(aff_ptr, g, ALIGN)    # the affine view of copy g
        cofs = off + xcol + da * sph + dc * spw             # per column (TAP_MODE: ci block + scalar)
        if ALIGN > 1:
            cofs = tl.max_contiguous(tl.multiple_of(cofs, ALIGN), BLOCK_N)
        psh = sh * sph
        psw = sw * spw
        for chunk in range(lo, hi):                         # (image, band of output rows)
            b = chunk // bands
            i_lo = (chunk % bands) * ROWS
            i_hi = tl.minimum(i_lo + ROWS, Ho)
            x_img = x_ptr + b.to(tl.int64) * sxb
            dy_img = dy_ptr + (b.to(tl.int64) * syb + g * syg)
            i = i_lo + ki                                   # int32 pixel counters carried by the loop
            j = kj
            r = i_lo * Wo
            for _ in range(0, tl.cdiv((i_hi - i_lo) * Wo, BLOCK_K)):
                k_ok = i < i_hi
                if PIX_FLAT:                                # one image, pixels adjacent: a contiguous run
                    pix = tl.max_contiguous(tl.multiple_of(r + rk, BLOCK_K), BLOCK_K)
                    dy_ok = pix < HoWo                      # constant over aligned runs: 16-byte loads
                    r += BLOCK_K
                else:
                    pix = i * syh + j * syw
                    dy_ok = k_ok
                av = tl.load(dy_img + (dycol[:, None] + pix[None, :]), mask=m_ok[:, None] & dy_ok[None, :], other=0.0)
                prow = i * psh + j * psw
                if TAP_MODE:
                    pa = i * sh + da
                    qc = j * sw + dc
                    ok = k_ok & (pa >= 0) & (pa < H) & (qc >= 0) & (qc < W)          # [K]: per pixel
                    bv = tl.load(x_img + (prow[:, None] + cofs[None, :]), mask=ok[:, None] & n_ok[None, :],
                                 other=0.0)
                else:
                    pa = (i * sh)[:, None] + da[None, :]
                    qc = (j * sw)[:, None] + dc[None, :]
                    ok = k_ok[:, None] & n_ok[None, :] & (pa >= 0) & (pa < H) & (qc >= 0) & (qc < W)
                    bv = tl.load(x_img + (prow[:, None] + cofs[None, :]), mask=ok, other=0.0)
                acc = tl.dot(av, bv, acc, input_precision=PREC)
                j += step_j                                 # next BLOCK_K pixels: one carry, no division
                wrap = j >= Wo
                j = tl.where(wrap, j - Wo, j)
                i += step_i + wrap.to(tl.int32)
    gw_tile = gw_ptr + split.to(tl.int64) * N * KT + ((rn * KT)[:, None] + kcol[None, :])
    tl.store(gw_tile, acc, mask=m_ok[:, None] & n_ok[None, :])


def conv_grad_weight(x5, dy, aff, copies, N, C_out, kh, kw, stride, dilation, top_left):
    """Gradient (float32 [N, S, kh, kw, C_in]) of ``_forward``'s K-major filters: x5 [B, S, C_in, H, W]
    and dy [B, n, C_out, Ho, Wo] (any strides), ``aff`` rows (sph, spw, off) per copy (copy g reads
    grad_out slot g); the same geometry arguments as ``_forward.conv_forward``."""
    B, S, C_in, H, W = x5.shape
    Ho, Wo = dy.shape[-2:]
    KT = S * kh * kw * C_in
    (sh, sw), (dh, dw), (pt, pl) = stride, dilation, top_left
    sxb, sxs, sxc, _, _ = x5.stride()
    syb, syg, syc, syh, syw = dy.stride()
    if B * Ho * Wo == 0 or N == 0 or KT == 0:
        return torch.zeros((N, S, kh, kw, C_in), dtype=torch.float32, device=x5.device)
    splits = C.split_k(triton.cdiv(N, 64) * triton.cdiv(KT, 64), B * Ho * Wo, x5.device)
    bands = min(Ho, triton.cdiv(splits, B))                 # few images: split them into row bands too
    rows = triton.cdiv(Ho, bands)
    bands = triton.cdiv(Ho, rows)
    chunks = B * bands
    per_split = triton.cdiv(chunks, min(splits, chunks))
    splits = triton.cdiv(chunks, per_split)
    part = torch.empty((splits, N, KT), dtype=torch.float32, device=x5.device)
    flat = [v for row in aff for v in row]
    aff_t = C.int_table([flat], x5.device)
    tap_mode = C_in >= 16
    align = F._align(x5.element_size(), sxb, sxs, *flat) if (tap_mode and sxc == 1) else 1
    # grad_out pixels of a whole image as one contiguous run (aligned: each image starts at pixel 0)
    pix_flat = syw == 1 and syh == Wo and bands == 1
    kernel, meta = C.launcher(_conv_grad_weight_kernel, ("N", "KT", "C_in", "Wo", "TAP_MODE", "ALIGN"))
    if tap_mode:
        cols = lambda META: S * kh * kw * triton.cdiv(C_in, META["BLOCK_N"])
    else:
        cols = lambda META: triton.cdiv(KT, META["BLOCK_N"])
    grid = lambda META: (triton.cdiv(N, META["BLOCK_M"]) * cols(META), splits)
    kernel[grid](x5, dy, part, aff_t,
                 S, C_in, H, W, N, C_out, Ho, Wo, Ho * Wo, kh, kw, KT,
                 sxb, sxs, sxc, syb, syg, syc, syh, syw, sh, sw, pt, pl, dh, dw,
                 copies, chunks, per_split, bands, rows,
                 TAP_MODE=tap_mode, COL_FLAT=(N == C_out or syg == C_out * syc), PIX_FLAT=pix_flat, ALIGN=align,
                 PREC=C.dot_precision(x5.dtype),
                 **meta)
    gw = part[0] if splits == 1 else part.sum(0)
    return gw.view(N, S, kh, kw, C_in)
