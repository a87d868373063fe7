"""One conformance suite for every backend (torchvision's ``RoIOpTester`` pattern).

``ConvOpTester`` holds the tests; ``TestLiftConv`` and ``TestGroupConv`` run them for each op. Every
test is parametrised over the backends of ``equifast.backends.NAMES`` that are available on each
device present (``helpers.targets``): the CPU backends always, "triton" under the interpreter that
conftest enables without a GPU, the CUDA backends on a GPU machine, and any backend added to NAMES.
The oracle is the reference backend in float64 on contiguous copies (``helpers.oracle``); the
reference backend itself takes part in the tests of properties that are not a comparison with it
(layouts, bias and gradient masks, empty batch, gradcheck, opcheck).

A case that a backend's ``supports()`` refuses (``equifast.backends.supports``) is skipped only
after checking that the explicit call raises a clear "does not support this call" error naming the
reason (``helpers.skip_if_refused``).

Coverage, per op and backend:

* ``test_matches_reference``: every exact group (C1 C2 C4 D1 D2 D4), interpolated ones (C3 C8 D3
  D8), a custom group, both frames, x ``CONFIGS`` (strides, paddings as int / pair / 4-tuple /
  "same" / "valid", dilations, odd / even / non-square kernels, non-square images) x two channel
  shapes, forward and grad input / weight / bias, in float64 where the backend takes it, else float32.
  The Triton interpreter (slow) takes two configs per (group, frame) (one for D8), rotating so that
  every config runs with some group, one sample and one channel shape (smaller problems elsewhere too);
* ``test_dtypes``: float64 (tight), float32 (1e-5), float16 / bfloat16 (flash-attention's rule);
* ``test_layouts``: contiguous, channels_last (output and grad input keep it), strided views of the
  input, weight and bias (sliced; the field-major permuted stack for group_conv), float32 and float64;
* ``test_bias_and_output_mask``: no bias, and only some of input / weight / bias requiring grad;
* ``test_empty_batch``, ``test_gradcheck`` (float64), ``test_opcheck`` (``torch.library.opcheck``).
"""
import os

import pytest
import torch

import equifast
from equifast import groups
from equifast._layout import is_channels_last
from helpers import (EXACT_GROUPS, FRAMES, check_low_precision, check_matches_reference, field_major,
                     forward_backward, grad_out_like, make_problem, oracle, refusal, check_refused,
                     skip_if_refused, sliced, targets, to_channels_last)

pytestmark = pytest.mark.usefixtures("one_thread")

KERNELS = targets()                          # every available backend but the reference
ALL = targets(include_reference=True)        # and the reference, for properties

CUSTOM = "conformance-flipud"               # an exact custom group: upside-down flip


def _flipud(e, H, W):
    idx = torch.arange(H * W).reshape(H, W)
    return (idx.flip(0) if e else idx).reshape(-1)


if CUSTOM not in groups.names():
    groups.custom(CUSTOM, [[0, 1], [1, 0]], _flipud, exact=True)

GROUPS = EXACT_GROUPS + ("C3", "C8", "D3", "D8", CUSTOM)

