"""Helpers shared by the tests: random problems, the backends under test, running a call forward and
backward, the oracle (the reference backend in float64 on contiguous copies) and the comparison rules.

Comparison rules (``check_matches_reference`` / ``check_low_precision``):

* float64: ``rtol = atol = 1e-10`` against the oracle;
* float32: ``rtol = 1e-5``, ``atol = 1e-5 * max(1, max |oracle|)`` (the scale of the result);
* float16 / bfloat16: flash-attention's rule: the kernel's error against the float32 reference of the
  same (rounded) inputs is at most twice PyTorch's own error at that precision (the reference backend,
  i.e. conv2d, run in float16 / bfloat16 on the same device) plus ``2e-4 * max(1, max |reference|)``.

A case a backend's ``supports()`` refuses is checked to raise a clear "does not support this call"
error when that backend is requested explicitly (``check_refused``), then skipped with the reason.
"""
import pytest
import torch

import equifast
from equifast import backends, groups

EXACT_GROUPS = ("C1", "C2", "C4", "D1", "D2", "D4")
FRAMES = ("view", "canonical")
OPS = ("lift_conv", "group_conv")
DEVICES = ("cpu",) + (("cuda",) if torch.cuda.is_available() else ())
LOWP_ATOL = 2e-4   # atol of the low-precision rule, relative to max(1, max |reference|)


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


def grad_out_like(out, seed=1):
    """A fixed random grad_out of ``out``'s shape, dtype and device (contiguous)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(out.shape, generator=gen, dtype=torch.float64).to(device=out.device, dtype=out.dtype)


def forward_backward(op, inp, weight, bias, grad_seed=1, grad_out=None, **kw):
    """Output and (grad_inp, grad_weight, grad_bias) for ``grad_out`` (default: a fixed random one).
    The leaves are detached views of the arguments, so they keep their strides (channels_last,
    sliced, permuted)."""
    leaves = [t.detach().requires_grad_(True) if t is not None else None for t in (inp, weight, bias)]
    out = run(op, *leaves, **kw)
    out.backward(grad_out_like(out, grad_seed) if grad_out is None else grad_out.to(out))
    return out.detach(), tuple(None if t is None else t.grad for t in leaves)


def max_err(a, b):
    return (a.double().cpu() - b.double().cpu()).abs().max().item() if a.numel() else 0.0


def scale(t):
    return max(1.0, t.double().abs().max().item()) if t.numel() else 1.0


def assert_close_lowp(out, ref32, torch_lowp, atol=1e-3, name="output"):
    """flash-attention's rule: |out - ref32| <= 2 |torch_lowp - ref32| + atol (all in float64)."""
    allowed = 2 * max_err(torch_lowp, ref32) + atol
    err = max_err(out, ref32)
    assert err <= allowed, f"{name}: low-precision error {err:.3e} exceeds 2x PyTorch's ({allowed:.3e})"


def to_channels_last(t):
    """A channels_last copy: 4-D images in torch.channels_last, 5-D stacks in (B, H, W, n, C) order."""
    if t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    return t.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2)


def sliced(t):
    """A non-contiguous view with ``t``'s values: every other element of a twice-as-wide last dim."""
    big = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    big[..., ::2] = t
    return big[..., ::2]


def field_major(s):
    """A [B, n, C, H, W] view of a field-major [B, C, n, H, W] tensor (escnn / GrouPy order)."""
    return s.transpose(1, 2).contiguous().transpose(1, 2)


# ---------------------------------------------------------------------------
# backends under test
# ---------------------------------------------------------------------------
def targets(include_reference=False):
    """(backend, device) pairs of every backend in ``equifast.backends.NAMES`` available on every
    device present (CPU; CUDA on a GPU machine), as pytest params with ids "backend-device"; the CUDA
    ones are marked ``gpu``, so that ``make gpu-test`` (``pytest -m gpu``) runs them."""
    params = []
    for device in DEVICES:
        for name in backends.NAMES:
            if name == "reference" and not include_reference:
                continue
            if backends.availability(name, device)[0]:
                marks = (pytest.mark.gpu,) if device != "cpu" else ()
                params.append(pytest.param((name, device), id=f"{name}-{device}", marks=marks))
    return params


def _plan(op, inp, weight, bias, group="C4", stride=1, padding=0, dilation=1, frame="view"):
    check = equifast._args.check_lift if op == "lift_conv" else equifast._args.check_group
    return check(inp, weight, bias, group, stride, padding, dilation, frame)


def refusal(backend, op, inp, weight, bias, **kw):
    """"" when ``backend`` runs this call, otherwise the reason its ``supports()`` gives."""
    ok, reason = backends.supports(backends.module(backend), _plan(op, inp, weight, bias, **kw), inp, weight)
    return "" if ok else (reason or "refused without a reason")


