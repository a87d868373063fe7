"""What is specific to the compiled CPU kernels (backend "cpu", ops equifast_C::*): the kernel-level
ops (opcheck, empty batch, table validation), every instruction set of the GEMM, thread-count
independence, refusals and ``auto``'s rule, the missing-extension path, and the CUDA backward's index
maths emulated on CPU. Agreement with the reference over groups, frames, dtypes, layouts and
convolution arguments (and gradcheck, opcheck of the public ops, empty batch) is
tests/test_conformance.py (target "cpu-cpu").

Skipped, with the reason, when equifast._C is not built (``make build``; ``make test`` builds it)."""
import warnings

import pytest
import torch

import equifast
from equifast import groups
from helpers import OPS, forward_backward, make_problem

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from equifast.backends import _compiled as ext
    _OK, _REASON = ext.load()
if not _OK:
    pytest.skip(f"equifast._C is not available: {_REASON}", allow_module_level=True)

from equifast.backends import cpu as cpu_backend  # noqa: E402


def _problem(op, group, H, W, k, kw, B=2, C_in=3, C_out=5, dtype=torch.float64, seed=0, bias=True):
    return make_problem(op, group, B=B, C_in=C_in, C_out=C_out, H=H, W=W, k=k, kw=kw, bias=bias, dtype=dtype,
                        seed=seed)


@pytest.mark.parametrize("op", OPS)
def test_kernel_entry_points_take_an_empty_batch(op):
    """The backend's entry points (below the public op, which returns early) handle B = 0."""
    prob = _problem(op, "C4", 6, 6, 3, 3, B=0)
    plan = equifast._args.make_plan("C4", 1, 1, 1, "view", 3, 3, op)
    y = getattr(cpu_backend, op + "_forward")(prob[0], prob[1], None, plan)
    assert y.shape == (0, 4, 5, 6, 6)
    gx, gw, gb = getattr(cpu_backend, op + "_backward")(y, prob[0], prob[1], plan, (True, True, False))
    assert gx.shape == prob[0].shape and gw.shape == prob[1].shape and gb is None


@pytest.mark.parametrize("op", OPS)
def test_opcheck_kernel_ops(op):
    group = groups.get("D4")
    plan = equifast._args.make_plan(group, (2, 1), (1, 0, 1, 1), 1, "view", 3, 3, op)
    x, w, b = _problem(op, "D4", 7, 7, 3, 3, B=2, C_in=2, C_out=3)
    if op == "lift_conv":
        xperm, kperm = ext.lift_tables(plan, 7, 7, 3, 3, "cpu")
        args = (x, w, b, xperm, kperm, 8, [2, 1], [1, 0, 1, 1], [1, 1])
        out = torch.ops.equifast_C.lift_conv(*args)
        bw_args = (torch.randn_like(out), x, w, xperm, kperm, 8, [2, 1], [1, 0, 1, 1], [1, 1], [True, True])
    else:
        slot, kperm = ext.group_tables(plan, 3, 3, "cpu")
        args = (x, w, b, slot, kperm, [2, 1], [1, 0, 1, 1], [1, 1])
        out = torch.ops.equifast_C.group_conv(*args)
        bw_args = (torch.randn_like(out), x, w, slot, kperm, [2, 1], [1, 0, 1, 1], [1, 1], [True, False])
    torch.library.opcheck(getattr(torch.ops.equifast_C, op).default, args)
    torch.library.opcheck(getattr(torch.ops.equifast_C, op + "_backward").default, bw_args)


def test_interpolated_groups_refused_and_auto_falls_back():
    x, w, b = _problem("lift_conv", "C8", 7, 7, 3, 3, dtype=torch.float32)
    plan = equifast._args.make_plan("C8", 1, 1, 1, "view", 3, 3, "lift_conv")
    ok, reason = cpu_backend.supports(plan, x, w)
    assert not ok and "interpolates" in reason and "C8" in reason
    with pytest.raises(RuntimeError, match="interpolates"):
        equifast.lift_conv(x, w, b, group="C8", backend="cpu")
    torch.testing.assert_close(equifast.lift_conv(x, w, b, group="C8", padding=1),
                               equifast.lift_conv(x, w, b, group="C8", padding=1, backend="reference"),
                               rtol=1e-5, atol=1e-5)


def test_dtype_refused_with_reason():
    x, w, _ = _problem("lift_conv", "C4", 7, 7, 3, 3, dtype=torch.bfloat16)
    plan = equifast._args.make_plan("C4", 1, 1, 1, "view", 3, 3, "lift_conv")
    ok, reason = cpu_backend.supports(plan, x, w)
    assert not ok and "bfloat16" in reason


@pytest.mark.parametrize("op, C_in, expected", [("lift_conv", 1, "cpu"), ("lift_conv", 4, "cpu"),
                                                ("lift_conv", 5, "torch"), ("group_conv", 2, "torch")])
