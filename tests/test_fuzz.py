"""Property-based fuzzing of the public API (``equifast.lift_conv`` / ``equifast.group_conv``).

For random shapes, strides, paddings (int / pair / 4-tuple / "same" / "valid"), dilations, groups
(every exact one and the interpolated C8), frames, dtypes, input / weight / grad_out memory layouts
(contiguous, channels_last, sliced non-contiguous views, expanded stride-0 views, the field-major
permuted stack) and bias / no bias, every backend present
(``equifast.available_backends("cpu")``, at collection time):

* agrees with the oracle (the reference backend in float64 on contiguous copies), forward and
  backward, element-wise within ``tol · bound`` where ``bound`` is the same convolution of the
  absolute values (the sum of |terms| each output adds up: a rounding-error bound that stays
  meaningful under cancellation); float32 tol 1e-5, float64 1e-12;
* float16 / bfloat16: error against the float32 reference at most 2x PyTorch conv2d's own error
  (the reference backend run in float16) plus a small atol: the rule of flash-attention's tests;
* returns the promised layout (channels_last for a channels_last input, contiguous otherwise);
* or raises the same error type as the oracle (invalid cases are generated too), or refuses the
  case in ``supports()`` with a clear RuntimeError when that backend is requested explicitly.

Triton runs in its interpreter on CPU (TRITON_INTERPRET=1): fewer examples, tiny shapes.
Run more examples with HYPOTHESIS_PROFILE=thorough.
"""
import os
import zlib

import pytest
import torch
from hypothesis import Phase, event, given, note, seed, settings
from hypothesis import strategies as st

import equifast
from equifast import backends, groups
from equifast._args import make_plan
from equifast._layout import empty_stack, is_channels_last

BACKENDS = equifast.available_backends("cpu")
# every CPU backend, plus every CUDA backend as "cuda:<name>" on a GPU machine (oracle on CPU)
TARGETS = list(BACKENDS) + ([f"cuda:{b}" for b in equifast.available_backends("cuda") if b != "reference"]
                            if torch.cuda.is_available() else [])


def split_target(target):
    return tuple(target.split(":")) if ":" in target else ("cpu", target)
GROUPS = ("C1", "C2", "C4", "D1", "D2", "D4", "C8")   # every exact group and one interpolated
FRAMES = ("view", "canonical")
INTERPRETED = {"triton"} if os.environ.get("TRITON_INTERPRET") == "1" else set()
PROFILE_EXAMPLES = settings().max_examples            # 25 under the "ci" profile


