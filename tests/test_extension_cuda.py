"""What is specific to the compiled CUDA kernels (backend "cuda", ops equifast_C::*): the
global-memory path for large planes, determinism, and the fallback of ``auto`` for interpolated
groups. Agreement with the reference over groups, frames, dtypes (float16 / bfloat16 included),
layouts and convolution arguments (and gradcheck, opcheck, empty batch) is tests/test_conformance.py
(target "cuda-cuda" on a GPU machine).

Every test is marked ``gpu`` (skipped without a CUDA device) and skips, with the reason, when
equifast._C is missing or was built without its CUDA kernels. Run on a GPU machine with
``make gpu-test`` (tools/gpu_test.sh) and under compute-sanitizer with ``make sanitize``.
"""

import pytest
import torch

import equifast
from helpers import forward_backward, make_problem, skip_unless_cuda_kernels

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def _need_cuda_kernels():
    skip_unless_cuda_kernels()


def _problem(op, group, H, W, k, kw, B=2, C_in=3, C_out=5, dtype=torch.float64, seed=0, device="cuda"):
    return make_problem(op, group, B=B, C_in=C_in, C_out=C_out, H=H, W=W, k=k, kw=kw, dtype=dtype, device=device,
                        seed=seed)


def test_large_plane_global_memory_path():
    """A plane above 48 KiB is read from global memory instead of shared memory."""
    x, w, b = _problem("lift_conv", "C4", 120, 120, 3, 3, B=1, C_in=1, C_out=3, dtype=torch.float32)
    ref, ref_grads = forward_backward("lift_conv", x, w, b, backend="reference", group="C4", padding=1)
    out, grads = forward_backward("lift_conv", x, w, b, backend="cuda", group="C4", padding=1)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-3)


def test_backward_deterministic():
    x, w, b = _problem("group_conv", "D4", 10, 10, 3, 3, B=4, C_in=8, C_out=16, dtype=torch.float32)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first = forward_backward("group_conv", x, w, b, group="D4", padding=1, backend="cuda")
        second = forward_backward("group_conv", x, w, b, group="D4", padding=1, backend="cuda")
    finally:
        torch.use_deterministic_algorithms(prev)
    assert torch.equal(first[0], second[0])
    for got, want in zip(first[1], second[1]):
        assert torch.equal(got, want)


def test_auto_and_interpolated_fallback():
    from equifast import backends
    from equifast.backends import cuda as cuda_backend
    x, w, b = _problem("lift_conv", "C8", 9, 9, 3, 3, dtype=torch.float32)
    plan = equifast._args.make_plan("C8", 1, 1, 1, "view", 3, 3, "lift_conv")
    ok, reason = cuda_backend.supports(plan, x, w)
    assert not ok and "interpolates" in reason
    assert backends.resolve("auto", plan, x, w, "lift_conv") is not cuda_backend
    assert "cuda" in equifast.available_backends("cuda")
