"""The CUDA kernels' pixel-map forms and index widths (csrc/cuda/kernels.cuh), through the
compiled ops directly: an affine map, the same map as an int64 and an int32 pixel table, an affine
map with more copies than the kernels take by value (read as a table), the int64 index instantiation
(an input whose offsets reach past 2^31) against the int32 one, and a pixel table that is not a
permutation. Forward and backward; float64 agreement with the reference backend on the CPU.

Marked ``gpu`` (skipped without a CUDA device); each test skips, with the reason, when equifast._C
lacks its CUDA kernels. Run with ``make gpu-test``."""

import pytest
import torch

import equifast
from helpers import make_problem, skip_unless_cuda_kernels

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def _need_cuda_kernels():
    skip_unless_cuda_kernels()


STRIDE, PADDING, DILATION = [1, 1], [1, 1, 1, 1], [1, 1]


def _ops():
    return torch.ops.equifast_C


def _view_maps(group, H, W, k=3):
    """(affine xmap [n, 2, 3], its int64 pixel table [n, H*W], kperm) of a view-frame lift, on CUDA."""
    from equifast.backends._compiled import lift_tables, pixel_table
    plan = equifast._args.make_plan(group, 1, 1, 1, "view", k, k, "lift_conv")
    xmap, kperm = lift_tables(plan, H, W, k, k, "cuda")
    assert xmap.dim() == 3, "the built-in groups pass affine maps"
    return xmap, pixel_table(xmap, plan.order, H, W).cuda().contiguous(), kperm


def _forward(x, w, b, xmap, kperm, n):
    return _ops().lift_conv(x, w, b, xmap, kperm, n, STRIDE, PADDING, DILATION)


def _backward(gy, x, w, xmap, kperm, n):
    return _ops().lift_conv_backward(gy, x, w, xmap, kperm, n, STRIDE, PADDING, DILATION, [True, True])


@pytest.mark.parametrize("group", ["C4", "D4", "D1"])
@pytest.mark.parametrize("H,W", [(9, 9), (6, 11), (130, 130)])  # 130x130 float64: the global-memory path
def test_affine_and_tables_agree(group, H, W):
    if group in ("C4", "D4") and H != W:
        pytest.skip("rotations by 90 degrees keep only square images")
    x, w, b = make_problem("lift_conv", group, B=2, C_in=3, C_out=10, H=H, W=W, dtype=torch.float64, device="cuda")
    xmap, table, kperm = _view_maps(group, H, W)
    n = xmap.shape[0]
    ref = equifast.lift_conv(x.cpu(), w.cpu(), b.cpu(), group=group, padding=1, backend="reference")
    gy = torch.randn(ref.shape, dtype=torch.float64, device="cuda")
    xr, wr = x.cpu().requires_grad_(), w.cpu().requires_grad_()
    equifast.lift_conv(xr, wr, None, group=group, padding=1, backend="reference").backward(gy.cpu())
    for form in (xmap, table, table.int()):
        out = _forward(x, w, b, form, kperm, n)
        torch.testing.assert_close(out.cpu(), ref, rtol=1e-12, atol=1e-12)
        gx, gw = _backward(gy, x, w, form, kperm, n)
        torch.testing.assert_close(gx.cpu(), xr.grad, rtol=1e-11, atol=1e-11)
        torch.testing.assert_close(gw.cpu(), wr.grad, rtol=1e-11, atol=1e-11)


def test_more_affine_copies_than_by_value():
    """17 copies (the kernels take 16 affine maps by value; more are read as a table): copy e is copy
    e mod 8 of D4, and grad input is D4's with the copies' grad_out folded."""
    H = W = 8
    x, w, b = make_problem("lift_conv", "D4", B=2, C_in=2, C_out=3, H=H, W=W, dtype=torch.float64, device="cuda")
    xmap, _, kperm = _view_maps("D4", H, W)
    pick = torch.tensor([e % 8 for e in range(17)], device="cuda")
    out8 = _forward(x, w, b, xmap, kperm, 8)
    out17 = _forward(x, w, b, xmap[pick].contiguous(), kperm, 17)
    torch.testing.assert_close(out17, out8[:, pick.cpu()], rtol=0, atol=0)
    gy17 = torch.randn(out17.shape, dtype=torch.float64, device="cuda")
    gy8 = torch.zeros_like(out8).index_add_(1, pick, gy17)
    gx17, gw17 = _backward(gy17, x, w, xmap[pick].contiguous(), kperm, 17)
    gx8, gw8 = _backward(gy8, x, w, xmap, kperm, 8)
    torch.testing.assert_close(gx17, gx8, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gw17, gw8, rtol=1e-12, atol=1e-12)


def test_int64_index_instantiation_matches_int32():
    """An input whose offsets reach past 2^31 elements (a view into a 4 GiB float16 buffer) runs the
    int64 instantiation of every kernel; the same values contiguous run the int32 one."""
    free, _ = torch.cuda.mem_get_info()
    if free < 6 * 2**30:
        pytest.skip(f"needs 6 GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    plane = 2**31 - 2**11  # channel stride: the last element sits past 2^31 - 4096 (the int32 limit)
    buf = torch.zeros(plane + 16 * 16, dtype=torch.float16, device="cuda")
    x = buf.as_strided((1, 2, 16, 16), (2 * plane, plane, 16, 1))
    gen = torch.Generator(device="cuda").manual_seed(0)
    x.copy_(torch.randn(1, 2, 16, 16, generator=gen, device="cuda", dtype=torch.float16))
    w = torch.randn(4, 2, 3, 3, generator=gen, device="cuda", dtype=torch.float16)
    xmap, table, kperm = _view_maps("D4", 16, 16)
    xc = x.contiguous()
    for form in (xmap, table.int()):
        out_big = _forward(x, w, None, form, kperm, 8)
        out_small = _forward(xc, w, None, form, kperm, 8)
        torch.testing.assert_close(out_big, out_small, rtol=0, atol=0)
        gy = torch.randn(out_big.shape, generator=gen, device="cuda", dtype=torch.float16)
        for got, want in zip(_backward(gy, x, w, form, kperm, 8), _backward(gy, xc, w, form, kperm, 8)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    del buf, x


def test_table_that_is_not_a_permutation_is_refused_by_grad_input():
    H = W = 5
    x, w, _ = make_problem("lift_conv", "C4", B=1, C_in=1, C_out=2, H=H, W=W, dtype=torch.float32, device="cuda")
    _, table, kperm = _view_maps("C4", H, W)
    bad = table.clone()
    bad[1, 0] = bad[1, 1]  # a repeated pixel: in range, not a permutation
    out = _forward(x, w, None, bad, kperm, 4)
    with pytest.raises(RuntimeError, match="permutation"):
        _backward(torch.ones_like(out), x, w, bad, kperm, 4)