# (H, W, kh, kw, stride, padding, dilation); images / kernels are made square where the group needs it
CONFIGS = [
    (7, 7, 3, 3, 1, 1, 1),                   # centred odd kernel
    (9, 9, 3, 3, 2, 1, 1),                   # stride 2
    (8, 8, 2, 2, 1, 0, 1),                   # even kernel, no padding
    (9, 9, 4, 4, 2, "valid", 1),             # even kernel, "valid", stride 2
    (9, 9, 4, 4, 1, "same", 1),              # even kernel, "same": asymmetric padding
    (8, 8, 2, 2, 1, "same", 1),
    (9, 9, 3, 3, 1, 2, 2),                   # dilation 2
    (8, 8, 3, 3, 1, "same", 2),              # "same" with dilation
    (8, 8, 4, 4, 1, 2, 2),                   # even kernel, dilation 2
    (9, 9, 3, 3, 2, (0, 1), 1),              # (rows, cols) padding
    (9, 9, 3, 3, 1, (1, 2, 0, 1), 1),        # (top, bottom, left, right) padding
    (9, 9, 3, 3, 2, (1, 2, 0, 1), 1),
    (8, 8, 4, 4, 1, (0, 2, 1, 3), 1),
    (7, 7, 3, 3, 2, 2, 1),
    (8, 8, 3, 3, 3, "valid", 1),             # stride 3
    (10, 10, 3, 3, (2, 1), 1, (1, 2)),       # anisotropic stride and dilation
    (8, 8, 3, 3, (2, 1), (2, 0), (1, 2)),
    (5, 9, 2, 3, (1, 2), (1, 2), 1),         # non-square image and kernel
    (6, 9, 3, 2, 1, (1, 2), 1),
    (5, 6, 3, 3, 1, (1, 0, 2, 1), 1),
]
# (C_in, C_out): C_out > C_in and C_out < C_in take different paths in the torch backend
CHANNELS = ((3, 4), (5, 2))
INTERPRETED = {("triton", "cpu")} if os.environ.get("TRITON_INTERPRET") == "1" else set()


def _fit(op, group, frame, H, W, kh, kw):
    """Square the image / kernel where the group and frame need it (as equifast._args checks)."""
    G = groups.get(group)
    if G.quarter_turns and op == "lift_conv" and frame == "view":
        W = H
    if G.quarter_turns and frame == "canonical":
        kw = kh
    return H, W, kh, kw


def _best_dtype(backend, device, op, group, frame):
    """float64 where the backend takes it, else float32 (None when it refuses both)."""
    for dtype in (torch.float64, torch.float32):
        inp, weight, bias = make_problem(op, group, B=1, C_in=1, C_out=1, H=5, dtype=dtype, device=device)
        if not refusal(backend, op, inp, weight, bias, group=group, frame=frame, padding=1):
            return dtype
    return None


def test_cuda_targets_are_marked_gpu(monkeypatch):
    """``make gpu-test`` runs ``pytest -m gpu``: the CUDA targets of this suite must carry the mark (fourier
    is available on any device, so a CUDA target exists even where torch sees no GPU)."""
    import helpers
    monkeypatch.setattr(helpers, "DEVICES", ("cpu", "cuda"))
    params = helpers.targets(include_reference=True)
    cuda = [p for p in params if p.values[0][1] == "cuda"]
    assert "fourier-cuda" in [p.id for p in cuda]
    assert all([m.name for m in p.marks] == ["gpu"] for p in cuda)
    assert all(not p.marks for p in params if p.values[0][1] == "cpu")