def examples(backend, share):
    """Examples per test: ``share`` of the profile's max_examples (a test is one backend x op x
    group, so the ci profile's 25 become ~6 per group), a quarter of that for interpreted Triton."""
    n = max(4, round(PROFILE_EXAMPLES * share))
    return max(2, n // 4) if backend in INTERPRETED else n


# interpreted kernels: no shrinking (a minute per failing test); the failure report prints the case
PHASES_INTERPRETED = (Phase.explicit, Phase.reuse, Phase.generate)


def stable_seed(*parts):
    """One hypothesis seed per (op, group): every backend sees the same cases, groups differ
    (nested @given functions have the same source, so derandomize alone would repeat them)."""
    return zlib.crc32("/".join(map(str, parts)).encode())


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------
def _pair_or_int(lo, hi):
    return st.one_of(st.integers(lo, hi), st.tuples(st.integers(lo, hi), st.integers(lo, hi)))


@st.composite
def conv_case(draw, op, group=None, dtypes=(torch.float32, torch.float64), tiny=False):
    group = group or draw(st.sampled_from(GROUPS))
    G = groups.get(group)
    n = G.order
    frame = draw(st.sampled_from(FRAMES))
    kmax = 2 if tiny else 3
    kh = draw(st.integers(1, kmax))
    square_kernel = G.quarter_turns and frame == "canonical"
    kw = kh if square_kernel or draw(st.booleans()) else draw(st.integers(1, kmax))
    stride = draw(_pair_or_int(1, 2))
    dilation = draw(st.one_of(st.just(1), _pair_or_int(1, 2)))
    pad_kind = draw(st.sampled_from(["int", "pair", "quad", "same", "valid"]))
    if pad_kind == "same" and stride not in (1, (1, 1)):
        pad_kind = "valid"
    padding = {"int": st.integers(0, 2), "pair": st.tuples(st.integers(0, 2), st.integers(0, 2)),
               "quad": st.tuples(*[st.integers(0, 2)] * 4), "same": st.just("same"),
               "valid": st.just("valid")}[pad_kind]
    padding = draw(padding)
    plan = make_plan(group, stride, padding, dilation, frame, kh, kw, op)
    pt, pb, pl, pr = plan.padding
    (dh, dw) = plan.dilation
    hmin = max(1, dh * (kh - 1) + 1 - pt - pb)
    wmin = max(1, dw * (kw - 1) + 1 - pl - pr)
    span = 3 if tiny else 5
    H = draw(st.integers(hmin, hmin + span))
    W = draw(st.integers(wmin, wmin + span))
    if G.quarter_turns and op == "lift_conv" and frame == "view":
        H = W = max(H, W)
    B = draw(st.integers(1, 2))
    if not tiny and draw(st.integers(0, 7)) == 3:
        B = 0
    C_in = draw(st.integers(1, 2 if tiny else 3))
    C_out = draw(st.integers(1, 2 if tiny else 3))
    # a small share of invalid calls: every backend must raise what the oracle raises
    # ~1 in 6 calls invalid, ~1 in 8 with an empty batch (hypothesis favours the ends of a range,
    # hence the middle values)
    defect = draw(st.sampled_from(["channels", "empty-output", "non-square", "order"])) \
        if draw(st.integers(0, 5)) == 2 else None
    return dict(
        op=op, group=group, frame=frame, kh=kh, kw=kw, stride=stride, padding=padding, dilation=dilation,
        B=B, C_in=C_in, C_out=C_out, H=H, W=W, n=n, bias=draw(st.booleans()),
        dtype=draw(st.sampled_from(dtypes[:1] if tiny else dtypes)),  # interpreted: float32 only
        x_layout=draw(st.sampled_from(["contiguous", "channels_last", "sliced", "expanded"]
                                      + (["field_major"] if op == "group_conv" else ["permuted"]))),
        w_layout=draw(st.sampled_from(["contiguous", "contiguous", "permuted", "sliced"])),
        go_layout=draw(st.sampled_from(["contiguous", "channels_last", "sliced", "expanded"])),
        defect=defect, seed=draw(st.integers(0, 2 ** 16)),
    )


# ---------------------------------------------------------------------------
# building tensors in a layout
# ---------------------------------------------------------------------------
def _randn(gen, *shape, dtype=torch.float64, device="cpu"):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)


def in_layout(values, layout, gen):
    """A tensor equal to ``values`` (contiguous) in the requested memory layout, same dtype."""
    shape = values.shape
    if layout == "contiguous":
        return values.clone()
    if layout == "channels_last":
        if values.dim() == 4:
            return values.contiguous(memory_format=torch.channels_last)
        return empty_stack(shape, True, dtype=values.dtype, device=values.device).copy_(values)
    if layout == "sliced":  # every other element of the last dim, offset by one channel-like row
        big = _randn(gen, *shape[:-1], 2 * shape[-1] + 1, dtype=values.dtype, device=values.device)
        view = big[..., 1::2]
        view.copy_(values)
        return view
    if layout == "permuted":  # last dims first in memory
        order = list(range(values.dim()))[::-1]
        inverse = [order.index(i) for i in range(values.dim())]
        return values.permute(*order).contiguous().permute(*inverse)
    if layout == "field_major":  # a [B, C, n, H, W] tensor seen as [B, n, C, H, W]
        return values.transpose(1, 2).contiguous().transpose(1, 2)
    raise ValueError(layout)


def expanded_like(shape, gen, dtype, device="cpu"):
    """A stride-0 expanded tensor of ``shape`` (batch and last dim broadcast)."""
    small = list(shape)
    small[0] = 1
    small[-1] = 1
    return _randn(gen, *small, dtype=dtype, device=device).expand(*shape)


