"""Reliability of every backend present: no silently corrupt result.

* unwritten outputs: outputs and gradients come back fully written, checked with freed memory
  pre-filled with NaN (allocator poisoning) and with PyTorch's NaN fill of uninitialised memory;
* NaN / Inf in inputs propagate exactly as through conv2d (same NaN / +Inf / -Inf masks as the
  reference, and exactly the outputs that depend on a non-finite input are non-finite);
* empty batches and 1x1 images, forward and backward;
* sizes past 2^31 elements: a kernel backend refuses them with a clear error before any kernel
  runs (tested on CPU with expanded stride-0 tensors, nothing allocated), or has 64-bit offsets
  (tested for real on a GPU);
* determinism: forward bitwise reproducible; backward reproducible under
  ``torch.use_deterministic_algorithms(True)`` or a clear RuntimeError, as PyTorch does;
* bad input: the same clear error from every backend.

Backends are those of ``equifast.available_backends("cpu")`` at collection time (plus "cuda" ones
on a GPU machine); a case a backend's ``supports()`` refuses is skipped after checking that
requesting that backend explicitly raises a clear error.
"""
import contextlib
import types

import pytest
import torch

import equifast
from equifast import _limits, backends, groups
from equifast._args import make_plan
from equifast._layout import is_channels_last
from helpers import make_problem, to_channels_last

BACKENDS = equifast.available_backends("cpu")
CUDA_BACKENDS = equifast.available_backends("cuda") if torch.cuda.is_available() else []
# (device, backend) pairs: every CPU backend, plus every CUDA one on a GPU machine ("cuda:<name>")
TARGETS = list(BACKENDS) + [f"cuda:{b}" for b in CUDA_BACKENDS]
KERNEL_TARGETS = [t for t in TARGETS if t.split(":")[-1] not in ("reference", "torch")]


def split_target(target):
    """"torch" -> ("cpu", "torch"); "cuda:triton" -> ("cuda", "triton")."""
    return tuple(target.split(":")) if ":" in target else ("cpu", target)
OPS = ("lift_conv", "group_conv")
FRAMES = ("view", "canonical")
NAN, INF = float("nan"), float("inf")


# Tests that also look for races in multi-threaded CPU kernels run on 2 threads; the rest on one
# (tiny problems: with 2 threads on a loaded 2-core machine OpenMP's spin-waits cost 100x).
MULTI_THREADED = {"test_outputs_fully_written", "test_forward_bitwise_reproducible",
                  "test_backward_reproducible_in_deterministic_mode"}


@pytest.fixture(autouse=True)
def _threads(request):
    prev = torch.get_num_threads()
    torch.set_num_threads(2 if request.function.__name__ in MULTI_THREADED else 1)
    yield
    torch.set_num_threads(prev)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def problem(op, group, *, B=2, C_in=2, C_out=3, H=5, W=None, k=3, bias=True, dtype=torch.float32,
            channels_last=False, seed=0, device="cpu"):
    x, w, b = make_problem(op, group, B=B, C_in=C_in, C_out=C_out, H=H, W=W, k=k, bias=bias, dtype=dtype,
                           device=device, seed=seed)
    return (to_channels_last(x) if channels_last else x), w, b


def call(op, x, w, b, backend, **kw):
    return getattr(equifast, op)(x, w, b, backend=backend, **kw)


def refused(backend, op, x, w, group="C4", stride=1, padding=0, dilation=1, frame="view"):
    """The reason ``backend``'s supports() refuses this call ("" when it accepts)."""
    plan = make_plan(group, stride, padding, dilation, frame, w.shape[-2], w.shape[-1], op)
    ok, reason = backends.supports(backends.module(backend), plan, x, w)
    return "" if ok else (reason or "refused without a reason")


