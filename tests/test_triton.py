"""The Triton backend against the reference backend.

On CPU the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1 without CUDA), so
shapes are tiny; the tests marked ``gpu`` use realistic shapes and bfloat16 and run on a CUDA device.

Tolerances: float32 to ~1e-5 relative to the largest reference value; float16 by flash-attention's
rule: the kernel's error against the float32 reference is at most twice PyTorch's own error (the
reference backend, i.e. conv2d, run at float16) against the same float32 reference, plus a small atol.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import equifast
from equifast import backends, groups

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"

pytestmark = pytest.mark.skipif(
    not backends.availability("triton", DEVICE)[0],
    reason=f"triton backend unavailable: {backends.availability('triton', DEVICE)[1]}")

EXACT = ("C1", "C2", "C4", "D1", "D2", "D4")
FRAMES = ("view", "canonical")


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def _op(kind):
    return equifast.lift_conv if kind == "lift" else equifast.group_conv


def _make(kind, group, B=2, C_in=3, C_out=5, H=7, W=7, k=(3, 3), dtype=torch.float32,
          device=DEVICE, channels_last=False, bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n = groups.get(group).order
    if kind == "lift":
        x = torch.randn(B, C_in, H, W, generator=gen)
        w = torch.randn(C_out, C_in, *k, generator=gen) / (C_in * k[0] * k[1]) ** 0.5
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
    else:
        x = torch.randn(B, n, C_in, H, W, generator=gen)
        w = torch.randn(C_out, n, C_in, *k, generator=gen) / (n * C_in * k[0] * k[1]) ** 0.5
        if channels_last:
            x = x.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2)
    b = torch.randn(C_out, generator=gen) if bias else None
    cast = lambda t: None if t is None else t.to(device=device, dtype=dtype)
    return cast(x), cast(w), cast(b)


def _run(kind, x, w, b, backend, grad_out=None, **kw):
    """Forward and (x, weight, bias) gradients for ``grad_out`` (default: fixed random)."""
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (x, w, b)]
    if kind == "lift":
        leaves[0] = leaves[0].detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
    y = _op(kind)(leaves[0], leaves[1], leaves[2], backend=backend, **kw)
    if grad_out is None:
        grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y)
    wanted = [t for t in leaves if t is not None]
    grads = torch.autograd.grad(y, wanted, grad_out.to(y.dtype))
    return y, list(grads), grad_out


def _rel_err(a, ref):
    return ((a.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-6)).item()


def _check_fp32(kind, x, w, b, **kw):
    yt, gt, go = _run(kind, x, w, b, "triton", **kw)
    yr, gr, _ = _run(kind, x, w, b, "reference", grad_out=go, **kw)
    assert yt.shape == yr.shape and yt.dtype == yr.dtype
    names = ["out", "grad_x", "grad_weight", "grad_bias"]
    for name, a, r in zip(names, [yt] + gt, [yr] + gr):
        assert a.shape == r.shape, name
        assert _rel_err(a, r) < 2e-5, f"{name}: relative error {_rel_err(a, r):.3g}"
    return yt, gt


def _check_half(kind, x, w, b, dtype=torch.float16, **kw):
    """flash-attention's rule against the float32 reference of the same inputs."""
    f32 = lambda t: None if t is None else t.float()
    yt, gt, go = _run(kind, x, w, b, "triton", **kw)
    y32, g32, _ = _run(kind, f32(x), f32(w), f32(b), "reference", grad_out=go.float(), **kw)
    yh, gh, _ = _run(kind, x, w, b, "reference", grad_out=go, **kw)
    assert yt.dtype == dtype and all(g.dtype == dtype for g in gt)
    for name, a, r, h in zip(["out", "grad_x", "grad_weight", "grad_bias"], [yt] + gt, [y32] + g32, [yh] + gh):
        err = (a.float() - r).abs().max().item()
        torch_err = (h.float() - r).abs().max().item()
        atol = 2e-4 * max(r.abs().max().item(), 1.0)
        assert err <= 2 * torch_err + atol, f"{name}: error {err:.3g} vs PyTorch's {torch_err:.3g} (atol {atol:.3g})"