class ConvOpTester:
    op = None   # "lift_conv" or "group_conv", set by the subclasses

    def _problem(self, group, device, **kw):
        return make_problem(self.op, group, device=device, **kw)

    # ------------------------------------------------------------------------------------------
    @pytest.mark.parametrize("frame", FRAMES)
    @pytest.mark.parametrize("group", GROUPS)
    @pytest.mark.parametrize("target", KERNELS)
    def test_matches_reference(self, target, group, frame):
        backend, device = target
        dtype = _best_dtype(backend, device, self.op, group, frame) or torch.float32
        configs, channels, B = list(enumerate(CONFIGS)), CHANNELS, 2
        if target in INTERPRETED:
            start = 2 * (GROUPS.index(group) + len(GROUPS) * FRAMES.index(frame))
            count = 1 if groups.get(group).order >= 16 else 2
            configs, channels, B = [configs[(start + i) % len(configs)] for i in range(count)], ((2, 3),), 1
        refused = []
        ran = 0
        for i, (H, W, kh, kw, stride, padding, dilation) in configs:
            H, W, kh, kw = _fit(self.op, group, frame, H, W, kh, kw)
            conv = dict(group=group, frame=frame, stride=stride, padding=padding, dilation=dilation)
            for C_in, C_out in channels:
                inp, weight, bias = self._problem(group, device, B=B, C_in=C_in, C_out=C_out, H=H, W=W, k=kh, kw=kw,
                                                  dtype=dtype, seed=i)
                reason = refusal(backend, self.op, inp, weight, bias, **conv)
                if reason:
                    check_refused(backend, self.op, inp, weight, bias, reason, **conv)
                    refused.append(reason)
                    continue
                key = (self.op, group, frame, i, B, C_in, C_out, dtype, device)   # the oracle is shared by backends
                try:
                    check_matches_reference(backend, self.op, inp, weight, bias, oracle_key=key, **conv)
                except AssertionError as exc:
                    raise AssertionError(f"{backend} on {device}, {dtype}, H={H} W={W} k={kh}x{kw} "
                                         f"C_in={C_in} C_out={C_out} {conv}: {exc}") from None
                ran += 1
        if not ran:
            pytest.skip(f"{backend} does not support these cases: {sorted(set(refused))}")

    # ------------------------------------------------------------------------------------------
    @pytest.mark.parametrize("frame", FRAMES)
    @pytest.mark.parametrize("group", ["C4", "D4", "C8"])
    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16],
                             ids=lambda d: str(d).replace("torch.", ""))
    @pytest.mark.parametrize("target", KERNELS)
    def test_dtypes(self, target, dtype, group, frame):
        backend, device = target
        size = dict(B=1, C_in=2, C_out=3, H=7) if target in INTERPRETED else dict(B=2, C_in=4, C_out=6, H=8)
        inp, weight, bias = self._problem(group, device, dtype=dtype, **size)
        conv = dict(group=group, frame=frame, padding=1, stride=(1, 2) if frame == "view" else 1)
        if dtype in (torch.float16, torch.bfloat16):
            check_low_precision(backend, self.op, inp, weight, bias, **conv)
        else:
            check_matches_reference(backend, self.op, inp, weight, bias, **conv)

    # ------------------------------------------------------------------------------------------
    @pytest.mark.parametrize("frame", FRAMES)
    @pytest.mark.parametrize("group", ["C4", "D4", "D1", "D2"])
    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=lambda d: str(d).replace("torch.", ""))
    @pytest.mark.parametrize("target", ALL)
    def test_layouts(self, target, dtype, group, frame, layout):
        backend, device = target
        size = dict(B=1, C_in=2, C_out=3, H=7) if target in INTERPRETED else dict(B=2, C_in=4, C_out=6, H=9)
        inp, weight, bias = self._problem(group, device, dtype=dtype, **size)
        if layout == "channels_last":
            inp = to_channels_last(inp)
            assert is_channels_last(inp)
        elif layout == "sliced":
            inp, weight, bias = sliced(inp), sliced(weight), sliced(bias)
            assert not (inp.is_contiguous() or weight.is_contiguous() or bias.is_contiguous())
        elif layout == "field_major":
            inp = field_major(inp)
            assert not inp.is_contiguous() and not is_channels_last(inp)
        conv = dict(group=group, frame=frame, padding=1, stride=(1, 2))
        if backend == "reference" and layout == "contiguous" and dtype == torch.float64:
            pytest.skip("the oracle itself")
        out, grads = check_matches_reference(backend, self.op, inp, weight, bias, **conv)
        if layout == "channels_last":
            assert is_channels_last(out), "the output of a channels_last input must be channels_last"
            assert grads[0].stride() == inp.stride(), "grad input must keep the input's layout"
        else:
            assert out.is_contiguous(), f"output strides {out.stride()} for a {layout} input"

    # ------------------------------------------------------------------------------------------
    @pytest.mark.parametrize("frame", FRAMES)
    @pytest.mark.parametrize("target", ALL)
    def test_bias_and_output_mask(self, target, frame):
        """No bias; gradients only for what requires grad, each equal to the oracle's."""
        backend, device = target
        dtype = _best_dtype(backend, device, self.op, "C4", frame) or torch.float32
        inp, weight, bias = self._problem("C4", device, C_in=2, C_out=3, dtype=dtype)
        conv = dict(group="C4", frame=frame, padding=1)
        skip_if_refused(backend, self.op, inp, weight, bias, **conv)
        check_matches_reference(backend, self.op, inp, weight, None, **conv)
        for mask in ((True, False, False), (False, True, False), (False, False, True), (True, True, False)):
            leaves = [t.detach().requires_grad_(m) for t, m in zip((inp, weight, bias), mask)]
            out = getattr(equifast, self.op)(*leaves, backend=backend, **conv)
            grad_out = grad_out_like(out)
            out.backward(grad_out)
            want = oracle(self.op, inp, weight, bias, grad_out, **conv)[1]
            for name, leaf, m, w in zip(("input", "weight", "bias"), leaves, mask, want):
                if not m:
                    assert leaf.grad is None, f"grad of {name} computed but not asked for"
                    continue
                tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-4)
                torch.testing.assert_close(leaf.grad.cpu().double(), w, **tol, msg=lambda m, n=name: f"{n}: {m}")

    # ------------------------------------------------------------------------------------------
    @pytest.mark.parametrize("frame", FRAMES)
    @pytest.mark.parametrize("target", ALL)
    def test_empty_batch(self, target, frame):
        backend, device = target
        dtype = _best_dtype(backend, device, self.op, "C4", frame) or torch.float32
        inp, weight, bias = self._problem("C4", device, B=0, H=6, dtype=dtype)
        conv = dict(group="C4", frame=frame, padding=1)
        skip_if_refused(backend, self.op, inp, weight, bias, **conv)
        out, grads = forward_backward(self.op, inp, weight, bias, backend=backend, **conv)
        assert out.shape == (0, 4, 4, 6, 6) and out.dtype == dtype and out.device == inp.device
        assert grads[0].shape == inp.shape
        assert torch.equal(grads[1], torch.zeros_like(weight)) and torch.equal(grads[2], torch.zeros_like(bias))

    # ------------------------------------------------------------------------------------------
    @pytest.mark.parametrize("frame", FRAMES)
    @pytest.mark.parametrize("group", ["C4", "D2", "D4", "C8"])
    @pytest.mark.parametrize("target", ALL)
    def test_gradcheck(self, target, group, frame):
        """float64 gradcheck (fast mode: J·u for random u against the analytic vector-Jacobian product)."""
        backend, device = target
        inp, weight, bias = self._problem(group, device, B=1, C_in=2, C_out=2, H=5)
        conv = dict(group=group, frame=frame, padding=1, stride=(2, 1) if frame == "view" else 1)
        skip_if_refused(backend, self.op, inp, weight, bias, **conv)
        f = lambda i, w, b: getattr(equifast, self.op)(i, w, b, backend=backend, **conv)  # noqa: E731
        args = tuple(t.requires_grad_() for t in (inp, weight, bias))
        assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-5, fast_mode=True)

    # ------------------------------------------------------------------------------------------
    @pytest.mark.parametrize("frame", FRAMES)
    @pytest.mark.parametrize("target", ALL)
    def test_opcheck(self, target, frame):
        """torch.library.opcheck of the public op with this backend: schema, fake kernel, autograd."""
        backend, device = target
        group = "D4" if frame == "view" else "C4"
        inp, weight, bias = self._problem(group, device, B=1, C_in=2, C_out=3, H=5, dtype=torch.float32)
        conv = dict(group=group, frame=frame, padding=(1, 1, 0, 1), stride=(2, 1))
        skip_if_refused(backend, self.op, inp, weight, bias, **conv)
        plan = equifast._args.make_plan(group, (2, 1), (1, 1, 0, 1), 1, frame, 3, 3, self.op)
        args = (inp.requires_grad_(), weight.requires_grad_(), bias.requires_grad_(), *plan.schema_args(), backend)
        torch.library.opcheck(getattr(torch.ops.equifast, self.op).default, args)


class TestLiftConv(ConvOpTester):
    op = "lift_conv"


class TestGroupConv(ConvOpTester):
    op = "group_conv"


def pytest_generate_tests(metafunc):
    """``layout`` of test_layouts: the field-major permuted view exists for the group_conv stack only."""
    if "layout" in metafunc.fixturenames:
        extra = ["field_major"] if metafunc.cls.op == "group_conv" else []
        metafunc.parametrize("layout", ["contiguous", "channels_last", "sliced"] + extra)
