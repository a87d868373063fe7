"""Triton lifting convolution: forward, grad input, grad weight, all through the shared GEMMs.

x: [B, C_in, H, W], w: [C_out, C_in, kh, kw] -> y: [B, n, C_out, H', W'], with
p = i·sh - pt + a·dh, q = j·sw - pl + c·dw.

view frame       y[b,g,co,i,j] = Σ_{ci,a,c} w[co,ci,a,c] · X_g[b,ci,p,q],   X_g = act(x, g⁻¹)
                 (zero outside [0,H)x[0,W)); for exact groups X_g[p, q] = x[t_g + A_g·(p, q)].
canonical frame  y[b,g] = conv2d(x, act(w, g)).

forward      ``_forward``: one implicit GEMM launch. View frame: copy g (grid axis 1) reads X_g
             through affine strides (exact rotations / flips, no table) or from views precomputed
             by a gather pre-pass (interpolated / other groups). Canonical frame: the n acted filters
             act(w, g) (a small pre-pass) are N = n·C_out columns of one GEMM, x read once.
grad input   the forward GEMM on grad_out (``_forward.conv_transpose``: one launch per stride phase,
             only the taps of that phase): canonical gx = Σ_g conv_transpose(dy[:, g], act(w, g))
             with the n slots of dy as K; view frame, exact group, stride 1: gx[P] = Σ_g
             conv_transpose(dy[:, g], w)[A_gᵀ·(P - t_g)], the n copies as K slots each with its own
             affine map of the output pixels (``ROW_MAP``); other view lifts: the n transposed convs
             into a float32 buffer (copies on grid axis 1), then the adjoint of the views' gather.
grad weight  ``_grad_weight``: the gradient of the forward's K-major filters (view frame: Σ over the
             copies' affine views inside the kernel; canonical: the n·C_out acted-filter columns),
             then the adjoint of the filter pre-pass on the host (tiny).
"""
from __future__ import annotations

import torch

from . import _forward as F
from ._grad_weight import conv_grad_weight


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
    permutations); canonical frame = the acted filters as N = n·C_out columns, x read once.
    Deep 16-bit inputs of view lifts are first copied channels_last (``_forward.channels_inner``)."""
    B, C_in, H, W = x.shape
    C_out, _, kh, kw = weight.shape
    n = plan.order
    Ho, Wo = plan.out_size(H, W, kh, kw)
    y = _out_stack(x, B, n, C_out, Ho, Wo)
    if B * Ho * Wo == 0 or C_out == 0:
        return y.zero_()
    group = plan.group
    folded = plan.frame == "canonical" and n > 1
    x = F.channels_inner(x, n * C_out if folded else C_out)     # deep view lifts: one channels_last copy
    if plan.frame == "canonical":
        x5, copies, aff = x.unsqueeze(1), 1, [(x.stride(2), x.stride(3), 0)]
        w_k = F.lift_weight(weight, plan, folded=folded)
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
    group = plan.group
    Ho, Wo = grad_out.shape[-2:]
    (sh, sw), (dh, dw) = plan.stride, plan.dilation
    pt, _, pl, _ = plan.padding
    canonical = plan.frame == "canonical"
    maps = None if canonical else F.affine_maps(group, H, W, group.inverse)
    gx = gw = None
    dy = grad_out
    if output_mask[0]:
        gx = _alloc_like_input(x, x.shape)
        if C_out == 0 or B * Ho * Wo == 0:
            gx.zero_()
        elif B * H * W:
            dy = F.channels_inner(grad_out, C_in)
            if canonical or (maps is not None and (sh, sw) == (1, 1) and F.rows_invert(maps, H, W)):
                rows = None if canonical else F.inverse_rows(maps, (kh - 1) * dh - pt, (kw - 1) * dw - pl)
                F.conv_transpose(dy, F.lift_weight_transposed(weight, plan, n), gx.unsqueeze(1),
                                 [(dy.stride(3), dy.stride(4), 0)], 1, plan.stride, plan.dilation, (pt, pl), C_in,
                                 rows=rows)
            else:
                buf = torch.empty((B, n, C_in, H, W), dtype=torch.float32, device=x.device)
                aff = [(dy.stride(3), dy.stride(4), g * dy.stride(1)) for g in range(n)]
                F.conv_transpose(dy[:, :1], F.lift_weight_transposed(weight, plan, 1), buf, aff, n,
                                 plan.stride, plan.dilation, (pt, pl), C_in)
                gx.copy_(F.act_adjoint(buf.transpose(0, 1), group, list(group.inverse)).sum(0))
    if output_mask[1]:
        if C_out == 0 or B * Ho * Wo == 0:
            gw = torch.zeros_like(weight)
        else:
            folded = canonical and n > 1
            # deep inputs: x and grad_out channels innermost (16-byte runs in the tap walk; grad_out's
            # copy for the input gradient reused); otherwise grad_out as given (contiguous: its
            # pixel runs are the 16-byte loads)
            xc = F.channels_inner(x)
            if xc is not x:
                x, dy = xc, F.channels_inner(dy)
            else:
                dy = grad_out
            if canonical or maps is not None:
                x5 = x.unsqueeze(1)
                aff = [(x.stride(2), x.stride(3), 0)] if canonical else F.view_strides(maps, x.stride(2), x.stride(3))
            else:
                views = group.act_all(x, elements=list(group.inverse), dim=1)   # [B, n, C_in, H, W]
                x5 = views[:, :1]
                aff = [(views.stride(3), views.stride(4), g * views.stride(1)) for g in range(n)]
            copies = 1 if canonical else n
            gw_k = conv_grad_weight(x5, dy, aff, copies, (n if folded else 1) * C_out, C_out, kh, kw,
                                    plan.stride, plan.dilation, (pt, pl))
            gw = F.lift_weight_grad(gw_k, weight, plan, folded)
    return gx, gw, None