# ---------------------------------------------------------------------------
# forward + backward against the reference, every exact group and an interpolated one
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("frame", FRAMES)
@pytest.mark.parametrize("group", EXACT + ("C8",))
@pytest.mark.parametrize("kind", ["lift", "group"])
def test_matches_reference(kind, group, frame):
    H, W = (7, 7) if groups.get(group).quarter_turns or kind == "group" else (6, 8)
    big = kind == "group" and groups.get(group).order == 8        # keep the interpreter fast
    x, w, b = _make(kind, group, B=1 if big else 2, H=H, W=W, C_in=2 if big else 3)
    _check_fp32(kind, x, w, b, group=group, frame=frame, padding=1)


CONV_ARGS = [
    dict(stride=2, padding=1),
    dict(stride=(2, 1), padding=(2, 0), dilation=(1, 2)),
    dict(padding="same", dilation=2),
    dict(k=(2, 2), padding="same"),                 # even kernel: asymmetric "same" padding
    dict(k=(4, 4), padding=(0, 2, 1, 3)),           # explicit (top, bottom, left, right)
    dict(k=(3, 3), stride=3, padding="valid"),
]


@pytest.mark.parametrize("args", CONV_ARGS, ids=lambda a: "-".join(f"{k}{v}" for k, v in a.items()))
@pytest.mark.parametrize("frame", FRAMES)
@pytest.mark.parametrize("kind", ["lift", "group"])
def test_conv_arguments(kind, frame, args):
    args = dict(args)
    k = args.pop("k", (3, 3))
    group = "D4" if kind == "lift" else "C4"
    x, w, b = _make(kind, group, H=8, W=8, k=k, C_in=2, C_out=3)
    _check_fp32(kind, x, w, b, group=group, frame=frame, **args)


@pytest.mark.parametrize("frame", FRAMES)
@pytest.mark.parametrize("kind", ["lift", "group"])
def test_non_square_input_and_kernel(kind, frame):
    """D2 (no quarter turns): non-square images and kernels, strides along one axis."""
    x, w, b = _make(kind, "D2", H=5, W=9, k=(2, 3), C_in=2, C_out=3)
    _check_fp32(kind, x, w, b, group="D2", frame=frame, stride=(1, 2), padding=(1, 2))


@pytest.mark.parametrize("kind", ["lift", "group"])
def test_interpolated_odd_order(kind):
    """C3: bilinear taps of the sampling table, stride and padding."""
    x, w, b = _make(kind, "C3", H=7, W=7, C_in=2, C_out=3, k=(3, 3))
    for frame in FRAMES:
        _check_fp32(kind, x, w, b, group="C3", frame=frame, stride=2, padding=2)


def test_custom_group_pixel_permutation():
    """A custom exact group given by a pixel permutation (upside-down flip) goes through the tables."""
    name = "flipud_triton_test"
    if name in groups.names():
        g = groups.get(name)
    else:
        def action(e, H, W):
            idx = torch.arange(H * W).reshape(H, W)
            return (idx.flip(0) if e else idx).reshape(-1)
        g = groups.custom(name, [[0, 1], [1, 0]], action, exact=True)
    for kind in ("lift", "group"):
        x, w, b = _make(kind, "C2", H=5, W=6, C_in=2, C_out=3)
        for frame in FRAMES:
            _check_fp32(kind, x, w, b, group=g, frame=frame, padding=(1, 0, 2, 1))


# ---------------------------------------------------------------------------
# dtypes and layouts
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("group,frame", [("C4", "view"), ("D4", "canonical"), ("C8", "view"), ("C8", "canonical")])
@pytest.mark.parametrize("kind", ["lift", "group"])
def test_float16(kind, group, frame):
    x, w, b = _make(kind, group, dtype=torch.float16, B=1 if kind == "group" else 2,
                    C_in=2 if kind == "group" else 3, C_out=4)
    _check_half(kind, x, w, b, group=group, frame=frame, padding=1, stride=(1, 2) if frame == "view" else 1)


