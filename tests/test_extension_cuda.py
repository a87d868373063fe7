"""The compiled CUDA kernels (backend "cuda", ops equifast_C::*) against the reference backend.

Every test is marked ``gpu`` (skipped without a CUDA device) and skips, with the reason, when
equifast._C is missing or was built without its CUDA kernels. Run on a GPU machine with
``make gpu-test`` (tools/gpu_test.sh) and under compute-sanitizer with ``make sanitize``.
"""
import itertools
import warnings

import pytest
import torch

import equifast
from helpers import make_problem, to_channels_last

pytestmark = pytest.mark.gpu

EXACT = ("C1", "C2", "C4", "D1", "D2", "D4")
FRAMES = ("view", "canonical")
OPS = ("lift_conv", "group_conv")
CONFIGS = [  # (H, W, k, kw, stride, padding, dilation)
    (7, 7, 3, 3, 1, 1, 1),
    (8, 8, 2, 2, 1, 0, 1),
    (9, 9, 3, 3, 2, (1, 2, 0, 1), 1),
    (10, 10, 3, 3, (2, 1), 1, (1, 2)),
]


@pytest.fixture(scope="module", autouse=True)
def _need_cuda_kernels():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from equifast.backends import _compiled as ext
        ok, reason = ext.load()
    if not ok:
        pytest.skip(f"equifast._C is not available: {reason}")
    if not ext.cuda_compiled():
        pytest.skip("equifast._C was built without its CUDA kernels (rebuild with EQUIFAST_BUILD_CUDA=1)")


def _problem(op, group, H, W, k, kw, B=2, C_in=3, C_out=5, dtype=torch.float64, seed=0, device="cuda"):
    return make_problem(op, group, B=B, C_in=C_in, C_out=C_out, H=H, W=W, k=k, kw=kw, dtype=dtype, device=device,
                        seed=seed)


def _fwd_bwd(op, x, w, b, **kw):
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, w, b)]
    out = getattr(equifast, op)(*leaves, **kw)
    gen = torch.Generator().manual_seed(7)
    gy = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(device=out.device, dtype=out.dtype)
    out.backward(gy)
    return out.detach(), [t.grad for t in leaves]


def _max_err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("group", EXACT)
@pytest.mark.parametrize("frame", FRAMES)
def test_forward_backward_matches_reference(op, group, frame):
    for ci, (H, W, k, kw, stride, padding, dilation) in enumerate(CONFIGS):
        x, w, b = _problem(op, group, H, W, k, kw, seed=ci, dtype=torch.float32)
        kwargs = dict(group=group, frame=frame, stride=stride, padding=padding, dilation=dilation)
        ref, ref_grads = _fwd_bwd(op, x, w, b, backend="reference", **kwargs)
        out, grads = _fwd_bwd(op, x, w, b, backend="cuda", **kwargs)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
        for got, want in zip(grads, ref_grads):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("frame", FRAMES)
def test_low_precision_vs_float32_reference(dtype, op, frame):
    x, w, b = _problem(op, "D4", 12, 12, 3, 3, C_in=4, C_out=8, dtype=torch.float32)
    kwargs = dict(group="D4", frame=frame, padding=1)
    ref32, ref32_g = _fwd_bwd(op, x, w, b, backend="reference", **kwargs)
    low = [t.to(dtype) for t in (x, w, b)]
    torch_low, torch_low_g = _fwd_bwd(op, *low, backend="reference", **kwargs)
    out, grads = _fwd_bwd(op, *low, backend="cuda", **kwargs)
    assert out.dtype == dtype
    for got, lowp, want in zip([out] + grads, [torch_low] + torch_low_g, [ref32] + ref32_g):
        allowed = 2 * _max_err(lowp, want) + 1e-2 * max(1.0, want.abs().max().item())
        assert _max_err(got, want) <= allowed


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("group", ("C4", "D4"))
def test_channels_last(op, group):
    x, w, b = _problem(op, group, 9, 9, 3, 3, C_in=4, C_out=6, dtype=torch.float32)
    kwargs = dict(group=group, padding=1, stride=(1, 2))
    ref, ref_grads = _fwd_bwd(op, x, w, b, backend="reference", **kwargs)
    out, grads = _fwd_bwd(op, to_channels_last(x), w, b, backend="cuda", **kwargs)
    assert out.permute(0, 3, 4, 1, 2).is_contiguous() and not out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_large_plane_global_memory_path():
    """A plane above 48 KiB is read from global memory instead of shared memory."""
    x, w, b = _problem("lift_conv", "C4", 120, 120, 3, 3, B=1, C_in=1, C_out=3, dtype=torch.float32)
    ref, ref_grads = _fwd_bwd("lift_conv", x, w, b, backend="reference", group="C4", padding=1)
    out, grads = _fwd_bwd("lift_conv", x, w, b, backend="cuda", group="C4", padding=1)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize("op", OPS)
