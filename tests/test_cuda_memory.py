"""Peak GPU memory of a large lift on the cuda backend (issue: a view-frame D4 lift of a 4096 x 4096
image used to build an int64 pixel table of n*H*W entries per call, 1 GiB, and its argsort for the
backward). The kernels now read the affine pixel map by value, so:

* forward: torch.cuda.max_memory_allocated() during the call stays within 1.5x of input + output;
* backward: what it allocates beyond the tensors that exist before it (input, weight, output,
  grad_output) stays within 1.5x of its result grad_input.

Measured (torch.cuda.max_memory_allocated), not timed. Marked ``gpu`` (skipped without a CUDA
device); skips, with the reason, when equifast._C lacks its CUDA kernels or the GPU has less than
4 GiB free. Run with ``make gpu-test``."""

import pytest
import torch

from helpers import skip_unless_cuda_kernels

import equifast

pytestmark = pytest.mark.gpu

H = W = 4096


@pytest.fixture(scope="module", autouse=True)
def _need_cuda_kernels():
    skip_unless_cuda_kernels()
    free, _ = torch.cuda.mem_get_info()
    if free < 4 * 2**30:
        pytest.skip(f"needs 4 GiB of free GPU memory, {free / 2**30:.1f} GiB free")


def _nbytes(t):
    return t.numel() * t.element_size()


def _problem(requires_grad):
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(1, 1, H, W, generator=gen, device="cuda").requires_grad_(requires_grad)
    w = torch.randn(1, 1, 3, 3, generator=gen, device="cuda").requires_grad_(requires_grad)
    return x, w


def _lift(x, w):
    return equifast.lift_conv(x, w, group="D4", frame="view", padding=1, backend="cuda")


def test_large_lift_forward_peak_memory():
    x, w = _problem(False)
    _lift(x[..., :8, :8].contiguous(), w)  # group tables and kernels loaded outside the measurement
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    out = _lift(x, w)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    bound = 1.5 * (_nbytes(x) + _nbytes(out))
    assert out.shape == (1, 8, 1, H, W)
    assert peak <= bound, (f"forward peak {peak / 2**20:.0f} MiB exceeds 1.5x input + output "
                           f"({bound / 2**20:.0f} MiB)")


def test_large_lift_backward_peak_memory():
    x, w = _problem(True)
    out = _lift(x, w)
    grad_out = torch.randn_like(out)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    gx, gw = torch.autograd.grad(out, (x, w), grad_out)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    assert gx.shape == x.shape and gw.shape == w.shape
    assert extra <= 1.5 * _nbytes(gx), (f"backward allocated {extra / 2**20:.0f} MiB beyond its inputs, more "
                                        f"than 1.5x grad_input ({1.5 * _nbytes(gx) / 2**20:.0f} MiB)")