@pytest.mark.parametrize("frame", FRAMES)
@pytest.mark.parametrize("kind", ["lift", "group"])
@pytest.mark.parametrize("group", ["C4", "D2"])
def test_channels_last(kind, group, frame):
    x, w, b = _make(kind, group, channels_last=True, C_in=4, C_out=3)
    from equifast._layout import is_channels_last
    assert is_channels_last(x)
    yt, gt = _check_fp32(kind, x, w, b, group=group, frame=frame, padding=1, stride=2)
    assert is_channels_last(yt), "output of a channels_last input must be channels_last"
    assert is_channels_last(gt[0]), "grad input must keep the input's layout"


def test_group_conv_strided_input_view():
    """A permuted view of a field-major [B, C, n, H, W] tensor is read through its strides."""
    x = torch.randn(2, 3, 4, 6, 6).to(DEVICE)
    s = x.permute(0, 2, 1, 3, 4)                    # [B, n, C, H, W], neither layout
    _, w, b = _make("group", "C4", C_in=3, C_out=2, H=6, W=6)
    for frame in FRAMES:
        _check_fp32("group", s, w, b, group="C4", frame=frame, padding=1)


@pytest.mark.parametrize("kind,group,frame", [("lift", "C4", "view"), ("group", "D2", "canonical"),
                                              ("lift", "C8", "canonical")])
def test_split_k_weight_gradient(kind, group, frame, monkeypatch):
    """The GPU path splits the weight-gradient reduction into float32 partials; force it here."""
    _common = importlib.import_module("equifast.backends.triton._common")
    monkeypatch.setattr(_common, "split_k", lambda tiles, reduction, device: 3)
    x, w, b = _make(kind, group, B=2, H=12, W=12, C_in=2, C_out=3)         # 288 output rows: 3 splits
    _check_fp32(kind, x, w, b, group=group, frame=frame, padding=1)
    if kind == "lift":
        _check_half(kind, x.half(), w.half(), b.half(), group=group, frame=frame, padding=1)


@pytest.mark.parametrize("kind", ["lift", "group"])
def test_zero_size_batch(kind):
    x, w, b = _make(kind, "C4", B=0)
    for frame in FRAMES:
        yt, gt, _ = _run(kind, x, w, b, "triton", group="C4", frame=frame, padding=1)
        yr, gr, _ = _run(kind, x, w, b, "reference", group="C4", frame=frame, padding=1)
        assert yt.shape == yr.shape and yt.shape[0] == 0
        for a, r in zip(gt, gr):
            assert a.shape == r.shape and torch.equal(a, r)


def test_no_bias_and_partial_grads():
    x, w, _ = _make("lift", "C4", bias=False)
    xr = x.clone().requires_grad_(True)
    y = equifast.lift_conv(xr, w, group="C4", backend="triton", padding=1)          # weight frozen
    (gx,) = torch.autograd.grad(y, xr, torch.ones_like(y))
    yr = equifast.lift_conv(xr, w, group="C4", backend="reference", padding=1)
    (gxr,) = torch.autograd.grad(yr, xr, torch.ones_like(yr))
    assert _rel_err(gx, gxr) < 2e-5
    s, wg, _ = _make("group", "C4", bias=False, C_in=2, C_out=3)                    # input frozen
    grads = []
    for backend in ("triton", "reference"):
        wr = wg.clone().requires_grad_(True)
        y = equifast.group_conv(s, wr, group="C4", frame="canonical", backend=backend, padding=1)
        grads.append(torch.autograd.grad(y, wr, torch.ones_like(y))[0])
    assert _rel_err(*grads) < 2e-5


# ---------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("group", ["C4", "D4"])
def test_equivariance_view_lift(group):
    """lift(g·x) == g·lift(x) for every element (exact groups: to float rounding)."""
    G = groups.get(group)
    x, w, b = _make("lift", group, B=1, H=7, W=7)
    y = equifast.lift_conv(x, w, b, group=group, backend="triton", padding=1)
    for g in range(G.order):
        lhs = equifast.lift_conv(G.act(x, g), w, b, group=group, backend="triton", padding=1)
        assert torch.allclose(lhs, G.act_regular(y, g), atol=1e-5, rtol=1e-5), g