def test_gradcheck_float64(op):
    x, w, b = _problem(op, "D4", 5, 5, 3, 3, C_in=2, C_out=2)
    leaves = tuple(t.clone().requires_grad_(True) for t in (x, w, b))
    fn = lambda x, w, b: getattr(equifast, op)(x, w, b, group="D4", padding=1, stride=(2, 1), backend="cuda")  # noqa
    assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize("op", OPS)
def test_zero_size_batch(op):
    x, w, b = _problem(op, "C4", 6, 6, 3, 3, B=0, dtype=torch.float32)
    out = getattr(equifast, op)(x, w, b, group="C4", padding=1, backend="cuda")
    assert out.shape == (0, 4, 5, 6, 6)


def test_backward_deterministic():
    x, w, b = _problem("group_conv", "D4", 10, 10, 3, 3, B=4, C_in=8, C_out=16, dtype=torch.float32)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first = _fwd_bwd("group_conv", x, w, b, group="D4", padding=1, backend="cuda")
        second = _fwd_bwd("group_conv", x, w, b, group="D4", padding=1, backend="cuda")
    finally:
        torch.use_deterministic_algorithms(prev)
    assert torch.equal(first[0], second[0])
    for got, want in zip(first[1], second[1]):
        assert torch.equal(got, want)


@pytest.mark.parametrize("op", OPS)
def test_opcheck(op):
    x, w, b = _problem(op, "D4", 6, 6, 3, 3, C_in=2, C_out=3, dtype=torch.float32)
    x, w, b = (t.requires_grad_(True) for t in (x, w, b))
    plan = equifast._args.make_plan("D4", 1, 1, 1, "view", 3, 3, op)
    torch.library.opcheck(getattr(torch.ops.equifast, op).default, (x, w, b, *plan.schema_args(), "cuda"))


def test_auto_and_interpolated_fallback():
    from equifast import backends
    from equifast.backends import cuda as cuda_backend
    x, w, b = _problem("lift_conv", "C8", 9, 9, 3, 3, dtype=torch.float32)
    plan = equifast._args.make_plan("C8", 1, 1, 1, "view", 3, 3, "lift_conv")
    ok, reason = cuda_backend.supports(plan, x, w)
    assert not ok and "interpolates" in reason
    assert backends.resolve("auto", plan, x, w, "lift_conv") is not cuda_backend
    assert "cuda" in equifast.available_backends("cuda")


@pytest.mark.parametrize("group,frame", list(itertools.product(("C4", "D2"), FRAMES)))
def test_non_contiguous_input(group, frame):
    x, w, b = _problem("group_conv", group, 8, 8, 3, 3, dtype=torch.float32)
    xs = x.transpose(1, 2).contiguous().transpose(1, 2)  # field-major [B, C, n, H, W] viewed as [B, n, C, H, W]
    ref = equifast.group_conv(x, w, b, group=group, frame=frame, padding=1, backend="reference")
    out = equifast.group_conv(xs, w, b, group=group, frame=frame, padding=1, backend="cuda")
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