def make_inputs(case, device="cpu"):
    gen = torch.Generator().manual_seed(case["seed"])
    op, n, B, C_in, C_out = case["op"], case["n"], case["B"], case["C_in"], case["C_out"]
    H, W, kh, kw = case["H"], case["W"], case["kh"], case["kw"]
    x_shape = [B, C_in, H, W] if op == "lift_conv" else [B, n, C_in, H, W]
    w_shape = [C_out, C_in, kh, kw] if op == "lift_conv" else [C_out, n, C_in, kh, kw]
    defect = case["defect"]
    if defect == "channels":
        w_shape[-3] += 1
    elif defect == "empty-output":
        x_shape[-2] = max(1, min(x_shape[-2], kh - 1))
        x_shape[-1] = max(1, min(x_shape[-1], kw - 1))
        w_shape[-2], w_shape[-1] = kh + 2, kw + 2
        case["padding"] = 0
        case["dilation"] = 1
    elif defect == "non-square":
        x_shape[-1] = x_shape[-2] + 1
    elif defect == "order" and op == "group_conv":
        x_shape[1] = n + 1
    dtype = case["dtype"]
    if case["x_layout"] == "expanded":
        x = expanded_like(x_shape, gen, dtype, device)
    else:
        x = in_layout(_randn(gen, *x_shape, dtype=dtype, device=device), case["x_layout"], gen)
    w = in_layout(_randn(gen, *w_shape, dtype=dtype, device=device), case["w_layout"], gen)
    b = in_layout(_randn(gen, C_out, dtype=dtype, device=device),
                  "sliced" if case["w_layout"] == "sliced" else "contiguous", gen) if case["bias"] else None
    return x, w, b


def make_grad_out(shape, dtype, layout, gen, device="cpu"):
    if layout == "expanded":
        return expanded_like(shape, gen, dtype, device)
    return in_layout(_randn(gen, *shape, dtype=dtype, device=device), layout, gen)


# ---------------------------------------------------------------------------
# running and comparing
# ---------------------------------------------------------------------------
def conv_kwargs(case):
    return dict(group=case["group"], frame=case["frame"], stride=case["stride"], padding=case["padding"],
                dilation=case["dilation"])


def run(case, backend, x, w, b, grad_out_fn):
    """(output, [grad_x, grad_w, grad_b]) of one call; the inputs keep their layouts (a detached
    view is a leaf with the same strides, stride-0 and sliced ones included)."""
    leaves = [None if t is None else t.detach().requires_grad_() for t in (x, w, b)]
    out = getattr(equifast, case["op"])(*leaves, backend=backend, **conv_kwargs(case))
    grad_out = grad_out_fn(out)
    grads = list(torch.autograd.grad(out, [t for t in leaves if t is not None], grad_out))
    return out.detach(), grads + [None] * (3 - len(grads))


def oracle(case, x, w, b, grad_out):
    """The reference backend in float64 on contiguous copies: values and element-wise bounds."""
    d = lambda t: None if t is None else t.detach().cpu().to(torch.float64).contiguous()  # noqa: E731
    x64, w64, b64 = d(x), d(w), d(b)
    go = d(grad_out)
    f = getattr(equifast, case["op"])
    kw = conv_kwargs(case)

    def fb(xx, ww, bb, gg):
        leaves = [None if t is None else t.clone().requires_grad_() for t in (xx, ww, bb)]
        out = f(*leaves, backend="reference", **kw)
        grads = torch.autograd.grad(out, [t for t in leaves if t is not None], gg)
        return out.detach(), list(grads) + [None] * (3 - len(grads))

    out, grads = fb(x64, w64, b64, go)
    # bounds: the same (bi)linear maps applied to absolute values, i.e. the sum of |terms| of every
    # result (interpolation weights are >= 0, so this bounds the interpolated groups too)
    out_abs, grads_abs = fb(x64.abs(), w64.abs(), None if b64 is None else b64.abs(), go.abs())
    return out, grads, out_abs, grads_abs


def assert_within(name, got, ref, bound, tol, ctx):
    assert got.shape == ref.shape, f"{ctx}: {name} has shape {list(got.shape)}, expected {list(ref.shape)}"
    err = (got.detach().cpu().to(torch.float64) - ref).abs()
    allowed = tol * (bound + ref.abs()) + tol * 1e-3 * float(bound.max()) if bound.numel() else bound
    bad = ~(err <= allowed)
    if bool(bad.any()):
        i = tuple(bad.nonzero()[0].tolist())
        raise AssertionError(f"{ctx}: {name} differs from the reference at {int(bad.sum())}/{got.numel()} "
                             f"elements; first {list(i)}: got {float(got[i]):.9g}, reference {float(ref[i]):.9g}, "
                             f"allowed error {float(allowed[i]):.3g} (max |err| {float(err.max()):.3g})")


TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def refusal(backend, case, x, w):
    plan = make_plan(case["group"], case["stride"], case["padding"], case["dilation"], case["frame"],
                     w.shape[-2], w.shape[-1], case["op"])
    ok, reason = backends.supports(backends.module(backend), plan, x, w)
    return "" if ok else (reason or "refused without a reason")


def check_case(target, case):
    device, backend = split_target(target)
    x, w, b = make_inputs(case, device)
    ctx = f"backend={backend} case={ {k: v for k, v in case.items() if k != 'seed'} } seed={case['seed']}"
    note(ctx)
    f = getattr(equifast, case["op"])
    # the oracle decides whether the call is valid
    try:
        d = lambda t: None if t is None else t.detach().cpu().to(torch.float64).contiguous()  # noqa: E731
        f(d(x), d(w), d(b), backend="reference", **conv_kwargs(case))
    except (ValueError, TypeError, RuntimeError) as exc:
        event(f"invalid: {type(exc).__name__}")
        try:
            f(x, w, b, backend=backend, **conv_kwargs(case))
        except type(exc) as mine:
            assert case["op"] in str(mine), f"{ctx}: error does not name the op: {mine}"
            return
        raise AssertionError(f"{ctx}: the reference raises {type(exc).__name__}({exc}) but {backend} does not")
    reason = refusal(backend, case, x, w)
    if reason:
        event(f"refused by {backend}")
        try:
            f(x, w, b, backend=backend, **conv_kwargs(case))
        except RuntimeError as exc:
            assert f"backend '{backend}' does not support this call" in str(exc) and reason in str(exc), exc
            return
        raise AssertionError(f"{ctx}: supports() refuses ({reason}) but the explicit call did not raise")
    event(f"{case['op']} {case['x_layout']} {case['dtype']}")
    gen = torch.Generator().manual_seed(case["seed"] + 1)
    holder = {}

    def grad_out_fn(out):
        holder["go"] = make_grad_out(out.shape, out.dtype, case["go_layout"], gen, out.device)
        return holder["go"]

    out, grads = run(case, backend, x, w, b, grad_out_fn)
    # layout and dtype contract
    assert out.dtype == x.dtype, f"{ctx}: output dtype {out.dtype}"
    if is_channels_last(x):
        assert out.permute(0, 3, 4, 1, 2).is_contiguous(), \
            f"{ctx}: output strides {out.stride()} for a channels_last input (expected a channels_last stack)"
    else:
        assert out.is_contiguous(), f"{ctx}: output strides {out.stride()} for a non-channels_last input"
    ref, ref_grads, out_abs, grad_abs = oracle(case, x, w, b, holder["go"])
    tol = TOL[case["dtype"]]
    assert_within("output", out, ref, out_abs, tol, ctx)
    for name, g, r, bd in zip(("grad_x", "grad_weight", "grad_bias"), grads, ref_grads, grad_abs):
        if r is None:
            assert g is None
            continue
        assert g is not None and g.dtype == x.dtype, f"{ctx}: {name} missing or of dtype {getattr(g, 'dtype', None)}"
        assert_within(name, g, r, bd, tol, ctx)


# ---------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("op", ["lift_conv", "group_conv"])
@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_matches_reference(target, op, group):
    interpreted = target in INTERPRETED  # (a "cuda:triton" target is compiled)

    @seed(stable_seed(op, group))
    @settings(max_examples=examples(target, 0.25), **({"phases": PHASES_INTERPRETED} if interpreted else {}))
    @given(case=conv_case(op, group, tiny=interpreted))
    def prop(case):
        check_case(target, case)

    prop()