def test_deterministic_backward():
    """No atomics: the backward is bitwise reproducible, also under deterministic mode."""
    x, w, b = _make("group", "D2", C_in=3, C_out=3)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        _, g1, go = _run("group", x, w, b, "triton", group="D2", padding=1)
        _, g2, _ = _run("group", x, w, b, "triton", grad_out=go, group="D2", padding=1)
    finally:
        torch.use_deterministic_algorithms(prev)
    assert all(torch.equal(a, c) for a, c in zip(g1, g2))


@pytest.mark.parametrize("kind", ["lift", "group"])
def test_opcheck(kind):
    """torch.library.opcheck (schema, fake kernel, autograd registration) through the triton backend."""
    x, w, b = _make(kind, "C4", B=1, C_in=2, C_out=3, H=5, W=5)
    op = torch.ops.equifast.lift_conv.default if kind == "lift" else torch.ops.equifast.group_conv.default
    for frame in FRAMES:
        torch.library.opcheck(op, (x, w, b, "C4", [1, 1], [1, 1, 1, 1], [1, 1], frame, "triton"))


@settings(max_examples=10)
@given(data=st.data())
def test_random_configs(data):
    """Random shapes, kernels, strides, paddings and dilations, exact groups, both ops and frames."""
    kind = data.draw(st.sampled_from(["lift", "group"]))
    group = data.draw(st.sampled_from(EXACT))
    frame = data.draw(st.sampled_from(FRAMES))
    square = groups.get(group).quarter_turns
    kh = data.draw(st.integers(1, 4))
    kw = kh if square and frame == "canonical" else data.draw(st.integers(1, 4))
    H = data.draw(st.integers(4, 9))
    W = H if square and kind == "lift" and frame == "view" else data.draw(st.integers(4, 9))
    stride = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
    dilation = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)))
    padding = tuple(data.draw(st.integers(0, 2)) for _ in range(4))
    pt, pb, pl, pr = padding
    assume(H + pt + pb >= dilation[0] * (kh - 1) + 1 and W + pl + pr >= dilation[1] * (kw - 1) + 1)
    x, w, b = _make(kind, group, B=data.draw(st.integers(1, 2)), C_in=data.draw(st.integers(1, 4)),
                    C_out=data.draw(st.integers(1, 4)), H=H, W=W, k=(kh, kw),
                    channels_last=data.draw(st.booleans()), bias=data.draw(st.booleans()))
    _check_fp32(kind, x, w, b, group=group, frame=frame, stride=stride, padding=padding, dilation=dilation)


# ---------------------------------------------------------------------------
# backend module contract
# ---------------------------------------------------------------------------
def test_backend_contract():
    mod = backends.module("triton")
    assert mod is not None and mod.NAME == "triton"
    assert backends.availability("triton", DEVICE) == (True, "")
    ok, reason = mod.availability(torch.device("mps"))
    assert not ok and reason
    plan = equifast._args.make_plan("C4", 1, 0, 1, "view", 3, 3, "lift_conv")
    w = torch.empty(4, 3, 3, 3, device="meta")
    assert mod.supports(plan, torch.empty(2, 3, 8, 8, device="meta"), w)[0]
    ok, reason = mod.supports(plan, torch.empty(2, 3, 8, 8, dtype=torch.float64, device="meta"), w)
    assert not ok and "float64" in reason
    huge = torch.empty(2 ** 15, 3, 2 ** 9, 2 ** 9, device="meta")                  # B*H*W = 2^33
    ok, reason = backends.supports(mod, plan, huge, w)   # INDEX_BITS = 32: the registry refuses it
    assert not ok and "2^31" in reason
    huge = torch.empty(1, 3, 2 ** 15, 2 ** 15, device="meta")                     # one sample > 2^31
    ok, reason = backends.supports(mod, plan, huge, w)
    assert not ok and "2^31" in reason