def test_auto_picks_cpu_for_small_lifting(op, C_in, expected):
    """auto follows the measured rule (bench/results/cpu-2026-11-23-1thread): lifting with C_in <= 4."""
    from equifast import backends
    x, w, _ = _problem(op, "C4", 28, 28, 3, 3, C_in=C_in, C_out=8, dtype=torch.float32)
    plan = equifast._args.make_plan("C4", 1, 1, 1, "view", 3, 3, op)
    assert backends.resolve("auto", plan, x, w, op).NAME == expected
    assert "cpu" in equifast.available_backends("cpu")


def test_deterministic_and_thread_count_independent():
    x, w, b = _problem("group_conv", "D4", 8, 8, 3, 3, B=3, C_in=3, C_out=6, dtype=torch.float32)
    threads = torch.get_num_threads()
    try:
        results = []
        for nt in (1, max(2, threads)):
            torch.set_num_threads(nt)
            results.append(forward_backward("group_conv", x, w, b, group="D4", padding=1, backend="cpu"))
            results.append(forward_backward("group_conv", x, w, b, group="D4", padding=1, backend="cpu"))
    finally:
        torch.set_num_threads(threads)
    for out, grads in results[1:]:
        assert torch.equal(out, results[0][0])
        for got, want in zip(grads, results[0][1]):
            assert torch.equal(got, want)


def test_kernel_rejects_bad_tables():
    x = torch.randn(1, 1, 4, 4)
    w = torch.randn(2, 1, 3, 3)
    bad = torch.zeros(4, 16, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="permutation"):
        torch.ops.equifast_C.lift_conv(x, w, None, bad, torch.empty(0, dtype=torch.int64), 4, [1, 1], [1, 1, 1, 1],
                                       [1, 1])
    with pytest.raises(RuntimeError, match="pixel permutation table"):
        torch.ops.equifast_C.lift_conv(x, w, None, bad[:, :5], torch.empty(0, dtype=torch.int64), 4, [1, 1],
                                       [1, 1, 1, 1], [1, 1])


def test_missing_extension_warns_once_and_reports_unavailable(monkeypatch):
    import importlib as _importlib
    real = _importlib.import_module

    def fake_import(name, *a, **k):
        if name == "equifast._C":
            raise ModuleNotFoundError("No module named 'equifast._C'")
        return real(name, *a, **k)

    monkeypatch.setattr(ext, "_state", None)
    monkeypatch.setattr(ext.importlib, "import_module", fake_import)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok, reason = cpu_backend.availability(torch.device("cpu"))
        cpu_backend.availability(torch.device("cpu"))
        ext.load()
    assert not ok and "not built" in reason and "make build" in reason
    assert len([c for c in caught if "equifast._C" in str(c.message)]) == 1


_ISA_SCRIPT = r"""
import sys, torch, equifast
from equifast.backends import cpu
cap = sys.argv[1]
isa = cpu.isa()
assert (isa == "baseline") if cap == "baseline" else (isa != "avx512") if cap == "avx2" else True, (cap, isa)
torch.manual_seed(0)
# full register tiles and ragged ones, several K blocks and position chunks, channels_last, stride 2
cases = [("group_conv", "C4", dict(B=2, C=9, Co=40, H=26, k=3, stride=1, padding=1)),
         ("lift_conv", "D4", dict(B=2, C=3, Co=33, H=30, k=5, stride=2, padding=2)),
         ("lift_conv", "C4", dict(B=3, C=1, Co=32, H=28, k=3, stride=1, padding=1))]
for op, group, s in cases:
    n = equifast.groups.get(group).order
    for dtype in (torch.float32, torch.float64):
        for cl in (False, True):
            shape = (s["B"], s["C"], s["H"], s["H"]) if op == "lift_conv" else (s["B"], n, s["C"], s["H"], s["H"])
            x = torch.randn(shape, dtype=dtype)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else \
                    x.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2)
            wshape = (s["Co"], s["C"], s["k"], s["k"]) if op == "lift_conv" else (s["Co"], n, s["C"], s["k"], s["k"])
            w = torch.randn(wshape, dtype=dtype)
            b = torch.randn(s["Co"], dtype=dtype)
            res = []
            for backend in ("reference", "cpu"):
                xs, ws, bs = (t.clone().requires_grad_(True) for t in (x, w, b))
                out = getattr(equifast, op)(xs, ws, bs, group=group, stride=s["stride"], padding=s["padding"],
                                            backend=backend)
                gy = torch.linspace(-1, 1, out.numel(), dtype=dtype).reshape(out.shape)
                out.backward(gy)
                res.append([out.detach(), xs.grad, ws.grad, bs.grad])
            tol = dict(rtol=1e-4, atol=1e-3) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-9)
            for got, want in zip(res[1], res[0]):
                torch.testing.assert_close(got, want, **tol)
# group_mix: full and ragged vector steps and row passes, strided planes, accumulate
for dtype in (torch.float32, torch.float64):
    for R, G, P, Q in [(5, 4, 3, 70), (11, 8, 2, 1030), (4, 16, 9, 32), (1, 1, 1, 3)]:
        t = torch.randn(R, G, dtype=dtype)
        src = torch.randn(P, G, Q + 2, dtype=dtype)
        inputs = list(src[:, :, 1:Q + 1].unbind(1))
        dst = torch.randn(P, R, Q, dtype=dtype)
        for accumulate in (False, True):
            out = dst.clone()
            torch.ops.equifast_C.group_mix(t, inputs, list(out.unbind(1)), accumulate)
            want = torch.einsum("rg,pgq->prq", t, src[:, :, 1:Q + 1]) + (dst if accumulate else 0)
            torch.testing.assert_close(out, want, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-5)
print("ok", isa)
"""


