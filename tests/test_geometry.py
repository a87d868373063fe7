"""Hostile geometry (huge, zero, negative, asymmetric stride / padding / dilation / sizes) through the
public ops, every backend available on CPU, against torch.nn.functional.conv2d.

The oracle is conv2d's definition in exact integer arithmetic plus equifast's documented int64
limits (equifast/_args.py): stride, dilation >= 1, padding >= 0, each at most 2**63 - 1; the padded
input and the dilated kernel fit int64; the output is non-empty and has at most 2**63 - 1 elements;
the output size floors. Where torch's own int64 arithmetic is defined (everything the oracle accepts
with a small output, and the plain refusals), conv2d itself is run and must agree with the oracle.
Every backend must then give the oracle's output size (and the reference backend's values), or,
where the oracle refuses, raise an error that names the argument; outputs too large to allocate are
checked at the shared Python boundary (``equifast._args.check_geometry``) only.
"""
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import equifast
from equifast import _args, backends

pytestmark = pytest.mark.usefixtures("one_thread")

BACKENDS = equifast.available_backends("cpu")
INT64_MAX = 2 ** 63 - 1
SMALL_OUTPUT = 4096          # elements: run the backends (and conv2d) for real up to this
# The plain-PyTorch backends (and conv2d here) pad the input in memory (F.pad) for asymmetric padding,
# so they run for real only up to this many padded-input elements; the compiled CPU kernels stage only
# what they read (csrc/cpu/equiconv_kernel.cpp), whatever the padding.
SMALL_PADDED = 1 << 20
STAGES_WHAT_IT_READS = {"cpu"}
NAMES_AN_ARGUMENT = re.compile(r"stride|padding|dilation|kernel|spatial size")

HUGE = [2 ** 24, 2 ** 31, 2 ** 32, 2 ** 40, 2 ** 61, 2 ** 62, 2 ** 63 - 1, 2 ** 63, 2 ** 64]
strides = st.one_of(st.integers(-2, 4), st.sampled_from(HUGE))
paddings = st.one_of(st.integers(-1, 3), st.sampled_from(HUGE))
dilations = st.one_of(st.integers(-1, 3), st.sampled_from(HUGE))


