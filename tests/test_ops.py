"""The torch backend (and every other available CPU backend) agrees with the reference, forward and backward."""
import pytest
import torch

import equifast
from equifast import groups
from equifast._layout import is_channels_last
from helpers import (EXACT_GROUPS, FRAMES, assert_close_lowp, forward_backward, make_problem, max_err, run,
                     to_channels_last)

OPS = ("lift_conv", "group_conv")
# (stride, padding, dilation, k): centred grids, strided, even kernels, dilated, "same" with even kernel
CONFIGS = [(1, 1, 1, 3), (2, 1, 1, 3), (1, 0, 1, 2), (2, "valid", 1, 4), (1, "same", 1, 4), (1, 2, 2, 3),
           (2, (0, 1), 1, 3), (1, (1, 2, 0, 1), 1, 3)]
PLAIN_BACKENDS = ("torch",)


def _cases():
    for op in OPS:
        for group in EXACT_GROUPS + ("C8", "D3"):
            for frame in FRAMES:
                for cfg in CONFIGS:
                    yield op, group, frame, cfg


@pytest.mark.parametrize("op,group,frame,cfg", list(_cases()))
def test_torch_backend_matches_reference_float64(op, group, frame, cfg):
    stride, padding, dilation, k = cfg
    kw = dict(group=group, stride=stride, padding=padding, dilation=dilation, frame=frame)
    # C_out < C_in exercises the torch backend's filter-rotation path, C_out > C_in the view-gather path
    for C_in, C_out in ((3, 4), (5, 2)):
        inp, weight, bias = make_problem(op, group, C_in=C_in, C_out=C_out, H=9, k=k)
        ref, ref_grads = forward_backward(op, inp, weight, bias, backend="reference", **kw)
        out, grads = forward_backward(op, inp, weight, bias, backend="torch", **kw)
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("group", ["C4", "D4", "C8"])
@pytest.mark.parametrize("frame", FRAMES)
def test_float32_close_to_reference(op, group, frame):
    inp, weight, bias = make_problem(op, group, C_in=4, C_out=6, H=10, dtype=torch.float32)
    kw = dict(group=group, stride=2, padding=1, frame=frame)
    ref = run(op, inp.double(), weight.double(), bias.double(), backend="reference", **kw)
    out = run(op, inp, weight, bias, backend="torch", **kw)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("frame", FRAMES)
def test_low_precision_against_float32_reference(op, dtype, frame):
    inp, weight, bias = make_problem(op, "D4", C_in=4, C_out=6, H=8, dtype=torch.float32)
    kw = dict(group="D4", padding=1, frame=frame)
    ref32, ref32_grads = forward_backward(op, inp, weight, bias, backend="reference", **kw)
    lowp = [t.to(dtype) for t in (inp, weight, bias)]
    torch_lowp, torch_lowp_grads = forward_backward(op, *lowp, backend="reference", **kw)
    out, grads = forward_backward(op, *lowp, backend="torch", **kw)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    assert_close_lowp(out, ref32, torch_lowp, atol=1e-2)
    for g, r, t in zip(grads, ref32_grads, torch_lowp_grads):
        assert_close_lowp(g, r, t, atol=1e-2)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("frame", FRAMES)
@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_channels_last_in_channels_last_out(op, frame, backend):
    inp, weight, bias = make_problem(op, "C4", C_in=3, C_out=5, H=8)
    kw = dict(group="C4", padding=1, frame=frame, backend=backend)
    ref_out, ref_grads = forward_backward(op, inp, weight, bias, **kw)
    cl = to_channels_last(inp)
    assert is_channels_last(cl)
    out, grads = forward_backward(op, cl, weight, bias, **kw)
    assert is_channels_last(out) and not is_channels_last(ref_out)
    torch.testing.assert_close(out, ref_out)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)
    # the gradient of a channels_last input comes back channels_last
    leaf = cl.detach().clone().requires_grad_()
    assert is_channels_last(leaf)
    run(op, leaf, weight, bias, **kw).sum().backward()
    assert leaf.grad.stride() == leaf.stride()


@pytest.mark.parametrize("frame", FRAMES)
def test_field_major_permuted_view_is_accepted(frame):
    """A [B, C, n, H, W] tensor (escnn / GrouPy order) passed as a permuted view gives the same result."""
    n, C = 4, 3
    field_major = torch.randn(2, C, n, 8, 8, dtype=torch.float64)
    view = field_major.transpose(1, 2)  # [B, n, C, H, W], no copy
    assert view.data_ptr() == field_major.data_ptr() and not view.is_contiguous()
    weight = torch.randn(5, n, C, 3, 3, dtype=torch.float64)
    ref = equifast.group_conv(view.contiguous(), weight, group="C4", padding=1, frame=frame, backend="reference")
    for backend in ("reference", "torch"):
        out = equifast.group_conv(view, weight, group="C4", padding=1, frame=frame, backend=backend)
        torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("op", OPS)