def skip_if_refused(backend, op, x, w, b=None, **kw):
    """Skip a case the backend refuses, after checking that requesting it explicitly is a clear error."""
    reason = refused(backend, op, x, w, **kw)
    if reason:
        with pytest.raises(RuntimeError, match=f"backend '{backend}' does not support this call"):
            call(op, x, w, b, backend, **kw)
        pytest.skip(f"backend {backend!r} refuses this case (clear error checked): {reason}")


def grads(op, x, w, b, backend, grad_out=None, **kw):
    """(out, grad_x, grad_w, grad_b) with a fixed random grad_out."""
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in (x, w, b)]
    if x.dim() and is_channels_last(x):
        leaves[0] = to_channels_last(leaves[0].detach()).requires_grad_()
    out = call(op, *leaves, backend, **kw)
    if grad_out is None:
        gen = torch.Generator().manual_seed(123)
        grad_out = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(device=out.device, dtype=out.dtype)
    wanted = [t for t in leaves if t is not None]
    gs = torch.autograd.grad(out, wanted, grad_out, allow_unused=True)
    gs = list(gs) + [None] * (3 - len(gs))
    return (out.detach(), *gs)


_POISON_SIZES = [2 ** k for k in range(6, 18)]


def poison_allocator(*extra_numels, device="cpu"):
    """Fill freed memory with NaN: allocate NaN tensors of many sizes and free them, so that the
    next ``empty()`` of a similar size reuses NaN-filled memory (the CUDA caching allocator does
    this reliably; glibc malloc on CPU does for blocks below its mmap threshold, as long as the
    freed blocks do not merge into the top of the heap: the returned pin, allocated after them,
    prevents that; keep it alive while the op runs)."""
    junk = []
    for numel in list(extra_numels) + _POISON_SIZES:
        if numel > 0:
            junk += [torch.full((int(numel),), NAN, device=device) for _ in range(2)]
    pin = torch.empty(64, device=device)
    del junk
    return pin


@contextlib.contextmanager
def nan_fill_uninitialized():
    """PyTorch's deterministic mode with fill_uninitialized_memory: every torch.empty / at::empty
    (Python or C++) comes back filled with NaN, so an output element no kernel writes stays NaN."""
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = prev_fill
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


@contextlib.contextmanager
def deterministic(warn_only=False):
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=warn_only)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


def assert_fully_written(what, t):
    assert t is not None, f"{what}: missing"
    bad = torch.isnan(t)
    assert not bool(bad.any()), (f"{what}: {int(bad.sum())} of {t.numel()} elements are NaN for NaN-free inputs "
                                 f"(unwritten output memory?); first at index {bad.nonzero()[0].tolist()}")


def nonfinite_masks(t):
    return {"nan": torch.isnan(t), "+inf": torch.isposinf(t), "-inf": torch.isneginf(t)}


def assert_same_masks(what, got, ref):
    for kind, mask in nonfinite_masks(ref).items():
        mine = nonfinite_masks(got)[kind]
        diff = mine ^ mask
        assert not bool(diff.any()), (f"{what}: {kind} mask differs from the reference at {int(diff.sum())} "
                                      f"elements (first {diff.nonzero()[0].tolist()}: got {got[tuple(diff.nonzero()[0])]}"
                                      f", reference {ref[tuple(diff.nonzero()[0])]})")


MIXES_COPIES = {"fourier"}   # backends that may turn ±Inf into NaN (docs/fourier.md)


def assert_same_nonfinite(what, got, ref):
    """The same elements are non-finite (NaN and ±Inf not told apart)."""
    diff = torch.isfinite(got) ^ torch.isfinite(ref)
    assert not bool(diff.any()), (f"{what}: non-finite mask differs from the reference at {int(diff.sum())} "
                                  f"elements (first {diff.nonzero()[0].tolist()})")


def bitwise_equal(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.view(-1).view(torch.uint8)
                                                                     if a.is_contiguous() else
                                                                     a.contiguous().view(-1).view(torch.uint8),
                                                                     b.contiguous().view(-1).view(torch.uint8))


