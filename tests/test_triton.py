"""What is specific to the Triton backend: split-K weight gradients, the interpreter on CPU, lazy
import, the backend module's contract, determinism, and on a GPU realistic shapes, bfloat16 and
torch.compile. Its agreement with the reference over groups, frames, dtypes, layouts and convolution
arguments (and opcheck, empty batch, gradient masks) is tests/test_conformance.py (targets
"triton-cpu" under the interpreter, "triton-cuda" on a GPU); random configurations are in
tests/test_fuzz.py.

On CPU the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1 without CUDA), so
shapes are tiny; the tests marked ``gpu`` use realistic shapes and bfloat16 and run on a CUDA device.
Tolerances are those of tests/helpers.py: float32 ~1e-5 against the float64 reference; float16 /
bfloat16 flash-attention's rule (error against the float32 reference at most twice PyTorch's own).
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest
import torch

import equifast
from equifast import backends, groups
from helpers import check_low_precision, check_matches_reference, forward_backward, to_channels_last

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"

pytestmark = pytest.mark.skipif(
    not backends.availability("triton", DEVICE)[0],
    reason=f"triton backend unavailable: {backends.availability('triton', DEVICE)[1]}")

FRAMES = ("view", "canonical")


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def _op(kind):
    return "lift_conv" if kind == "lift" else "group_conv"


def _make(kind, group, B=2, C_in=3, C_out=5, H=7, W=7, k=(3, 3), dtype=torch.float32,
          device=DEVICE, channels_last=False, bias=True, seed=0):
    """Weights scaled by 1/sqrt(fan-in), as in a network (keeps half-precision results in range)."""
    gen = torch.Generator().manual_seed(seed)
    n = groups.get(group).order
    if kind == "lift":
        x = torch.randn(B, C_in, H, W, generator=gen)
        w = torch.randn(C_out, C_in, *k, generator=gen) / (C_in * k[0] * k[1]) ** 0.5
    else:
        x = torch.randn(B, n, C_in, H, W, generator=gen)
        w = torch.randn(C_out, n, C_in, *k, generator=gen) / (n * C_in * k[0] * k[1]) ** 0.5
    if channels_last:
        x = to_channels_last(x)
    b = torch.randn(C_out, generator=gen) if bias else None
    cast = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
    return cast(x), cast(w), cast(b)


def _check_fp32(kind, x, w, b, **kw):
    return check_matches_reference("triton", _op(kind), x, w, b, **kw)


def _check_half(kind, x, w, b, **kw):
    check_low_precision("triton", _op(kind), x, w, b, **kw)


# ---------------------------------------------------------------------------
# split-K
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind,group,frame", [("lift", "C4", "view"), ("group", "D2", "canonical"),
                                              ("lift", "C8", "canonical")])
def test_split_k_weight_gradient(kind, group, frame, monkeypatch):
    """The GPU path splits the weight-gradient reduction into float32 partials; force it here
    (3 splits of 2 images: each image split into 2 row bands)."""
    _common = importlib.import_module("equifast.backends.triton._common")
    monkeypatch.setattr(_common, "split_k", lambda tiles, reduction, device: 3)
    x, w, b = _make(kind, group, B=2, H=12, W=12, C_in=2, C_out=3)         # 288 output rows: 3 splits
    _check_fp32(kind, x, w, b, group=group, frame=frame, padding=1)
    if kind == "lift":
        _check_half(kind, x.half(), w.half(), b.half(), group=group, frame=frame, padding=1)


# ---------------------------------------------------------------------------
# deep inputs: channels-innermost copy and the tap walks
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind,group,frame,stride,copies", [
    ("lift", "C4", "view", 1, 3),        # forward: x; input gradient: grad_out; weight gradient: x (grad_out reused)
    ("lift", "D4", "canonical", 2, 2),   # canonical forward (n·C_out columns): none
    ("group", "C4", "view", 1, 2),       # forward, input gradient (n·C_in columns): none; weight gradient: s, grad_out
    ("group", "D2", "canonical", 2, 2)])
def test_deep_contiguous_input(kind, group, frame, stride, copies, monkeypatch):
    """C_in >= 32, contiguous, float16: the channels_last copies the static model asks for happen
    (and no others), stride 2 runs the four phase launches, results match the reference and keep
    the input's layout."""
    F = importlib.import_module("equifast.backends.triton._forward")
    made = []
    copy = F.channels_last_copy
    monkeypatch.setattr(F, "channels_last_copy", lambda t: made.append(t.shape) or copy(t))
    x, w, b = _make(kind, group, B=1, H=5, W=5, C_in=32, C_out=32, dtype=torch.float16)
    out, _ = forward_backward(_op(kind), x, w, b, backend="triton", group=group, frame=frame, padding=1,
                              stride=stride)
    assert len(made) == copies and out.is_contiguous()
    _check_half(kind, x, w, b, group=group, frame=frame, padding=1, stride=stride)


def _swap_pairs_group():
    """An exact custom group whose pixel permutation is no affine map of (p, q)."""
    def action(e, H, W):
        perm = torch.arange(H * W)
        if e == 1:
            perm[[0, 5, 2, 11]] = perm[[5, 0, 11, 2]]
        return perm
    name = "swap_pairs_triton_test"
    return groups.get(name) if name in groups.names() else groups.custom(name, [[0, 1], [1, 0]], action)


@pytest.mark.parametrize("stride", [1, 2])
def test_view_lift_of_a_non_affine_exact_group(stride):
    """Views that are no affine map go through the gather pre-pass (forward, weight gradient) and the
    float32 buffer + adjoint gather (input gradient)."""
    group = _swap_pairs_group()
    x, w, b = _make("lift", "C1", B=2, H=4, W=4)
    _check_fp32("lift", x, w, b, group=group, frame="view", padding=1, stride=stride)


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
        _, g1 = forward_backward("group_conv", x, w, b, backend="triton", group="D2", padding=1)
        _, g2 = forward_backward("group_conv", x, w, b, backend="triton", group="D2", padding=1)
    finally:
        torch.use_deterministic_algorithms(prev)
    assert all(torch.equal(a, c) for a, c in zip(g1, g2))


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
    _check_fp32(kind, x, w, b, group=group, frame=frame, **args)   # the oracle is float64: no TF32


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("frame", FRAMES)
@pytest.mark.parametrize("case", GPU_SHAPES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2].get('H')}")
def test_gpu_half(case, frame, dtype):
    kind, group, shape, args = case
    x, w, b = _make(kind, group, device="cuda", dtype=dtype, **shape)
    _check_half(kind, x, w, b, group=group, frame=frame, **args)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["lift", "group"])
def test_gpu_channels_last_bfloat16(kind):
    x, w, b = _make(kind, "C4", device="cuda", dtype=torch.bfloat16, channels_last=True,
                    B=4, C_in=16, C_out=32, H=32, W=32)
    _check_half(kind, x, w, b, group="C4", padding=1)


@pytest.mark.gpu
def test_gpu_auto_picks_triton_and_compiles():
    x, w, b = _make("lift", "C4", device="cuda", B=4, C_in=3, C_out=16, H=16, W=16)
    assert backends.resolve("auto", equifast._args.make_plan("C4", 1, 1, 1, "view", 3, 3, "lift_conv"),
                            x, w, "lift_conv").NAME == "triton"
    f = torch.compile(lambda x: equifast.lift_conv(x, w, b, group="C4", padding=1), fullgraph=True)
    assert torch.allclose(f(x), equifast.lift_conv(x, w, b, group="C4", padding=1, backend="reference"),
                          atol=1e-2, rtol=1e-2)