@pytest.mark.parametrize("cap", ["native", "avx2", "baseline"])
def test_every_instruction_set_matches_reference(cap):
    """The GEMM copies (AVX-512, AVX2, baseline; picked once per process, so each runs in its own
    subprocess) against the reference on shapes with full and ragged tiles, several K blocks and
    position chunks, both layouts, stride 2, float32 and float64, forward and backward; and the
    group-axis mix (``group_mix``) of each copy against einsum."""
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    env.pop("EQUIFAST_CPU_ISA", None)
    if cap != "native":
        env["EQUIFAST_CPU_ISA"] = cap
    proc = subprocess.run([sys.executable, "-c", _ISA_SCRIPT, cap], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok")


# ---------------------------------------------------------------------------- group_mix
def _mix_want(t, inputs, before, accumulate):
    return [(b if accumulate else 0) + sum(t[r, g] * x for g, x in enumerate(inputs)) for r, b in enumerate(before)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_group_mix_matches_the_sum(dtype, threads):
    """outputs[r] (=, +=) Σ_g t[r, g] inputs[g] on planes read in place: strided copies of one tensor,
    separate tensors, short rows (channels_last planes [B*H*W, C]) and long ones, many tasks."""
    torch.manual_seed(0)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for R, G, P, Q in [(5, 4, 8, 32 * 9 * 9), (23, 16, 8 * 7 * 7, 32), (3, 2, 1, 1), (12, 8, 5, 3000)]:
            t = torch.randn(R, G, dtype=dtype)
            stack = torch.randn(P, G, Q, dtype=dtype)
            for inputs in (list(stack.unbind(1)), [torch.randn(P, Q, dtype=dtype) for _ in range(G)]):
                for accumulate in (False, True):
                    base = torch.randn(R, P, Q + 3, dtype=dtype)
                    outputs = list(base[:, :, :Q].unbind(0))
                    before = [o.clone() for o in outputs]
                    padding = base[:, :, Q:].clone()
                    torch.ops.equifast_C.group_mix(t, inputs, outputs, accumulate)
                    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
                    for got, want in zip(outputs, _mix_want(t, inputs, before, accumulate)):
                        torch.testing.assert_close(got, want, **tol)
                    assert torch.equal(base[:, :, Q:], padding)   # the columns past Q were not written
    finally:
        torch.set_num_threads(old)


def test_group_mix_leaves_other_columns_and_empty_planes_alone():
    t = torch.randn(2, 3)
    base = torch.zeros(2, 4, 10)
    torch.ops.equifast_C.group_mix(t, [torch.ones(4, 7)] * 3, list(base[:, :, 2:9].unbind(0)), False)
    assert base[:, :, :2].abs().sum() == 0 and base[:, :, 9:].abs().sum() == 0
    torch.testing.assert_close(base[:, :, 2:9], t.sum(1)[:, None, None].expand(2, 4, 7))
    torch.ops.equifast_C.group_mix(t, [torch.ones(0, 5)] * 3, [torch.empty(0, 5)] * 2, False)   # P = 0
    torch.ops.equifast_C.group_mix(torch.empty(0, 3), [torch.ones(4, 5)] * 3, [], False)        # R = 0


@pytest.mark.parametrize("args, match", [
    (lambda: (torch.randn(2, 3), [torch.randn(4, 5)] * 2, [torch.empty(4, 5)] * 2), "one column per input"),
    (lambda: (torch.randn(2, 2), [torch.randn(4, 5), torch.randn(4, 6)], [torch.empty(4, 5)] * 2),
     r"inputs\[1\] must be a \[4, 5\] plane"),
    (lambda: (torch.randn(2, 2), [torch.randn(4, 5)] * 2, [torch.empty(4, 5, dtype=torch.float64)] * 2),
     r"outputs\[0\] must be a CPU tensor of t's dtype"),
    (lambda: (torch.randn(2, 2), [torch.randn(5, 4).t()] * 2, [torch.empty(4, 5)] * 2), "unit column stride"),
    (lambda: (torch.randn(2, 2), [torch.randn(4, 5)] * 2, [torch.empty(5).expand(4, 5)] * 2), "overlapping rows"),
    (lambda: (torch.randn(2, 2, dtype=torch.float16), [torch.randn(4, 5)] * 2, [torch.empty(4, 5)] * 2),
     "float32 or float64"),
])
def test_group_mix_rejects_bad_planes(args, match):
    t, inputs, outputs = args()
    with pytest.raises(RuntimeError, match=match):
        torch.ops.equifast_C.group_mix(t, inputs, outputs, False)