# ---------------------------------------------------------------------------
# unwritten outputs
# ---------------------------------------------------------------------------
UNWRITTEN_CASES = [
    # op, group, frame, stride, padding, channels_last, B, H
    ("lift_conv", "C4", "view", 1, 1, False, 2, 5),
    ("lift_conv", "D4", "canonical", 2, 0, True, 1, 6),
    ("lift_conv", "C8", "view", 1, "same", False, 1, 5),
    ("group_conv", "C4", "view", 1, 0, True, 2, 5),
    ("group_conv", "D2", "canonical", 2, 1, False, 1, 6),
    ("group_conv", "C8", "canonical", 1, 1, False, 1, 4),
]


def _check_fully_written(target, case, mode):
    device, backend = split_target(target)
    op, group, frame, stride, padding, cl, B, H = case
    x, w, b = problem(op, group, B=B, H=H, channels_last=cl, device=device)
    kw = dict(group=group, frame=frame, stride=stride, padding=padding)
    skip_if_refused(backend, op, x, w, b, **kw)
    n = groups.get(group).order
    numels = [B * n * w.shape[0] * H * H, x.numel(), w.numel()]
    if mode == "allocator":
        ctx = contextlib.nullcontext()
    else:
        ctx = nan_fill_uninitialized()
    with ctx:
        pin = poison_allocator(*numels, device=device)
        out = call(op, x, w, b, backend, **kw)
        assert_fully_written(f"{backend} {op} output", out)
        pin = poison_allocator(*numels, device=device)
        _, gx, gw, gb = grads(op, x, w, b, backend, **kw)
        del pin
    for name, g in (("grad_x", gx), ("grad_weight", gw), ("grad_bias", gb)):
        assert_fully_written(f"{backend} {op} {name}", g)


@pytest.mark.parametrize("mode", ["allocator", "nan_fill"])
@pytest.mark.parametrize("case", UNWRITTEN_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}-s{c[3]}-p{c[4]}-cl{int(c[5])}")
@pytest.mark.parametrize("target", TARGETS)
def test_outputs_fully_written(target, case, mode):
    _check_fully_written(target, case, mode)


def _broken_backend(leave_unwritten):
    """A backend that forgets to write the last output element (or not): checks the checker."""
    mod = types.ModuleType("equifast_test_broken_backend")
    mod.NAME = "broken"
    mod.INDEX_BITS = 64
    mod.availability = lambda device: (True, "")
    mod.supports = lambda plan, x, weight: (True, "")

    def fwd(kind):
        def run(inp, weight, bias, plan):
            ref = getattr(backends.module("reference"), kind + "_forward")(inp, weight, bias, plan)
            out = torch.empty(ref.shape, dtype=ref.dtype, device=ref.device)
            flat, src = out.view(-1), ref.contiguous().view(-1)
            stop = flat.numel() - 1 if leave_unwritten else flat.numel()
            flat[:stop] = src[:stop]
            return out
        return run
    mod.lift_conv_forward, mod.group_conv_forward = fwd("lift_conv"), fwd("group_conv")
    return mod


@pytest.mark.parametrize("leave_unwritten", [True, False])
def test_unwritten_output_detector_works(monkeypatch, leave_unwritten):
    """The NaN-fill detector flags a backend that leaves one element unwritten (and only that)."""
    monkeypatch.setitem(backends.MODULES, "broken", "equifast_test_broken_backend")
    monkeypatch.setitem(backends._registry._loaded, "broken", _broken_backend(leave_unwritten))
    case = ("lift_conv", "C4", "view", 1, 1, False, 2, 5)
    if leave_unwritten:
        with pytest.raises(AssertionError, match="NaN for NaN-free inputs"):
            _check_fully_written("broken", case, "nan_fill")
    else:
        _check_fully_written("broken", case, "nan_fill")