def oracle(H, W, kh, kw, stride, padding, dilation, channels):
    """("ok", Ho, Wo) or ("error", why) for conv2d with explicit 4-sided padding."""
    values = list(stride) + list(padding) + list(dilation)
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        return "error", "range"
    if max(values) > INT64_MAX:
        return "error", "int64"
    sizes = []
    for size, lo, hi, d, k, s in ((H, padding[0], padding[1], dilation[0], kh, stride[0]),
                                  (W, padding[2], padding[3], dilation[1], kw, stride[1])):
        Hp, Kd = size + lo + hi, d * (k - 1) + 1
        if Hp > INT64_MAX or Kd > INT64_MAX:
            return "error", "int64"
        if Hp < Kd:
            return "error", "empty"
        sizes.append((Hp - Kd) // s + 1)
    if channels * sizes[0] * sizes[1] > INT64_MAX:
        return "error", "int64"
    return "ok", sizes[0], sizes[1]


@st.composite
def geometry(draw):
    square = draw(st.booleans())
    H = draw(st.integers(1, 7))
    W = H if square else draw(st.integers(1, 7))
    kh = draw(st.integers(1, 4))
    kw = kh if square else draw(st.integers(1, 4))
    stride = (draw(strides), draw(strides))
    padding = tuple(draw(paddings) for _ in range(4))
    dilation = (draw(dilations), draw(dilations))
    return H, W, kh, kw, stride, padding, dilation


def _conv2d(H, W, kh, kw, stride, padding, dilation):
    """torch.nn.functional.conv2d with 4-sided padding: its own padding when symmetric, else F.pad first
    (conv2d has no asymmetric padding; its symmetric form refuses negative padding, so do we)."""
    x, w = torch.randn(1, 1, H, W, dtype=torch.float64), torch.randn(1, 1, kh, kw, dtype=torch.float64)
    pt, pb, pl, pr = padding
    if (pt, pl) == (pb, pr):
        return F.conv2d(x, w, stride=stride, padding=(pt, pl), dilation=dilation)
    if min(padding) < 0:
        raise RuntimeError("negative padding is not supported")
    return F.conv2d(F.pad(x, (pl, pr, pt, pb)), w, stride=stride, dilation=dilation)


def _padded(H, W, padding):
    return (H + padding[0] + padding[1]) * (W + padding[2] + padding[3])


def _torch_agrees(H, W, kh, kw, stride, padding, dilation, verdict):
    """Run conv2d where its own int64 arithmetic is defined and check the oracle against it."""
    if verdict[0] == "ok":
        if verdict[1] * verdict[2] <= SMALL_OUTPUT and _padded(H, W, padding) <= SMALL_PADDED:
            assert tuple(_conv2d(H, W, kh, kw, stride, padding, dilation).shape[-2:]) == verdict[1:]
    elif verdict[1] in ("range", "empty") and max(abs(v) for v in stride + padding + dilation) < 2 ** 30:
        with pytest.raises(RuntimeError):
            _conv2d(H, W, kh, kw, stride, padding, dilation)


def _refused_by(backend, op, x, w, kwargs):
    """Whether the backend's supports() declines this (valid) call: then it must say so when asked."""
    check = _args.check_lift if op == "lift_conv" else _args.check_group
    plan = check(x, w, None, kwargs["group"], kwargs["stride"], kwargs["padding"], kwargs["dilation"],
                 kwargs["frame"])
    ok, _ = backends.supports(backends.module(backend), plan, x, w)
    if not ok:
        with pytest.raises(RuntimeError, match="does not support"):
            getattr(equifast, op)(x, w, backend=backend, **kwargs)
    return not ok


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["lift_conv", "group_conv"])
@settings(max_examples=40)
@given(geo=geometry(), frame=st.sampled_from(["view", "canonical"]), group=st.sampled_from(["C2", "D2", "C4"]))
def test_hostile_geometry_matches_conv2d(backend, op, geo, frame, group):
    H, W, kh, kw, stride, padding, dilation = geo
    n = equifast.groups.get(group).order
    if group == "C4" and (H != W or kh != kw):
        group, n = "D2", 4
    B, C_in, C_out = 1, 2, 3
    channels = B * n * C_out
    verdict = oracle(H, W, kh, kw, stride, padding, dilation, channels)
    _torch_agrees(H, W, kh, kw, stride, padding, dilation, verdict)

    gen = torch.Generator().manual_seed(0)
    if op == "lift_conv":
        x = torch.randn(B, C_in, H, W, generator=gen)
        w = torch.randn(C_out, C_in, kh, kw, generator=gen)
    else:
        x = torch.randn(B, n, C_in, H, W, generator=gen)
        w = torch.randn(C_out, n, C_in, kh, kw, generator=gen)
    call = getattr(equifast, op)
    kwargs = dict(group=group, stride=stride, padding=padding, dilation=dilation, frame=frame)
    if verdict[0] == "error":
        with pytest.raises((ValueError, TypeError, RuntimeError)) as info:
            call(x, w, backend=backend, **kwargs)
        assert NAMES_AN_ARGUMENT.search(str(info.value)), str(info.value)
        return
    Ho, Wo = verdict[1:]
    too_large = Ho * Wo > SMALL_OUTPUT or (backend not in STAGES_WHAT_IT_READS
                                           and _padded(H, W, padding) > SMALL_PADDED)
    if too_large:   # the shared boundary computes the same size (no allocation)
        assert _args.check_geometry(op, (H, W), (kh, kw), stride, padding, dilation, channels) == (Ho, Wo)
        return
    if _refused_by(backend, op, x, w, kwargs):
        return
    out = call(x, w, backend=backend, **kwargs)
    assert tuple(out.shape) == (B, n, C_out, Ho, Wo)
    if backend != "reference" and _padded(H, W, padding) <= SMALL_PADDED:
        want = call(x.double(), w.double(), backend="reference", **kwargs)
        torch.testing.assert_close(out.double(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kwargs", [dict(stride=2 ** 62), dict(stride=2 ** 63 - 1), dict(stride=(1, 2 ** 24)),
                                    dict(stride=2 ** 32), dict(stride=2 ** 40), dict(stride=2 ** 61),
                                    dict(padding=3, stride=2 ** 62),
                                    dict(dilation=2 ** 40, padding=2 ** 40 + 10)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_issue_cases_match_conv2d(backend, kwargs):
    """The calls of the issue that crashed, allocated GiBs or raised bad_alloc: conv2d's size and values."""
    gen = torch.Generator().manual_seed(1)
    x, w = torch.randn(2, 1, 5, 5, generator=gen), torch.randn(1, 1, 3, 3, generator=gen)
    full = {**dict(stride=1, padding=0, dilation=1), **kwargs}
    if _refused_by(backend, "lift_conv", x, w, dict(full, group="C2", frame="view")):
        pytest.skip(f"{backend} does not support lift_conv (checked that it says so)")
    out = equifast.lift_conv(x, w, group="C2", backend=backend, **kwargs)
    ref = F.conv2d(x, w, **kwargs)
    torch.testing.assert_close(out[:, 0], ref, rtol=1e-5, atol=1e-5)        # element 0: the identity
    torch.testing.assert_close(out[:, 1], F.conv2d(x.flip(-1, -2), w, **kwargs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs, names", [(dict(padding=2 ** 62), "padding"), (dict(dilation=2 ** 62), "dilation"),
                                           (dict(stride=2 ** 63), "stride"), (dict(padding=2 ** 40), "padding"),
                                           (dict(padding=-1), "padding"), (dict(dilation=0), "dilation")])
def test_unrepresentable_geometry_named(kwargs, names):
    x, w = torch.randn(1, 1, 5, 5), torch.randn(1, 1, 3, 3)
    for backend in BACKENDS:
        with pytest.raises(ValueError, match=names):
            equifast.lift_conv(x, w, group="C2", backend=backend, **kwargs)


def test_empty_spatial_input_refused_like_conv2d():
    for H, W in [(0, 5), (5, 0)]:
        with pytest.raises(RuntimeError):
            F.conv2d(torch.randn(1, 1, H, W), torch.randn(1, 1, 1, 1), padding=1)
        with pytest.raises(ValueError, match="spatial size"):
            equifast.lift_conv(torch.randn(1, 1, H, W), torch.randn(1, 1, 1, 1), group="C2", padding=1)


def test_out_size_floors():
    """One definition, floor rounding: equal to conv2d wherever the output is non-empty."""
    for H in range(1, 9):
        for k in range(1, 4):
            for s in range(1, 5):
                for p in range(0, 3):
                    for d in range(1, 3):
                        if H + 2 * p < d * (k - 1) + 1:
                            continue
                        want = F.conv2d(torch.zeros(1, 1, H, H), torch.zeros(1, 1, k, k), stride=s, padding=p,
                                        dilation=d).shape[-2:]
                        assert _args.out_size(H, H, k, k, (s, s), (p, p, p, p), (d, d)) == tuple(want)