def test_non_contiguous_inputs(op):
    inp, weight, bias = make_problem(op, "D2", C_in=3, C_out=4, H=9)
    big = torch.cat([inp, inp], dim=-1)[..., ::2]  # a strided slice of the same values
    assert not big.is_contiguous()
    kw = dict(group="D2", padding=1)
    torch.testing.assert_close(run(op, big, weight, bias, backend="torch", **kw),
                               run(op, big.contiguous(), weight, bias, backend="reference", **kw))


@pytest.mark.parametrize("op", OPS)
def test_zero_size_batch(op):
    inp, weight, bias = make_problem(op, "C4", B=0, H=6)
    for backend in ("reference", "torch", "auto"):
        out, grads = forward_backward(op, inp, weight, bias, backend=backend, group="C4", padding=1)
        assert out.shape == (0, 4, 4, 6, 6)
        assert grads[0].shape == inp.shape
        assert torch.equal(grads[1], torch.zeros_like(weight)) and torch.equal(grads[2], torch.zeros_like(bias))


def test_output_shapes_follow_conv2d():
    x = torch.randn(2, 3, 11, 11)
    w = torch.randn(4, 3, 3, 2)
    for stride, padding, dilation in [(1, 0, 1), (2, 1, 1), (3, (2, 1), 2), (1, "same", 2), (2, "valid", 1)]:
        expect = torch.nn.functional.conv2d(x, w, stride=stride, padding=padding, dilation=dilation).shape
        out = equifast.lift_conv(x, w, group="D2", stride=stride, padding=padding, dilation=dilation)
        assert out.shape == (2, 4, *expect[1:])


def test_bias_is_shared_by_all_copies():
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64)
    diff = equifast.lift_conv(x, w, b, group="C4") - equifast.lift_conv(x, w, group="C4")
    torch.testing.assert_close(diff, b.view(1, 1, 3, 1, 1).expand_as(diff))


def test_view_frame_definition_on_one_example():
    """out[:, g] = conv2d(act(x, g⁻¹), w), written out independently with rot90."""
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    w = torch.randn(4, 3, 2, 3, dtype=torch.float64)
    out = equifast.lift_conv(x, w, group="C4", stride=2, padding=1)
    for g in range(4):
        expect = torch.nn.functional.conv2d(torch.rot90(x, -g, dims=(-2, -1)), w, stride=2, padding=1)
        torch.testing.assert_close(out[:, g], expect)


def test_canonical_frame_definition_and_relation_to_view_frame():
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    canon = equifast.lift_conv(x, w, group="C4", padding=1, frame="canonical")
    view = equifast.lift_conv(x, w, group="C4", padding=1, frame="view")
    for g in range(4):
        expect = torch.nn.functional.conv2d(x, torch.rot90(w, g, dims=(-2, -1)), padding=1)
        torch.testing.assert_close(canon[:, g], expect)
        # odd kernel, same padding, stride 1: canonical[:, g] == act(view[:, g], g)
        torch.testing.assert_close(canon[:, g], torch.rot90(view[:, g], g, dims=(-2, -1)))


def test_group_conv_view_frame_is_a_cyclic_shift_for_c4():
    s = torch.randn(2, 4, 3, 7, 7, dtype=torch.float64)
    w = torch.randn(5, 4, 3, 3, 3, dtype=torch.float64)
    out = equifast.group_conv(s, w, group="C4", padding=1)
    for g in range(4):
        shifted = torch.roll(s, -g, dims=1)  # s[:, (g + h) % 4]
        expect = torch.nn.functional.conv2d(shifted.reshape(2, 12, 7, 7), w.reshape(5, 12, 3, 3), padding=1)
        torch.testing.assert_close(out[:, g], expect)


def test_custom_group_runs_through_the_ops():
    def hflip(g, H, W):
        idx = torch.arange(H * W).reshape(H, W)
        return (idx.flip(1) if g == 1 else idx).reshape(-1)

    G = groups.get("test-ops-hflip") if "test-ops-hflip" in groups.names() else \
        groups.custom("test-ops-hflip", [[0, 1], [1, 0]], hflip)
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    ref = equifast.lift_conv(x, w, group=G, padding=1, backend="reference")
    torch.testing.assert_close(equifast.lift_conv(x, w, group="test-ops-hflip", padding=1, backend="torch"), ref)
    torch.testing.assert_close(ref, equifast.lift_conv(x, w, group="D1", padding=1))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", equifast.available_backends("cpu"))
def test_strided_weight_and_bias_on_every_backend(op, backend):
    """Regression: a kernel backend once ignored the stride of the bias."""
    inp, weight, bias = make_problem(op, "D1", C_in=2, C_out=3, H=5, dtype=torch.float32)
    w_big = torch.zeros(*weight.shape[:-1], 2 * weight.shape[-1])
    w_big[..., ::2] = weight
    b_big = torch.zeros(2 * bias.shape[0])
    b_big[::2] = bias
    kw = dict(group="D1", padding=1)
    torch.testing.assert_close(run(op, inp, w_big[..., ::2], b_big[::2], backend=backend, **kw),
                               run(op, inp, weight, bias, backend="reference", **kw), rtol=1e-5, atol=1e-5)