@pytest.mark.skipif(CUDA, reason="CPU-only behaviour")
def test_cpu_needs_interpreter_and_no_bfloat16(monkeypatch):
    mod = backends.module("triton")
    plan = equifast._args.make_plan("C4", 1, 0, 1, "view", 3, 3, "lift_conv")
    ok, reason = mod.supports(plan, torch.empty(1, 3, 8, 8, dtype=torch.bfloat16), torch.empty(2, 3, 3, 3))
    assert not ok and "bfloat16" in reason
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    ok, reason = mod.availability(torch.device("cpu"))
    assert not ok and "TRITON_INTERPRET" in reason


def test_import_is_lazy():
    """import equifast imports neither the backend nor its kernel modules (so nothing is compiled)."""
    code = ("import sys, equifast; "
            "bad = [m for m in sys.modules if m.startswith('equifast.backends.triton') or m == 'triton']; "
            "print(bad); assert not bad")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


# ---------------------------------------------------------------------------
# GPU: realistic shapes, bfloat16, autotuned configs (skipped without CUDA)
# ---------------------------------------------------------------------------
GPU_SHAPES = [
    ("lift", "C4", dict(B=16, C_in=1, C_out=32, H=28, W=28), dict(padding=1)),                 # paper MNIST
    ("lift", "D4", dict(B=8, C_in=3, C_out=64, H=32, W=32), dict(padding=1)),                  # CIFAR D4
    ("lift", "C4", dict(B=2, C_in=3, C_out=64, H=224, W=224, k=(7, 7)), dict(stride=2, padding=3)),  # stem
    ("lift", "C8", dict(B=4, C_in=3, C_out=32, H=33, W=33, k=(5, 5)), dict(padding=2)),
    ("group", "C4", dict(B=8, C_in=32, C_out=32, H=32, W=32), dict(padding=1)),                # group_conv C4
    ("group", "D4", dict(B=4, C_in=16, C_out=24, H=17, W=17), dict(stride=2, padding=1)),
]


@pytest.mark.gpu
@pytest.mark.parametrize("frame", FRAMES)
@pytest.mark.parametrize("case", GPU_SHAPES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2].get('H')}")
def test_gpu_float32(case, frame):
    kind, group, shape, args = case
    x, w, b = _make(kind, group, device="cuda", **shape)
    prev = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False          # ieee float32 in both the kernel and cuDNN
    try:
        _check_fp32(kind, x, w, b, group=group, frame=frame, **args)
    finally:
        torch.backends.cudnn.allow_tf32 = prev


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("frame", FRAMES)
@pytest.mark.parametrize("case", GPU_SHAPES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2].get('H')}")
def test_gpu_half(case, frame, dtype):
    kind, group, shape, args = case
    x, w, b = _make(kind, group, device="cuda", dtype=dtype, **shape)
    _check_half(kind, x, w, b, dtype=dtype, group=group, frame=frame, **args)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["lift", "group"])
def test_gpu_channels_last_bfloat16(kind):
    x, w, b = _make(kind, "C4", device="cuda", dtype=torch.bfloat16, channels_last=True,
                    B=4, C_in=16, C_out=32, H=32, W=32)
    _check_half(kind, x, w, b, dtype=torch.bfloat16, group="C4", padding=1)


@pytest.mark.gpu
def test_gpu_auto_picks_triton_and_compiles():
    x, w, b = _make("lift", "C4", device="cuda", B=4, C_in=3, C_out=16, H=16, W=16)
    assert backends.resolve("auto", equifast._args.make_plan("C4", 1, 1, 1, "view", 3, 3, "lift_conv"),
                            x, w, "lift_conv").NAME == "triton"
    f = torch.compile(lambda x: equifast.lift_conv(x, w, b, group="C4", padding=1), fullgraph=True)
    assert torch.allclose(f(x), equifast.lift_conv(x, w, b, group="C4", padding=1, backend="reference"),
                          atol=1e-2, rtol=1e-2)
