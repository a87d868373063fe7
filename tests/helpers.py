"""Helpers shared by the tests: random problems and the low-precision comparison rule."""
import torch

import equifast
from equifast import groups

EXACT_GROUPS = ("C1", "C2", "C4", "D1", "D2", "D4")
FRAMES = ("view", "canonical")


def make_problem(op, group, *, B=2, C_in=3, C_out=4, H=7, W=None, k=3, kw=None, bias=True,
                 dtype=torch.float64, device="cpu", seed=0):
    """Random (input, weight, bias) for ``op`` ("lift_conv" or "group_conv")."""
    gen = torch.Generator().manual_seed(seed)
    n = groups.get(group).order
    W = H if W is None else W
    kw = k if kw is None else kw
    if op == "lift_conv":
        inp = torch.randn(B, C_in, H, W, generator=gen, dtype=torch.float64)
        weight = torch.randn(C_out, C_in, k, kw, generator=gen, dtype=torch.float64)
    else:
        inp = torch.randn(B, n, C_in, H, W, generator=gen, dtype=torch.float64)
        weight = torch.randn(C_out, n, C_in, k, kw, generator=gen, dtype=torch.float64)
    b = torch.randn(C_out, generator=gen, dtype=torch.float64) if bias else None
    cast = lambda t: None if t is None else t.to(dtype=dtype, device=device)  # noqa: E731
    return cast(inp), cast(weight), cast(b)


def run(op, inp, weight, bias, **kw):
    return getattr(equifast, op)(inp, weight, bias, **kw)


def forward_backward(op, inp, weight, bias, grad_seed=1, **kw):
    """Output and (grad_inp, grad_weight, grad_bias) for a fixed random grad_out."""
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (inp, weight, bias)]
    out = run(op, *leaves, **kw)
    gen = torch.Generator().manual_seed(grad_seed)
    grad_out = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out)
    out.backward(grad_out)
    return out.detach(), tuple(None if t is None else t.grad for t in leaves)


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_close_lowp(out, ref32, torch_lowp, atol=1e-3):
    """flash-attention's rule: |out - ref32| <= 2 |torch_lowp - ref32| + atol (all in float64)."""
    allowed = 2 * max_err(torch_lowp, ref32) + atol
    err = max_err(out, ref32)
    assert err <= allowed, f"low-precision error {err:.3e} exceeds 2x PyTorch's ({allowed:.3e})"


def to_channels_last(t):
    """A channels_last copy: 4-D images in torch.channels_last, 5-D stacks in (B, H, W, n, C) order."""
    if t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    return t.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2)
