"""Equivariance as a property over random shapes, for every exact group, both ops and both frames.

view frame: lift(g·x) == g·lift(x) and gconv(g·s) == g·gconv(s) under the regular action, for ANY
kernel (even, non-square), stride, padding and dilation. canonical frame: under the canonical action,
for odd square kernels, 'same' padding and stride 1 (where the G-CNN identity holds).
"""
import pytest
import torch
from hypothesis import given, strategies as st

import equifast
from equifast import groups
from helpers import EXACT_GROUPS, make_problem

BACKENDS = ("reference", "torch")


@st.composite
def view_problem(draw, op):
    group = groups.get(draw(st.sampled_from(EXACT_GROUPS)))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = draw(st.sampled_from([1, 2, 3, (1, 2)]))
    dilation = draw(st.sampled_from([1, 2]))
    padding = draw(st.sampled_from([0, 1, 2, (0, 1), "valid"] + (["same"] if stride == 1 else [])))
    H = draw(st.integers(max(kh, kw) * dilation + 1, 11))
    W = H if group.quarter_turns else draw(st.integers(max(kh, kw) * dilation + 1, 11))
    C_in, C_out, B = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2 ** 16))
    inp, weight, bias = make_problem(op, group, B=B, C_in=C_in, C_out=C_out, H=H, W=W, k=kh, kw=kw, seed=seed)
    return group, inp, weight, bias, dict(stride=stride, padding=padding, dilation=dilation)


def _act_input(group, inp, g, frame):
    if inp.dim() == 4:
        return group.act(inp, g)
    return group.act_stack(inp, g, frame)


@pytest.mark.parametrize("op", ["lift_conv", "group_conv"])
@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_view_frame_is_exactly_equivariant(op, backend, data):
    group, inp, weight, bias, conv = data.draw(view_problem(op))
    f = lambda t: getattr(equifast, op)(t, weight, bias, group=group, frame="view", backend=backend, **conv)  # noqa: E731
    out = f(inp)
    for g in range(group.order):
        torch.testing.assert_close(f(_act_input(group, inp, g, "view")), group.act_regular(out, g),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op", ["lift_conv", "group_conv"])
@pytest.mark.parametrize("backend", BACKENDS)
@given(group_name=st.sampled_from(EXACT_GROUPS), k=st.sampled_from([1, 3, 5]), dilation=st.sampled_from([1, 2]),
       H=st.integers(5, 11), seed=st.integers(0, 2 ** 16))
def test_canonical_frame_is_equivariant_for_odd_same_convs(op, backend, group_name, k, dilation, H, seed):
    group = groups.get(group_name)
    n = group.order
    inp, weight, _ = make_problem(op, group, B=2, C_in=3, C_out=4, H=H, k=k, bias=False, seed=seed)
    pad = dilation * (k - 1) // 2
    f = lambda t: getattr(equifast, op)(t, weight, group=group, padding=pad, dilation=dilation,  # noqa: E731
                                        frame="canonical", backend=backend)
    out = f(inp)
    for g in range(n):
        torch.testing.assert_close(f(_act_input(group, inp, g, "canonical")), group.act_canonical(out, g),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_layer_view_network_with_strides_is_exact_on_even_and_odd_sizes(backend):
    """Where filter-rotation G-CNNs break (stride 2, even kernels, even sizes) the view frame stays exact."""
    G = groups.get("D4")
    gen = torch.Generator().manual_seed(0)
    w1 = torch.randn(6, 1, 4, 4, generator=gen, dtype=torch.float64)
    w2 = torch.randn(5, 8, 6, 2, 2, generator=gen, dtype=torch.float64)
    net = lambda x: equifast.group_conv(torch.relu(equifast.lift_conv(x, w1, group=G, stride=2, padding=1,  # noqa
                                                                       backend=backend)),
                                        w2, group=G, stride=2, backend=backend)
    for H in (16, 17):
        x = torch.randn(2, 1, H, H, generator=gen, dtype=torch.float64)
        out = net(x)
        for g in range(G.order):
            torch.testing.assert_close(net(G.act(x, g)), G.act_regular(out, g), rtol=1e-12, atol=1e-12)


def test_interpolated_group_is_approximately_equivariant_on_smooth_inputs():
    """C8 lifting: the 90° elements are exact; 45° ones are approximate on a smooth, centred input."""
    G = groups.get("C8")
    r = torch.arange(25, dtype=torch.float64)
    x = torch.exp(-((r[:, None] - 10) ** 2 + (r[None, :] - 13) ** 2) / 20.0)[None, None]
    w = torch.exp(-((torch.arange(5.0)[:, None] - 2) ** 2 + (torch.arange(5.0)[None] - 1.5) ** 2) / 3.0)
    w = w.to(torch.float64)[None, None]
    f = lambda t: equifast.lift_conv(t, w, group=G, padding=2)  # noqa: E731
    out = f(x)
    exact = (f(G.act(x, 2)) - G.act_regular(out, 2)).abs().max() / out.abs().max()
    approx = (f(G.act(x, 1)) - G.act_regular(out, 1)).abs().max() / out.abs().max()
    assert exact < 1e-10
    assert approx < 0.05