def _low_precision_check(target, case):
    """flash-attention's rule: |out16 - ref32| <= 2 |torch16 - ref32| + atol, on every result."""
    device, backend = split_target(target)
    x, w, b = make_inputs(case, device)
    if x.numel() == 0:
        return
    f = getattr(equifast, case["op"])
    kw = conv_kwargs(case)
    reason = refusal(backend, case, x, w)
    if reason:
        event(f"refused by {backend}")
        with pytest.raises(RuntimeError, match=f"backend '{backend}' does not support this call"):
            f(x, w, b, backend=backend, **kw)
        return
    gen = torch.Generator().manual_seed(case["seed"] + 1)
    go_holder = {}

    def grad_out_fn(out):
        if "go" not in go_holder:
            go_holder["go"] = make_grad_out(out.shape, out.dtype, case["go_layout"], gen)  # CPU
        return go_holder["go"].to(device=out.device, dtype=out.dtype)

    def results(bk, xx, ww, bb):
        c = dict(case, dtype=xx.dtype)
        out, grads = run(c, bk, xx, ww, bb, grad_out_fn)
        return [out] + grads

    up = lambda t: None if t is None else t.cpu().float()  # noqa: E731
    cpu = lambda t: None if t is None else t.cpu()  # noqa: E731
    ref32 = results("reference", up(x), up(w), up(b))
    torch16 = results("reference", cpu(x), cpu(w), cpu(b))
    mine = [cpu(t) for t in results(backend, x, w, b)]
    ctx = f"backend={backend} case={case}"
    note(ctx)
    for name, m, t, r in zip(("output", "grad_x", "grad_weight", "grad_bias"), mine, torch16, ref32):
        if r is None:
            continue
        assert m.dtype == case["dtype"], f"{ctx}: {name} dtype {m.dtype}"
        assert torch.isfinite(m).all(), f"{ctx}: {name} has non-finite values"
        err = (m.float() - r).abs().max().item()
        torch_err = (t.float() - r).abs().max().item()
        # small atol: one ulp of the dtype at the result's scale (tiny cases have 1-2 elements, where
        # PyTorch's own error can be 0 by luck)
        atol = torch.finfo(case["dtype"]).eps * r.abs().max().item()
        assert err <= 2 * torch_err + atol, (f"{ctx}: {name} {case['dtype']} error {err:.3g} exceeds 2x PyTorch's "
                                             f"own {case['dtype']} error {torch_err:.3g} + {atol:.2g}")


@pytest.mark.parametrize("op", ["lift_conv", "group_conv"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("target", [t for t in TARGETS if t != "reference"])
def test_fuzz_float16_flash_attention_rule(target, op, dtype):
    @seed(stable_seed(op, dtype))
    @settings(max_examples=examples(target, 0.6 if dtype == torch.float16 else 0.3))
    @given(case=conv_case(op, dtypes=(dtype,), tiny=True).filter(lambda c: c["defect"] is None))
    def prop(case):
        _low_precision_check(target, case)

    prop()


# ---------------------------------------------------------------------------
# regression: PyTorch's CPU float16 convolution (oneDNN) with stride (1, 2) and dilation (1, 2)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_cpu_float16_strided_dilated_conv(backend):
    """torch 2.13's oneDNN float16 conv2d returns garbage for x [1, 2, 5, 5], a 3x3 kernel, stride
    (1, 2), dilation (1, 2) (and segfaults for x [1, 1, 2, 1], 1x1, padding 1: see the subprocess
    check below); the plain-PyTorch backends compute CPU float16 convolutions in float32 instead."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 5, 5, generator=gen)
    w = torch.randn(2, 2, 3, 3, generator=gen)
    kw = dict(group="C2", stride=(1, 2), dilation=(1, 2), backend=backend)
    ref = equifast.lift_conv(x, w, **kw)
    xh, wh = x.half().requires_grad_(), w.half().requires_grad_()
    out = equifast.lift_conv(xh, wh, **kw)
    torch.testing.assert_close(out.float(), ref, rtol=2e-3, atol=2e-2)
    out.float().sum().backward()
    xf, wf = x.clone().requires_grad_(), w.clone().requires_grad_()
    equifast.lift_conv(xf, wf, **kw).sum().backward()
    torch.testing.assert_close(wh.grad.float(), wf.grad, rtol=2e-3, atol=5e-2)
    torch.testing.assert_close(xh.grad.float(), xf.grad, rtol=2e-3, atol=2e-2)


def test_cpu_float16_conv_does_not_crash():
    import subprocess
    import sys
    code = ("import torch, equifast\n"
            "x = torch.randn(1, 1, 2, 1).half(); w = torch.randn(1, 1, 1, 1).half()\n"
            "for b in ('reference', 'torch'):\n"
            "    y = equifast.lift_conv(x, w, group='C2', stride=(1, 2), padding=1, dilation=(1, 2), backend=b)\n"
            "    assert torch.isfinite(y).all()\n"
            "print('ok')\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert run.returncode == 0 and "ok" in run.stdout, (f"float16 lift_conv crashed or failed (rc {run.returncode}): "
                                                         f"{run.stderr[-2000:]}")
