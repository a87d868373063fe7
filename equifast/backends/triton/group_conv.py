"""Triton group convolution: forward, grad input, grad weight, all through the shared GEMMs.

s: [B, n, C_in, H, W], w: [C_out, n, C_in, kh, kw] -> y: [B, n, C_out, H', W'], with
p = i·sh - pt + a·dh, q = j·sw - pl + c·dw.

view frame       y[b,g] = Σ_h conv2d(s[b, g·h], w[:, h])
canonical frame  y[b,g] = Σ_h conv2d(s[b, h], act(w[:, g⁻¹·h], g))
Substituting s = g·h (view) both are y[b,g] = Σ_s conv2d(s[b, s], W[g, s]) with W[g, s] = w[:, g⁻¹·s]
(view) or act(w[:, g⁻¹·s], g) (canonical).

forward      ``_forward``: W built by a small pre-pass on the filters (``_forward.group_weight``),
             one implicit GEMM with rows = output pixels, columns = (g, co) (N = n·C_out),
             K = (s, tap, ci): the stack is read once for all n copies.
grad input   gs[b, s] = Σ_g conv_transpose(dy[b, g], W[g, s]): the forward GEMM on grad_out with
             columns (s, ci) and K = (g, tap, co) (``_forward.group_weight_transposed``), one launch per
             stride phase (``_forward.conv_transpose``), grad_out read once for all n input slots.
grad weight  ``_grad_weight``: the gradient of W (rows (g, co), columns (s, tap, ci)), then the
             adjoint of the pre-pass on the host (``_forward.group_weight_grad``: the Cayley shift
             and, canonical, the act on the filters; tiny).
"""
from __future__ import annotations

from . import _forward as F
from ._grad_weight import conv_grad_weight


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
    pt, _, pl, _ = plan.padding
    gs = gw = None
    if output_mask[0]:
        gs = _out_stack(s, s.shape)
        if C_out == 0 or B * Ho * Wo == 0:
            gs.zero_()
        elif B * H * W:
            dy = F.channels_inner(grad_out, n * C_in)
            F.conv_transpose(dy, F.group_weight_transposed(weight, plan), gs, [(dy.stride(3), dy.stride(4), 0)], 1,
                             plan.stride, plan.dilation, (pt, pl), C_in)
    if output_mask[1]:
        if C_out == 0 or B * Ho * Wo == 0:
            gw = weight.new_zeros(weight.shape)
        else:
            sc = F.channels_inner(s)                        # deep stacks: s and grad_out channels innermost
            dy = F.channels_inner(grad_out) if sc is not s else grad_out
            gw_k = conv_grad_weight(sc, dy, [(sc.stride(3), sc.stride(4), 0)], 1, n * C_out, C_out, kh, kw,
                                    plan.stride, plan.dilation, (pt, pl))
            gw = F.group_weight_grad(gw_k, weight, plan)
    return gs, gw, None