def check_refused(backend, op, inp, weight, bias, reason, **kw):
    """The explicit call raises a clear error naming the op, the backend and the reason."""
    with pytest.raises(RuntimeError) as info:
        run(op, inp, weight, bias, backend=backend, **kw)
    msg = str(info.value)
    assert f"{op}: backend {backend!r} does not support this call" in msg and reason in msg, msg


def skip_if_refused(backend, op, inp, weight, bias, **kw):
    """Skip a case the backend refuses, after checking that the explicit call says so clearly."""
    reason = refusal(backend, op, inp, weight, bias, **kw)
    if reason:
        check_refused(backend, op, inp, weight, bias, reason, **kw)
        pytest.skip(f"{backend} does not support this case: {reason}")


# ---------------------------------------------------------------------------
# the oracle and the comparisons
# ---------------------------------------------------------------------------
def _as64(t):
    return None if t is None else t.detach().to(torch.float64).contiguous()


def oracle(op, inp, weight, bias, grad_out, **kw):
    """Output and gradients of the reference backend in float64 on contiguous copies (on the
    inputs' device: float64 has no TF32 shortcut on a GPU)."""
    leaves = [None if t is None else _as64(t).requires_grad_(True) for t in (inp, weight, bias)]
    out = run(op, *leaves, backend="reference", **kw)
    out.backward(_as64(grad_out))
    return out.detach(), tuple(None if t is None else t.grad for t in leaves)


NAMES = ("output", "grad_input", "grad_weight", "grad_bias")


def assert_matches(got, want, dtype, name="output"):
    """``got`` (any device / dtype) against the float64 oracle ``want`` under the rule of ``dtype``."""
    assert got.shape == want.shape, f"{name}: shape {list(got.shape)}, expected {list(want.shape)}"
    if dtype == torch.float64:
        tol = dict(rtol=1e-10, atol=1e-10)
    else:
        tol = dict(rtol=1e-5, atol=1e-5 * scale(want))
    torch.testing.assert_close(got.detach().cpu().to(torch.float64), want.cpu(), **tol,
                               msg=lambda m: f"{name}: {m}")


_ORACLE_CACHE = {}


def check_matches_reference(backend, op, inp, weight, bias, *, oracle_key=None, **kw):
    """Run ``backend`` forward and backward and compare output and gradients with the oracle
    (float64 / float32 inputs). Calls with the same ``oracle_key`` (same values, any layout) share
    one oracle computation. Returns (output, grads)."""
    skip_if_refused(backend, op, inp, weight, bias, **kw)
    out, grads = forward_backward(op, inp, weight, bias, backend=backend, **kw)
    assert out.dtype == inp.dtype and out.device == inp.device
    if oracle_key in _ORACLE_CACHE:
        want_out, want_grads = _ORACLE_CACHE[oracle_key]
    else:
        want_out, want_grads = oracle(op, inp, weight, bias, grad_out_like(out), **kw)
        if oracle_key is not None:
            _ORACLE_CACHE[oracle_key] = (want_out, want_grads)
    assert_matches(out, want_out, inp.dtype)
    for name, g, w in zip(NAMES[1:], grads, want_grads):
        if w is None:
            assert g is None, name
            continue
        assert g is not None and g.dtype == inp.dtype, f"{name}: {None if g is None else g.dtype}"
        assert_matches(g, w, inp.dtype, name)
    return out, grads


def check_low_precision(backend, op, inp, weight, bias, **kw):
    """float16 / bfloat16 ``inp, weight, bias``: flash-attention's rule on output and gradients."""
    dtype = inp.dtype
    skip_if_refused(backend, op, inp, weight, bias, **kw)
    f32 = lambda t: None if t is None else t.float()  # noqa: E731
    out, grads = forward_backward(op, inp, weight, bias, backend=backend, **kw)
    grad_out = grad_out_like(out)   # rounded to the low precision; the float32 reference gets the same values
    ref32 = forward_backward(op, f32(inp), f32(weight), f32(bias), grad_out=grad_out.float(), backend="reference",
                             **kw)
    torch_lowp = forward_backward(op, inp, weight, bias, grad_out=grad_out, backend="reference", **kw)
    assert out.dtype == dtype and all(g is None or g.dtype == dtype for g in grads)
    for name, a, r, t in zip(NAMES, (out,) + grads, (ref32[0],) + ref32[1], (torch_lowp[0],) + torch_lowp[1]):
        if r is None:
            continue
        assert torch.isfinite(a).all(), f"{name} has non-finite values"
        assert_close_lowp(a, r, t, atol=LOWP_ATOL * scale(r), name=name)


def skip_unless_cuda_kernels() -> None:
    """Skip (with the reason) unless a CUDA device and equifast._C with its CUDA kernels are here."""
    import warnings
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
