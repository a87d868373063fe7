"""The ``fourier`` backend: ``group_conv`` in the group-Fourier basis of the group axis.

A view-frame group convolution is a correlation along the group axis, so a real orthogonal change
of basis that block-diagonalises the regular representation splits it into one small convolution
per irreducible copy: Σ_ρ d_ρ³ filter blocks (C_n: n_1 + 3 n_2 with three-product complex blocks)
instead of the dense bank's |G|², run as one conv2d per irreducible copy (grouped conv2d calls for
groups with many one-dimensional copies; ``group_conv``, bases in ``basis``). Plain PyTorch ops, so
any device; explicit backward.

Supports ``group_conv`` in the view frame for every group (C_n and D_n in closed form, custom
groups through a numerically computed basis), and in the canonical frame only where every group
element acts trivially on the kernel (1x1 kernels, C1), where both frames are the same function.
``lift_conv`` has no sum over the group to diagonalise: refused, so ``auto`` takes another backend.
"""
import torch

from . import basis
from .group_conv import group_conv_backward, group_conv_forward

NAME = "fourier"
INDEX_BITS = 64


def availability(device):
    return True, ""


def _acts_trivially(group, kh: int, kw: int) -> bool:
    """Whether every element of ``group`` leaves a kh x kw kernel unchanged (act(w, g) = w)."""
    index, weight = group.sampling_tables(kh, kw)
    identity = torch.arange(kh * kw)[None, :].expand(group.order, -1)
    return bool((weight[..., 0] == 1).all()) and bool((weight[..., 1:] == 0).all()) \
        and bool((index[..., 0] == identity).all())


def supports(plan, x, weight):
    if x.dim() != 5:
        return False, ("fourier: lift_conv is not supported: the lifting convolution has no sum over the group "
                       "for a group-Fourier transform to diagonalise (use backend 'torch', 'cpu', 'cuda' or 'triton')")
    if plan.frame == "canonical":
        kh, kw = weight.shape[-2:]
        if kh != kw and plan.group.quarter_turns:
            return False, "fourier: frame='canonical' with a non-square kernel is not supported"
        try:
            trivial = _acts_trivially(plan.group, kh, kw)
        except Exception as exc:   # a custom image action that cannot act on kh x kw
            return False, f"fourier: frame='canonical' needs the action on the {kh}x{kw} kernel ({exc})"
        if not trivial:
            return False, (f"fourier: frame='canonical' is supported only where every element of {plan.group.name} "
                           f"leaves the kernel unchanged (e.g. 1x1 kernels), where it equals frame='view'; with a "
                           f"{kh}x{kw} kernel the canonical filters act(w, g) differ per output copy and the group "
                           f"Fourier transform does not block-diagonalise the layer (use frame='view' or another "
                           f"backend)")
    try:
        basis.get(plan.group)
    except basis.BasisError as exc:
        return False, str(exc)
    return True, ""


# ``auto`` takes fourier where bench/fourier_group_conv.py measured it faster than the dense bank on CPU
# (bench/results/fourier-*/): kernels of at least 3x3, groups of order >= 4, and layers whose dense
# forward is at least MIN_DENSE_FLOP. In the sweep of bench/results/fourier-2026-11-30-v2 (one conv
# per irreducible copy) every 3x3 C4/D4 layer from 3e8 FLOP up won (1.5-2.8x) and one at 1.5e8 still
# lost (0.96x) (v3, compiled mixes: from 2.7e8 up 1.24-2.94x, one at 1.5e8 0.92x), so the bound stays at
# 4e8 with a margin; 1x1 kernels are left to the dense bank (C4 lost
# at every size measured, D4 gained at most 1.24x). One and two threads alike on a quiet machine
# (ops section; 2-thread runs on cores busy with other jobs are not representative: every parallel
# region of the many small calls waits for a preempted thread).
MIN_DENSE_FLOP = 4e8


def dense_flop(plan, x, weight) -> float:
    """Multiply-adds x 2 of the dense bank's forward for this call."""
    n = plan.order
    C_out, _, C_in, kh, kw = weight.shape
    Ho, Wo = plan.out_size(x.shape[-2], x.shape[-1], kh, kw)
    return 2.0 * x.shape[0] * Ho * Wo * (n * C_out) * (n * C_in) * kh * kw


def preferred(plan, x, weight):
    kh, kw = weight.shape[-2:]
    return (x.device.type == "cpu" and plan.order >= 4 and kh * kw >= 9
            and dense_flop(plan, x, weight) >= MIN_DENSE_FLOP)


__all__ = ["NAME", "INDEX_BITS", "MIN_DENSE_FLOP", "availability", "supports",
           "preferred", "dense_flop", "group_conv_forward", "group_conv_backward"]