def test_allocator_poisoning_reaches_empty():
    """On this platform freed NaN memory is what the next empty() of that size returns (else the
    'allocator' mode of test_outputs_fully_written proves less, and the 'nan_fill' mode carries it)."""
    hits = 0
    for numel in (1000, 4096, 60000):
        pin = poison_allocator(numel)  # noqa: F841
        hits += bool(torch.isnan(torch.empty(numel)).all())
    if hits == 0:
        pytest.skip("the CPU allocator here does not hand freed NaN memory back to empty(); nan_fill mode covers it")
    assert hits >= 1


# ---------------------------------------------------------------------------
# NaN / Inf propagation
# ---------------------------------------------------------------------------
def _nonfinite_problem(op, group, dtype=torch.float32, device="cpu"):
    x, w, b = problem(op, group, B=2, C_in=2, C_out=2, H=6, dtype=dtype, seed=3, device=device)
    if op == "lift_conv":
        x[0, 0, 0, 0] = NAN        # pixel 0: the placeholder index of taps outside the image
        x[1, 1, 2, 3] = INF
        x[1, 0, 4, 1] = -INF
        x[0, 1, 5, 5] = INF
    else:
        x[0, 0, 0, 0, 0] = NAN
        x[1, 1, 1, 2, 3] = INF
        x[1, -1, 0, 4, 1] = -INF
        x[0, 2, 1, 5, 5] = INF
    return x, w, b


def _dependency_mask(op, x, w, **kw):
    """The outputs that read a non-finite input through a non-zero weight: conv2d's semantics."""
    ind = (~torch.isfinite(x)).to(torch.float64)
    return call(op, ind, w.abs().to(torch.float64) + 1, None, "reference", **kw) > 0


@pytest.mark.parametrize("frame", FRAMES)
@pytest.mark.parametrize("group", ["C4", "D4", "C8"])
@pytest.mark.parametrize("op", OPS)
def test_reference_nonfinite_follow_dependencies(op, group, frame):
    """The oracle itself: exactly the outputs that depend on a NaN/Inf input are non-finite.
    (Regression: interpolated groups read taps outside the image as 0 * x[0], so a NaN in pixel 0
    made every output with such a tap NaN; fixed in groups.tap_sum.)"""
    x, w, b = _nonfinite_problem(op, group, torch.float64)
    kw = dict(group=group, frame=frame, padding=1)
    for backend in ("reference", "torch"):
        out = call(op, x, w, b, backend, **kw)
        dep = _dependency_mask(op, x, w, **kw)
        wrong = (~torch.isfinite(out)) ^ dep
        assert not bool(wrong.any()), (f"{backend}: {int(wrong.sum())} outputs are non-finite without reading a "
                                       f"non-finite input (or the reverse)")


