"""The forward implicit GEMM both ops share: a plain convolution over S input slots.

    y[b, g + gc, co, i, j] = Σ_{s, a, c, ci} w_k[gc·C_out + co, s, a, c, ci] · X_g[b, s, ci, p, q]
    p = i·sh - pt + a·dh,  q = j·sw - pl + c·dw,  X_g[..., p, q] = x[..., off_g + p·sph_g + q·spw_g]

Rows = output pixels of one image (b, pixel block), columns = N = (gc, co), K = (s, a, c, ci).
Every group action reaches this kernel as one of two things, never as a table:

* an affine view of the input per copy g (grid axis 1): an exact rotation / flip by multiples of
  90° maps (p, q) to (t0 + A·(p, q)), so the view X_g is x read with the strides
  (sph_g, spw_g) and the offset off_g (``aff[g]``, three int32 loaded once per program). The
  identity, and precomputed views (``views`` below), are the same with the plain strides;
* the weight: ``w_k`` [N, S, kh, kw, C_in] (K-major, ci fastest) built on the host by a small
  pre-pass (the group's act on the filters and the Cayley slot shift, see ``lift_weight`` and
  ``group_weight``), so the n copies are N = n·C_out columns of one GEMM that reads the input tile
  once (the group folded into the GEMM: canonical lifts and group convs in both frames).

Inner loop: addresses are a per-row offset plus a per-K offset; masks come from 1-D pieces; no
division or modulo and no table. Two K walks (constexpr ``TAP_MODE``):
* C_in >= 16 (deep lifts, group convs): K steps are (tap, ci block) with scalar tap counters, the
  input mask is per row only, and channels_last inputs give contiguous ci runs (16-byte loads when
  the host proves ``ALIGN``);
* small C_in (lifts of images): K = (tap, ci) flattened in BLOCK_K steps, the (a, c, ci) of each
  column advanced with carries (no division).

The same kernel computes every input gradient (``conv_transpose``): a transposed convolution is a
convolution of grad_out with the transposed filters, one launch per stride phase of the input
(sub-pixel decomposition: only the taps that reach that phase, written to a strided view). For
the view lift's input gradient each slot (copy g of grad_out) may bring its own affine map of the
output pixels (constexpr ``ROW_MAP``: (i0, j0) = u + B·(i, j), six int32 per slot loaded once per
slot, outside the K walk): input pixel P reads grad_out[g] around Aᵀ·(P - t).

Host helpers here: the launcher ``conv_forward``, ``conv_transpose``, the affine views, the filter
pre-passes (``lift_weight``, ``group_weight``), their transposes for the input gradients and their
adjoints for the weight gradients (``lift_weight_grad``, ``group_weight_grad``), and the
channels_last copy of deep inputs where it pays (``channels_inner``).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import _common as C

_FAR = tl.constexpr(-(1 << 24))   # a row/column offset that no tap brings back inside the image


@triton.jit
def affine_view(aff_ptr, g, ALIGN: tl.constexpr):
    """(row stride, column stride, offset) of copy g's affine view: input element (i, j) of the view
    is at offset + i·row stride + j·column stride. With ALIGN > 1 the host checked that all three are
    multiples of ALIGN (vectorised loads)."""
    sph = tl.load(aff_ptr + 3 * g)
    spw = tl.load(aff_ptr + 3 * g + 1)
    off = tl.load(aff_ptr + 3 * g + 2)
    if ALIGN > 1:
        sph = tl.multiple_of(sph, ALIGN)
        spw = tl.multiple_of(spw, ALIGN)
        off = tl.multiple_of(off, ALIGN)
    return sph, spw, off


@triton.jit
def _conv_forward_kernel(x_ptr, w_ptr, bias_ptr, y_ptr, aff_ptr, rows_ptr,
                         S, C_in, H, W, N, C_out, Ho, Wo, HoWo, KH, KW,
                         sxb, sxs, sxc, swn, syb, syg, syc, syh, syw,
                         sh, sw, pt, pl, dh, dw,
                         TAP_MODE: tl.constexpr, PIX_FLAT: tl.constexpr, COL_FLAT: tl.constexpr,
                         ALIGN: tl.constexpr, ROW_MAP: tl.constexpr,
                         HAS_BIAS: tl.constexpr, PREC: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    g = tl.program_id(1)                                   # input view / first output copy
    pid = tl.program_id(0)
    num_n = tl.cdiv(N, BLOCK_N)
    per_image = tl.cdiv(HoWo, BLOCK_M)
    nb = pid % num_n                                       # scalars: column block fastest,
    mb = (pid // num_n) % per_image                        # then the pixel block of image b
    b = pid // (num_n * per_image)
    r = mb * BLOCK_M + tl.arange(0, BLOCK_M)               # output pixels of image b
    m_ok = r < HoWo
    oi = r // Wo                                           # once per program, outside the loop
    oj = r % Wo
    rn = nb * BLOCK_N + tl.arange(0, BLOCK_N)              # columns (copy gc, co)
    n_ok = rn < N
    sph, spw, off = affine_view(aff_ptr, g, ALIGN)         # the affine view of copy g
    i0 = oi * sh - pt
    j0 = oj * sw - pl
    i0m = tl.where(m_ok, i0, _FAR)                         # rows past the image read nothing
    row = i0 * sph + j0 * spw                              # int32 offsets inside one sample
    x_img = x_ptr + (b.to(tl.int64) * sxb + off)
    KT = KH * KW * C_in
    w_cols = w_ptr + (rn * swn)[None, :]                   # swn = S·KT (an argument: its divisibility is known)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for s in range(0, S):
        if ROW_MAP:                                        # slot s's own affine map of the output pixels
            rs = rows_ptr + 6 * s                          # (once per slot, outside the K walk)
            i0 = tl.load(rs) + tl.load(rs + 1) * oi + tl.load(rs + 2) * oj
            j0 = tl.load(rs + 3) + tl.load(rs + 4) * oi + tl.load(rs + 5) * oj
            i0m = tl.where(m_ok, i0, _FAR)
            row = i0 * sph + j0 * spw
        xs = x_img + s * sxs
        ws = w_cols + s * KT
        if TAP_MODE:
            a = pid * 0                                       # int32 scalars carried by the loop
            c = pid * 0
            c0 = pid * 0
            steps = KH * KW * tl.cdiv(C_in, BLOCK_K)
            for _ in range(0, steps):
                pa = i0m + a * dh
                qc = j0 + c * dw
                r_ok = (pa >= 0) & (pa < H) & (qc >= 0) & (qc < W)          # [M]: one test per row
                ci = tl.max_contiguous(tl.multiple_of(c0 + tl.arange(0, BLOCK_K), BLOCK_K), BLOCK_K)
                ci_ok = ci < C_in
                arow = row + (a * dh * sph + c * dw * spw)
                if ALIGN > 1:
                    arow = tl.multiple_of(arow, ALIGN)
                av = tl.load(xs + (arow[:, None] + (ci * sxc)[None, :]), mask=r_ok[:, None] & ci_ok[None, :],
                             other=0.0)
                bv = tl.load(ws + ((a * KW + c) * C_in + ci)[:, None], mask=ci_ok[:, None] & n_ok[None, :],
                             other=0.0)
                acc = tl.dot(av, bv, acc, input_precision=PREC)
                c0 += BLOCK_K                                  # next (tap, ci block): scalar carries
                wrap = c0 >= C_in
                c0 = tl.where(wrap, 0, c0)
                c += wrap.to(tl.int32)
                wrap = c >= KW
                c = tl.where(wrap, 0, c)
                a += wrap.to(tl.int32)
        else:
            rk = tl.arange(0, BLOCK_K)                           # (a, c, ci) of each column, once
            ci = rk % C_in
            tap = rk // C_in
            c = tap % KW
            a = tap // KW
            step_ci = BLOCK_K % C_in
            step_tap = BLOCK_K // C_in
            step_c = step_tap % KW
            step_a = step_tap // KW
            for _ in range(0, KT, BLOCK_K):
                da = tl.where(a < KH, a * dh, _FAR)            # columns past K read nothing
                pa = i0m[:, None] + da[None, :]
                qc = j0[:, None] + (c * dw)[None, :]
                ok = (pa >= 0) & (pa < H) & (qc >= 0) & (qc < W)
                kof = ci * sxc + a * dh * sph + c * dw * spw
                av = tl.load(xs + (row[:, None] + kof[None, :]), mask=ok, other=0.0)
                bv = tl.load(ws + ((a * KW + c) * C_in + ci)[:, None], mask=(a < KH)[:, None] & n_ok[None, :],
                             other=0.0)
                acc = tl.dot(av, bv, acc, input_precision=PREC)
                ci += step_ci                                  # advance by BLOCK_K: carries, no division
                wrap = ci >= C_in
                ci = tl.where(wrap, ci - C_in, ci)
                c += step_c + wrap.to(tl.int32)
                wrap = c >= KW
                c = tl.where(wrap, c - KW, c)
                a += step_a + wrap.to(tl.int32)
    if COL_FLAT:                                                 # one copy, or (copy, co) adjacent in y
        co = rn
        col = rn * syc
    else:                                                        # epilogue: column -> (copy, co)
        gc = rn // C_out
        co = rn % C_out
        col = gc * syg + co * syc
    if HAS_BIAS:
        acc += tl.load(bias_ptr + (co % C_out if COL_FLAT else co), mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if PIX_FLAT:
        pix = r * syw
    else:
        pix = oi * syh + oj * syw
    y_img = y_ptr + (b.to(tl.int64) * syb + g * syg)
    tl.store(y_img + (pix[:, None] + col[None, :]), acc.to(y_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


# ---------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------
def affine_maps(group, H: int, W: int, elements):
    """[(A00, A01, A10, A11, t0, t1)] with source pixel (t0 + A00·p + A01·q, t1 + A10·p + A11·q) of
    view pixel (p, q) for each element's image action on H x W, or None when some action is not
    such an affine permutation (interpolated groups, arbitrary custom permutations); cached."""
    key = ("affine", group.name, id(group), int(H), int(W), tuple(int(e) for e in elements))
    if key in C._CACHE:
        return C._CACHE[key]
    maps = None
    if group.exact:
        index, _ = group.sampling_tables(H, W)
        p = torch.arange(H).repeat_interleave(W)
        q = torch.arange(W).repeat(H)
        maps = []
        for e in elements:
            src = index[int(e), :, 0].long()
            sr, sc = src // W, src % W
            t0, t1 = int(sr[0]), int(sc[0])
            a00 = int(sr[W]) - t0 if H > 1 else 0
            a10 = int(sc[W]) - t1 if H > 1 else 0
            a01 = int(sr[1]) - t0 if W > 1 else 0
            a11 = int(sc[1]) - t1 if W > 1 else 0
            if not (torch.equal(sr, t0 + a00 * p + a01 * q) and torch.equal(sc, t1 + a10 * p + a11 * q)):
                maps = None
                break
            maps.append((a00, a01, a10, a11, t0, t1))
    with C._LOCK:
        C._CACHE[key] = maps
    return maps


def view_strides(maps, sxh: int, sxw: int):
    """Rows (sph, spw, off) of the affine views: x[t0 + A·(p, q)] = x[off + p·sph + q·spw]."""
    return [(a00 * sxh + a10 * sxw, a01 * sxh + a11 * sxw, t0 * sxh + t1 * sxw)
            for a00, a01, a10, a11, t0, t1 in maps]


def k_major(weight: torch.Tensor) -> torch.Tensor:
    """[N, ..., C_in, kh, kw] -> contiguous [N, ..., kh, kw, C_in] (the GEMM's K order, ci fastest)."""
    d = weight.dim()
    return weight.permute(*range(d - 3), d - 2, d - 1, d - 3).contiguous()


def lift_weight(weight, plan, folded: bool):
    """K-major filters of the lift: the plain filters, or (``folded``, canonical frame) all n acted
    copies act(w, g) as N = n·C_out columns (a small pre-pass: the filters are tiny)."""
    if folded:
        w = plan.group.act_all(weight, dim=0)                               # [n, C_out, C_in, kh, kw]
        weight = w.reshape(-1, *weight.shape[1:])
    return k_major(weight)


def _group_filters(weight, plan):
    """[n(g), C_out, n(s), C_in, kh, kw]: the filter copy g applies to input slot s,
    w[:, g⁻¹·s] (view) or act(w[:, g⁻¹·s], g) (canonical)."""
    group = plan.group
    n = group.order
    slots = torch.tensor([[group.cayley[group.inverse[g]][s] for s in range(n)] for g in range(n)],
                         device=weight.device)
    w = weight[:, slots].transpose(0, 1)                                   # [n(g), C_out, n(s), C_in, kh, kw]
    if plan.frame == "canonical":
        w = group.act_each(w.contiguous())
    return w


def group_weight(weight, plan):
    """K-major filters of the group conv with the Cayley shift folded in: column (g, co), slot s
    reads w[co, g⁻¹·s] (view) or act(w[co, g⁻¹·s], g) (canonical), so every copy reads input slot s
    at K position s and the stack is read once for all n copies."""
    w = _group_filters(weight, plan)
    return k_major(w.reshape(-1, *w.shape[2:]))


def group_weight_transposed(weight, plan):
    """Filters of the group conv's input gradient (``conv_transpose``, taps not flipped), K-major:
    column (s, ci), slot g, taps, co: gs[s] = Σ_g conv_transpose(dy[g], filter(g, s))."""
    w = _group_filters(weight, plan).permute(2, 3, 0, 1, 4, 5)            # [n(s), C_in, n(g), C_out, kh, kw]
    return k_major(w.reshape(-1, *w.shape[2:]))


def lift_weight_transposed(weight, plan, copies: int):
    """Filters of the lift's input gradient (taps not flipped), K-major [C_in, copies, kh, kw, C_out]:
    canonical frame act(w, g) for slot g of grad_out; view frame w itself for every slot."""
    if plan.frame == "canonical" and plan.order > 1:
        w = plan.group.act_all(weight, dim=0).transpose(1, 2)               # [n, C_in, C_out, kh, kw]
    else:
        w = weight.transpose(0, 1).unsqueeze(0).expand(copies, -1, -1, -1, -1)
    return w.permute(1, 0, 3, 4, 2).contiguous()


def act_adjoint(t: torch.Tensor, group, elements) -> torch.Tensor:
    """out[i] = the adjoint of act(·, elements[i]) applied to t[i] (t [m, ..., H, W], float32): the
    transposed gather tables (exact groups: act(·, e⁻¹)); zero-weight taps are skipped."""
    m, (H, W) = t.shape[0], t.shape[-2:]
    index, weight = C.gather_table(group, H, W, elements, t.device, transposed=True)   # [m, HW, T]
    T = index.shape[-1]
    flat = t.reshape(m, -1, H * W)
    vals = flat.gather(-1, index.long().reshape(m, 1, H * W * T).expand(m, flat.shape[1], H * W * T))
    vals = vals.view(m, flat.shape[1], H * W, T)
    wt = weight.view(m, 1, H * W, T)
    return (vals * wt).masked_fill(wt == 0, 0).sum(-1).view(t.shape)


def lift_weight_grad(gw_k: torch.Tensor, weight, plan, folded: bool) -> torch.Tensor:
    """The lift's weight gradient from the gradient of ``lift_weight``'s filters (its adjoint)."""
    C_out, C_in, kh, kw = weight.shape
    g = gw_k.reshape(-1, C_out, kh, kw, C_in).permute(0, 1, 4, 2, 3)      # [copies, C_out, C_in, kh, kw]
    if folded:
        g = act_adjoint(g, plan.group, range(plan.order))
    return g.sum(0).to(weight.dtype)


def group_weight_grad(gw_k: torch.Tensor, weight, plan) -> torch.Tensor:
    """The group conv's weight gradient from the gradient of ``group_weight``'s filters (its adjoint:
    canonical frame the act's adjoint per copy g, then gw[:, h] = Σ_g gW[g, :, g·h])."""
    C_out, n, C_in, kh, kw = weight.shape
    group = plan.group
    g = gw_k.reshape(n, C_out, n, kh, kw, C_in).permute(0, 1, 2, 5, 3, 4)  # [n(g), C_out, n(s), C_in, kh, kw]
    if plan.frame == "canonical":
        g = act_adjoint(g, group, range(n))
    idx = torch.tensor([[group.cayley[e][h] for h in range(n)] for e in range(n)], device="cpu")
    idx = idx.to(gw_k.device).view(n, 1, n, 1, 1, 1).expand(g.shape)
    return g.gather(2, idx).sum(0).to(weight.dtype)


def inverse_rows(maps, top: int, left: int):
    """Row maps (``ROW_MAP``) of the view lift's input gradient at stride 1: input pixel P of copy g
    is view pixel (p, q) = Aᵀ·(P - t) of X_g[p, q] = x[t + A·(p, q)] (A a signed permutation), and
    reads grad_out at (p - top, q - left) + taps: rows (u0, b00, b01, u1, b10, b11) with
    i0 = u0 + b00·P0 + b01·P1, j0 = u1 + b10·P0 + b11·P1."""
    rows = []
    for a00, a01, a10, a11, t0, t1 in maps:
        rows.append((-a00 * t0 - a10 * t1 - top, a00, a10, -a01 * t0 - a11 * t1 - left, a01, a11))
    return rows


def rows_invert(maps, H: int, W: int) -> bool:
    """True when every map's transpose inverts it on H x W (what ``inverse_rows`` assumes)."""
    P0 = torch.arange(H).repeat_interleave(W)
    P1 = torch.arange(W).repeat(H)
    for a00, a01, a10, a11, t0, t1 in maps:
        p = a00 * (P0 - t0) + a10 * (P1 - t1)
        q = a01 * (P0 - t0) + a11 * (P1 - t1)
        if not (torch.equal(t0 + a00 * p + a01 * q, P0) and torch.equal(t1 + a10 * p + a11 * q, P1)):
            return False
    return True


CHANNELS_INNER_MIN = 32   # channels from which a channels-innermost copy of a 16-bit input can pay ...
CHANNELS_INNER_MAX_N = 64  # ... for a GEMM with at most this many columns per copy (see channels_inner)


def channels_last_copy(x: torch.Tensor) -> torch.Tensor:
    """x [..., C, H, W] copied with channels innermost (channels_last for 4-D): one memory-bound pass."""
    d = x.dim()
    return x.permute(*range(d - 3), d - 2, d - 1, d - 3).contiguous().permute(
        *range(d - 3), d - 1, d - 3, d - 2)


def channels_inner(x: torch.Tensor, columns: int = 0) -> torch.Tensor:
    """``x`` itself, or a channels-innermost copy of it when that pays by tools/gpu_static_check.py's
    model: 16-bit dtype, C >= CHANNELS_INNER_MIN, channels not innermost, and a GEMM with at most
    CHANNELS_INNER_MAX_N ``columns`` per copy (the tap walk then reads 16-byte channel runs instead
    of 2-byte pixels, and with few columns those loads dominate: deep view-frame lifts, input
    gradients of lifts; ``columns`` 0: the weight gradient, whose tap walk gains the same way).
    Wider GEMMs (canonical lifts with n·C_out columns, group convs) and float32 were no faster with
    the copy in the model."""
    if (x.element_size() <= 2 and x.shape[-3] >= CHANNELS_INNER_MIN and columns <= CHANNELS_INNER_MAX_N
            and x.stride(-3) != 1 and x.shape[-1] * x.shape[-2] > 1):
        return channels_last_copy(x)
    return x


def _align(itemsize, *offsets):
    """8 / 4 elements when every offset is a multiple of 16 bytes' worth (the 16-byte load proof)."""
    vec = 16 // itemsize
    return vec if all(int(o) % vec == 0 for o in offsets) else 1


def conv_forward(x5, w_k, bias, y, aff, copies, stride, dilation, top_left, C_out, kh, kw, rows=None):
    """Launch the kernel: x5 [B, S, C_in, H, W] (any strides), w_k [N, S, kh, kw, C_in] contiguous,
    y [B, n, C_out, Ho, Wo], ``aff`` rows (sph, spw, off) per copy (grid axis 1 = ``copies``);
    input row of output row i and tap a: i·stride - top + a·dilation (left likewise), or, with
    ``rows`` (one (u0, b00, b01, u1, b10, b11) per slot), (u0 + b00·i + b01·j) + a·dilation."""
    B, S, C_in, H, W = x5.shape
    N = w_k.shape[0]
    Ho, Wo = y.shape[-2:]
    sxb, sxs, sxc, _, _ = x5.stride()
    syb, syg, syc, syh, syw = y.stride()
    (sh, sw), (dh, dw), (pt, pl) = stride, dilation, top_left
    tap_mode = C_in >= 16
    flat = [v for row in aff for v in row]
    align = _align(x5.element_size(), sxb, sxs, C_in, *flat) if (tap_mode and sxc == 1) else 1
    aff_t = C.int_table([flat], x5.device)
    rows_t = C.int_table([[v for r in rows for v in r]], x5.device) if rows is not None else aff_t
    kernel, meta = C.launcher(_conv_forward_kernel, ("N", "C_out", "C_in", "Ho", "Wo", "TAP_MODE", "ALIGN", "ROW_MAP"),
                              configs=C.forward_configs)
    grid = lambda META: (B * triton.cdiv(Ho * Wo, META["BLOCK_M"]) * triton.cdiv(N, META["BLOCK_N"]), copies)
    kernel[grid](x5, w_k, bias if bias is not None else w_k, y, aff_t, rows_t,
                 S, C_in, H, W, N, C_out, Ho, Wo, Ho * Wo, kh, kw,
                 sxb, sxs, sxc, S * kh * kw * C_in, syb, syg, syc, syh, syw, sh, sw, pt, pl, dh, dw,
                 TAP_MODE=tap_mode, PIX_FLAT=(syh == Wo * syw), COL_FLAT=(N == C_out or syg == C_out * syc),
                 ALIGN=align, ROW_MAP=rows is not None,
                 HAS_BIAS=bias is not None, PREC=C.dot_precision(x5.dtype), **meta)
    return y


def conv_transpose(dy5, w_adj, out, aff, copies, stride, dilation, padding, C_cols, rows=None):
    """out = conv_transpose of dy5 [B, S, C, Ho, Wo] with the (unflipped) filters w_adj [N, S, kh, kw, C]
    (K-major), written into out [B, copies, N / C_cols·..., H, W] through the forward kernel: for stride
    (sh, sw) one launch per phase (r0, r1) of the output, a stride-1 convolution of dy5 with the taps
    a of that phase ((r0 + pt - a·dh) divisible by sh), last tap first, on the view out[..., r0::sh,
    r1::sw] (the sub-pixel decomposition: no masked taps, no division). ``rows`` (stride 1 only):
    per-slot row maps that already include the top / left offset (``inverse_rows``)."""
    (sh, sw), (dh, dw), (pt, pl) = stride, dilation, padding
    if rows is not None and (sh, sw) != (1, 1):
        raise ValueError(f"conv_transpose: row maps need stride (1, 1), got {(sh, sw)}")
    kh, kw = w_adj.shape[2:4]
    H, W = out.shape[-2:]
    for r0 in range(sh):
        for r1 in range(sw):
            view = out[..., r0::sh, r1::sw]
            ta = [a for a in range(kh - 1, -1, -1) if (r0 + pt - a * dh) % sh == 0]   # last tap first
            tc = [c for c in range(kw - 1, -1, -1) if (r1 + pl - c * dw) % sw == 0]
            if view.numel() == 0:
                continue
            if not ta or not tc:                            # no tap reaches this phase
                view.zero_()
                continue
            w = w_adj.index_select(2, torch.tensor(ta, device=w_adj.device)).index_select(
                3, torch.tensor(tc, device=w_adj.device)).contiguous()          # the phase's taps, flipped
            top = -((r0 + pt - ta[0] * dh) // sh)           # grad_out row of phase row u, first tap: u - top
            left = -((r1 + pl - tc[0] * dw) // sw)
            step = (dh // math.gcd(sh, dh), dw // math.gcd(sw, dw))
            conv_forward(dy5, w, None, view, aff, copies, (1, 1), step, (top, left), C_cols, len(ta), len(tc),
                         rows=rows)
    return out