@pytest.mark.parametrize("frame", FRAMES)
@pytest.mark.parametrize("group", ["C4", "D4", "C8"])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("target", TARGETS)
def test_nonfinite_propagate_like_conv2d(target, op, group, frame):
    device, backend = split_target(target)
    x, w, b = _nonfinite_problem(op, group, device=device)
    kw = dict(group=group, frame=frame, padding=1)
    skip_if_refused(backend, op, x, w, b, **kw)
    out, gx, gw, gb = (None if t is None else t.cpu() for t in grads(op, x, w, b, backend, **kw))
    x, w, b = x.cpu(), w.cpu(), b.cpu()
    out_ref, gx_ref, gw_ref, gb_ref = grads(op, x, w, b, "reference", **kw)
    # a backend that changes basis along the group axis (fourier) mixes an Inf of one copy into every
    # coefficient, so ±Inf may come back as NaN (inf - inf): exactly the same elements are non-finite
    same = assert_same_nonfinite if backend in MIXES_COPIES else assert_same_masks
    same(f"{backend} {op} output", out, out_ref)
    assert_same_masks(f"{backend} {op} output vs dependencies", ~torch.isfinite(out) * 1.0,
                      _dependency_mask(op, x, w, **kw) * 1.0)
    same(f"{backend} {op} grad_x", gx, gx_ref)
    same(f"{backend} {op} grad_weight", gw, gw_ref)
    same(f"{backend} {op} grad_bias", gb, gb_ref)
    finite = torch.isfinite(out_ref)
    torch.testing.assert_close(out[finite], out_ref[finite], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------
# empty batches and 1x1 images
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("target", TARGETS)
def test_empty_batch(target, op, channels_last):
    device, backend = split_target(target)
    x, w, b = problem(op, "C4", B=0, H=5, channels_last=channels_last, device=device)
    skip_if_refused(backend, op, x, w, b, padding=1)
    xr, wr, br = (t.detach().clone().requires_grad_() for t in (x, w, b))
    out = call(op, xr, wr, br, backend, padding=1)
    assert out.shape == (0, 4, 3, 5, 5)
    assert is_channels_last(out) == is_channels_last(x) or out.numel() == 0
    out.sum().backward()
    assert xr.grad.shape == x.shape and wr.grad.shape == w.shape and br.grad.shape == b.shape
    assert not bool(wr.grad.any()) and not bool(br.grad.any()), "an empty batch must give zero weight/bias grads"


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("target", TARGETS)
def test_zero_output_channels(target, op):
    device, backend = split_target(target)
    x, w, b = problem(op, "C4", B=2, C_out=0, H=5, device=device)
    skip_if_refused(backend, op, x, w, b, padding=1)
    out, gx, gw, gb = grads(op, x, w, b, backend, padding=1)
    assert out.shape == (2, 4, 0, 5, 5)
    assert gx.shape == x.shape and not bool(gx.any()), "no output channel: grad_x must be zero"
    assert gw.shape == w.shape and gb.shape == b.shape


@pytest.mark.parametrize("B", [0, 1])
def test_empty_batch_still_checks_the_requested_backend(B):
    """An explicitly requested backend that cannot run the call is an error for B = 0 as for B = 1
    (regression: an empty input returned zeros before the backend was resolved)."""
    x, w, b = problem("lift_conv", "C8", B=B, H=5)
    with pytest.raises(RuntimeError, match="backend 'cuda' is not available on cpu"):
        call("lift_conv", x, w, b, "cuda")
    for name in BACKENDS:
        reason = refused(name, "lift_conv", x, w, group="C8")
        if reason:
            with pytest.raises(RuntimeError, match=f"backend '{name}' does not support this call"):
                call("lift_conv", x, w, b, name, group="C8")


ONE_BY_ONE = [
    # group, frame, k, stride, padding
    ("C4", "view", 1, 1, 0),
    ("C4", "canonical", 3, 1, 1),
    ("D4", "view", 3, 1, "same"),
    ("C8", "view", 3, 2, 1),
    ("C8", "canonical", 1, 1, 0),
    ("D2", "canonical", 3, 1, 2),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", ONE_BY_ONE, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("target", TARGETS)
def test_one_by_one_images(target, op, case, dtype):
    device, backend = split_target(target)
    group, frame, k, stride, padding = case
    x, w, b = problem(op, group, B=2, H=1, k=k, dtype=dtype, device=device)
    kw = dict(group=group, frame=frame, stride=stride, padding=padding)
    skip_if_refused(backend, op, x, w, b, **kw)
    got = [t.cpu() for t in grads(op, x, w, b, backend, **kw)]
    ref = grads(op, x.cpu(), w.cpu(), b.cpu(), "reference", **kw)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    for name, r, g in zip(("output", "grad_x", "grad_weight", "grad_bias"), ref, got):
        torch.testing.assert_close(g, r, rtol=tol, atol=tol, msg=lambda m: f"{backend} {op} {name}: {m}")


# ---------------------------------------------------------------------------
# sizes past 2^31 elements
# ---------------------------------------------------------------------------
def _big(*shape, device="cpu"):
    """An expanded stride-0 tensor: any numel, 4 bytes of memory."""
    return torch.zeros((), device=device).expand(*shape)


BIG_CASES = {
    # name: (op, group, x shape, weight shape) -- one of input / output / weight past 2^31 elements
    "input": ("lift_conv", "C4", (1, 1, 46341, 46341), (1, 1, 1, 1)),
    "output": ("lift_conv", "C4", (1, 1, 1024, 1024), (2048, 1, 1, 1)),
    "weight": ("lift_conv", "C1", (1, 65536, 1, 1), (32769, 65536, 1, 1)),
    "stack": ("group_conv", "C4", (1, 4, 1, 23171, 23171), (1, 4, 1, 1, 1)),
    "stack-output": ("group_conv", "D4", (1, 8, 1, 128, 128), (16385, 8, 1, 1, 1)),
}


def test_limits_helper():
    for name, (op, group, x_shape, w_shape) in BIG_CASES.items():
        x, w = _big(*x_shape), _big(*w_shape)
        plan = make_plan(group, 1, 0, 1, "view", 1, 1, op)
        assert "2^31" in _limits.int32_reason(plan, x, w), name
        # the registry refuses it for a backend with 32-bit offsets, and only for one
        narrow, wide = types.SimpleNamespace(INDEX_BITS=32), types.SimpleNamespace(INDEX_BITS=64)
        narrow.supports = wide.supports = lambda *args: (True, "")
        assert backends.supports(narrow, plan, x, w) == (False, _limits.int32_reason(plan, x, w)), name
        assert backends.supports(wide, plan, x, w) == (True, ""), name
    x, w = torch.zeros(2, 3, 8, 8), torch.zeros(4, 3, 3, 3)
    assert _limits.int32_reason(make_plan("C4", 1, 0, 1, "view", 3, 3, "lift_conv"), x, w) == ""
    # only the per-sample part counts: a batch past 2^31 elements in all fits
    x = _big(2 ** 14, 16, 64, 64)                  # 2^34 elements, 2^16 per sample
    assert _limits.int32_reason(make_plan("C4", 1, 0, 1, "view", 1, 1, "lift_conv"), x, _big(1, 16, 1, 1)) == ""
    # a sliced view addresses past its numel
    base = torch.zeros(4)
    assert _limits.extent(base[::3]) == 4 and _limits.extent(base[1:2]) == 2


def test_every_backend_declares_its_index_bits():
    for name in backends.NAMES:
        mod = backends.module(name)
        if mod is not None:
            assert mod.INDEX_BITS in (32, 64), name


@pytest.mark.parametrize("case", sorted(BIG_CASES))
@pytest.mark.parametrize("target", KERNEL_TARGETS)
def test_int32_guard_before_any_kernel(target, case):
    """A kernel backend refuses > 2^31-element calls in supports() (nothing allocated, no kernel
    launched: backends.resolve calls supports() first), unless it declares 64-bit offsets."""
    device, backend = split_target(target)
    op, group, x_shape, w_shape = BIG_CASES[case]
    x, w = _big(*x_shape, device=device), _big(*w_shape, device=device)
    small = refused(backend, op, _big(*x_shape[:-2], 4, 4, device=device), _big(1, *w_shape[1:], device=device),
                    group=group)
    if small:   # the backend does not take this op or group at any size (e.g. fourier and lift_conv)
        pytest.skip(f"backend {backend!r} refuses this op at any size: {small}")
    reason = refused(backend, op, x, w, group=group)
    if reason:  # refused up front: the reason must say why, and the explicit call must raise it
        assert any(t in reason for t in ("2^31", "2**31", "int32", "32-bit", str(2 ** 31 - 1))), reason
        with pytest.raises(RuntimeError, match=f"backend '{backend}' does not support this call"):
            call(op, x, w, None, backend, group=group)
        return
    mod = backends.module(backend)
    assert mod.INDEX_BITS == 64, (f"backend {backend!r} with INDEX_BITS = {mod.INDEX_BITS} accepts a call whose "
                                  f"{case} has more than 2^31 elements (x {list(x.shape)}, weight {list(w.shape)})")
    pytest.skip(f"backend {backend!r} accepts it with 64-bit offsets (INDEX_BITS = 64); the real size needs a GPU "
                f"or > 8 GB: test_large_tensor_gpu")


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("backend", CUDA_BACKENDS or ["torch"])
def test_large_tensor_gpu(backend):
    """The real size on a GPU: a lift over an input of 2^31 + 4633 elements (fp16, 4.3 GB) either
    matches the exact answer (64-bit offsets) or fails with a clear error before any kernel runs."""
    H = 46341
    x = torch.randn(1, 1, H, H, device="cuda", dtype=torch.float16)
    w = torch.full((1, 1, 1, 1), 0.5, device="cuda", dtype=torch.float16)
    try:
        out = equifast.lift_conv(x, w, group="C4", backend=backend)
    except RuntimeError as exc:  # a clear refusal, raised before any kernel ran
        assert any(s in str(exc) for s in ("2^31", "32-bit", "too large")), exc
        return
    torch.cuda.synchronize()
    for g in range(4):  # out[:, g] = rot90(x, -g) * w  (view frame, act(x, g^-1))
        expected = torch.rot90(x[0, 0], -g, dims=(-2, -1)) * 0.5
        assert torch.equal(out[0, g, 0], expected), f"{backend}: copy {g} differs past 2^31 elements"
        del expected


# ---------------------------------------------------------------------------
# determinism
# ---------------------------------------------------------------------------
DET_CASES = [("lift_conv", "C4", "view", False), ("lift_conv", "C8", "canonical", True),
             ("group_conv", "D4", "view", True), ("group_conv", "C8", "canonical", False)]


@pytest.mark.parametrize("case", DET_CASES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("target", TARGETS)
def test_forward_bitwise_reproducible(target, case):
    device, backend = split_target(target)
    op, group, frame, cl = case
    x, w, b = problem(op, group, B=2, H=6, channels_last=cl, device=device)
    kw = dict(group=group, frame=frame, padding=1)
    skip_if_refused(backend, op, x, w, b, **kw)
    first = call(op, x, w, b, backend, **kw)
    for _ in range(2):
        pin = poison_allocator(first.numel(), device=device)  # noqa: F841
        again = call(op, x, w, b, backend, **kw)
        assert bitwise_equal(first, again), f"{backend} {op}: forward differs between identical calls"
        assert again.stride() == first.stride()


@pytest.mark.parametrize("case", DET_CASES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("target", TARGETS)
def test_backward_reproducible_in_deterministic_mode(target, case):
    device, backend = split_target(target)
    op, group, frame, cl = case
    x, w, b = problem(op, group, B=2, H=6, channels_last=cl, device=device)
    kw = dict(group=group, frame=frame, padding=1)
    skip_if_refused(backend, op, x, w, b, **kw)
    runs = []
    with deterministic():
        for _ in range(2):
            try:
                runs.append(grads(op, x, w, b, backend, **kw))
            except RuntimeError as exc:  # allowed, as PyTorch's own non-deterministic ops do
                assert "deterministic" in str(exc), f"{backend}: unclear error in deterministic mode: {exc}"
                with deterministic(warn_only=True), pytest.warns(UserWarning, match="deterministic"):
                    grads(op, x, w, b, backend, **kw)
                return
    for name, a, c in zip(("output", "grad_x", "grad_weight", "grad_bias"), *runs):
        assert bitwise_equal(a, c), f"{backend} {op}: {name} differs between identical deterministic runs"


# ---------------------------------------------------------------------------
# bad input: the same clear error from every backend
# ---------------------------------------------------------------------------
def _bad_inputs():
    f = torch.float32
    return {
        "x-ndim": ("lift_conv", torch.zeros(3, 5, 5), torch.zeros(2, 3, 3, 3), None, {}, ValueError, "x of shape"),
        "channels": ("lift_conv", torch.zeros(1, 3, 5, 5), torch.zeros(2, 4, 3, 3), None, {}, ValueError, "C_in=4"),
        "non-square": ("lift_conv", torch.zeros(1, 3, 5, 6), torch.zeros(2, 3, 3, 3), None, {}, ValueError, "square"),
        "empty-output": ("lift_conv", torch.zeros(1, 3, 2, 2), torch.zeros(2, 3, 3, 3), None, {}, ValueError,
                         "output size would be empty"),
        "group-order": ("group_conv", torch.zeros(1, 3, 2, 5, 5), torch.zeros(2, 4, 2, 3, 3), None, {}, ValueError,
                        "order 4"),
        "weight-order": ("group_conv", torch.zeros(1, 4, 2, 5, 5), torch.zeros(2, 3, 2, 3, 3), None, {}, ValueError,
                         "weight has group axis"),
        "bias-shape": ("lift_conv", torch.zeros(1, 3, 5, 5), torch.zeros(2, 3, 3, 3), torch.zeros(3), {},
                       ValueError, "bias"),
        "dtype-mix": ("lift_conv", torch.zeros(1, 3, 5, 5), torch.zeros(2, 3, 3, 3, dtype=torch.float64), None, {},
                      TypeError, "dtype"),
        "int-dtype": ("lift_conv", torch.zeros(1, 3, 5, 5, dtype=torch.int32), torch.zeros(2, 3, 3, 3, dtype=torch.int32),
                      None, {}, TypeError, "unsupported dtype"),
        "device-mix": ("lift_conv", torch.zeros(1, 3, 5, 5), torch.zeros(2, 3, 3, 3, device="meta"), None, {},
                       ValueError, "device|on meta"),
        "stride-0": ("lift_conv", torch.zeros(1, 3, 5, 5, dtype=f), torch.zeros(2, 3, 3, 3), None, {"stride": 0},
                     ValueError, "stride"),
        "same-strided": ("lift_conv", torch.zeros(1, 3, 5, 5), torch.zeros(2, 3, 3, 3), None,
                         {"stride": 2, "padding": "same"}, ValueError, "same"),
        "padding-str": ("lift_conv", torch.zeros(1, 3, 5, 5), torch.zeros(2, 3, 3, 3), None, {"padding": "full"},
                        ValueError, "padding"),
        "frame": ("lift_conv", torch.zeros(1, 3, 5, 5), torch.zeros(2, 3, 3, 3), None, {"frame": "rotated"},
                  ValueError, "frame"),
        "group-name": ("lift_conv", torch.zeros(1, 3, 5, 5), torch.zeros(2, 3, 3, 3), None, {"group": "SO2"},
                       ValueError, "unknown group"),
        "canonical-nonsquare-kernel": ("group_conv", torch.zeros(1, 4, 2, 5, 5), torch.zeros(2, 4, 2, 3, 1), None,
                                       {"frame": "canonical"}, ValueError, "square kernel"),
    }


@pytest.mark.parametrize("name", sorted(_bad_inputs()))
@pytest.mark.parametrize("backend", BACKENDS + ["auto"])
def test_bad_input_same_clear_error(backend, name):
    op, x, w, b, kw, exc, pattern = _bad_inputs()[name]
    with pytest.raises(exc, match=pattern) as info:
        call(op, x, w, b, backend, **kw)
    assert op in str(info.value) or "group" in str(info.value)


def test_unknown_backend_and_env_override(monkeypatch):
    x, w, b = problem("lift_conv", "C4")
    with pytest.raises(ValueError, match="unknown backend 'fastest'"):
        call("lift_conv", x, w, b, "fastest")
    monkeypatch.setenv(backends.ENV_VAR, "nope")
    with pytest.raises(ValueError, match=backends.ENV_VAR):
        call("lift_conv", x, w, b, "auto")
    for name in BACKENDS:
        monkeypatch.setenv(backends.ENV_VAR, name)
        if refused(name, "lift_conv", x, w):
            continue
        torch.testing.assert_close(call("lift_conv", x, w, b, "auto"), call("lift_conv", x, w, b, "reference"),
                                   rtol=1e-5, atol=1e-5)
