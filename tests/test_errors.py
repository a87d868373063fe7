"""Bad input gets a clear error that names the argument and what was expected."""
import pytest
import torch

import equifast


def lift(x=None, w=None, b=None, **kw):
    x = torch.randn(2, 3, 8, 8) if x is None else x
    w = torch.randn(4, 3, 3, 3) if w is None else w
    return equifast.lift_conv(x, w, b, **kw)


def gconv(s=None, w=None, b=None, **kw):
    s = torch.randn(2, 4, 3, 8, 8) if s is None else s
    w = torch.randn(5, 4, 3, 3, 3) if w is None else w
    return equifast.group_conv(s, w, b, **kw)


@pytest.mark.parametrize("call,match", [
    (lambda: lift(x=torch.randn(3, 8, 8)), r"lift_conv: expected input x of shape \[B, C_in, H, W\] \(4-D\), got 3-D"),
    (lambda: lift(w=torch.randn(4, 3, 3)), r"lift_conv: expected weight of shape \[C_out, C_in, kh, kw\] \(4-D\)"),
    (lambda: lift(w=torch.randn(4, 2, 3, 3)), r"weight has C_in=2 input channels but x has 3 channels"),
    (lambda: lift(x=torch.randn(2, 3, 8, 9)), r"group C4 rotates by 90 degrees and needs a square input; got spatial size 8x9"),
    (lambda: lift(w=torch.randn(4, 3, 3, 2), frame="canonical"), r"needs a square kernel; got weight with kernel size 3x2"),
    (lambda: lift(group="Q8"), r"unknown group 'Q8'"),
    (lambda: lift(backend="cudnn"), r"unknown backend 'cudnn'"),
    (lambda: lift(frame="rotated"), r"frame must be one of \('view', 'canonical'\), got 'rotated'"),
    (lambda: lift(b=torch.randn(5)), r"expected bias of shape \[C_out=4\], got \[5\]"),
    (lambda: lift(x=torch.randn(2, 3, 2, 2)), r"output size would be empty \(0x0\) for input 2x2, kernel 3x3"),
    (lambda: lift(stride=0), r"stride must be >= 1, got 0"),
    (lambda: lift(padding=-1), r"padding must be >= 0, got -1"),
    (lambda: lift(padding="full"), r"padding must be an int, a pair, 'same' or 'valid', got 'full'"),
    (lambda: lift(padding="same", stride=2), r"padding='same' is not supported for strided convolutions"),
    (lambda: lift(dilation=(1, 2, 3)), r"dilation must be an int or a pair of ints"),
    (lambda: gconv(s=torch.randn(2, 12, 8, 8)), r"group_conv: expected input s of shape \[B, n=4, C_in, H, W\] \(5-D\), got 4-D"),
    (lambda: gconv(s=torch.randn(2, 8, 3, 8, 8)), r"input s has group axis of size 8 \(dim 1\) but group C4 has order 4"),
    (lambda: gconv(w=torch.randn(5, 8, 3, 3, 3)), r"weight has group axis of size 8 \(dim 1\) but group C4 has order 4"),
    (lambda: gconv(w=torch.randn(5, 4, 2, 3, 3)), r"weight has C_in=2 input channels but s has 3 channels"),
    (lambda: gconv(w=torch.randn(5, 12, 3, 3)), r"expected weight of shape \[C_out, n, C_in, kh, kw\] \(5-D\)"),
    (lambda: gconv(group="D4"), r"input s has group axis of size 4 \(dim 1\) but group D4 has order 8"),
])
def test_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_type_errors_for_dtypes():
    with pytest.raises(TypeError, match=r"lift_conv: weight has dtype torch.float64 but x has dtype torch.float32"):
        lift(w=torch.randn(4, 3, 3, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"lift_conv: x has unsupported dtype torch.int64"):
        lift(x=torch.ones(2, 3, 8, 8, dtype=torch.int64), w=torch.ones(4, 3, 3, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"group_conv: bias has dtype torch.float16 but s has dtype torch.float32"):
        gconv(b=torch.randn(5, dtype=torch.float16))
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor, got ndarray"):
        import numpy as np
        equifast.lift_conv(np.zeros((2, 3, 8, 8)), torch.randn(4, 3, 3, 3))


def test_mixed_devices_error():
    x = torch.randn(2, 3, 8, 8)
    w = torch.randn(4, 3, 3, 3, device="meta")
    with pytest.raises(ValueError, match=r"weight is on meta but x is on cpu; all tensors must be on one device"):
        equifast.lift_conv(x, w)


def test_non_square_input_is_fine_for_groups_without_quarter_turns():
    for group in ("C1", "C2", "D1", "D2"):
        assert lift(x=torch.randn(1, 3, 6, 9), group=group, padding=1).shape == \
            (1, equifast.groups.get(group).order, 4, 6, 9)


def test_non_square_kernels_are_fine_in_the_view_frame():
    assert lift(w=torch.randn(4, 3, 3, 2), group="C4").shape == (2, 4, 4, 6, 7)


def test_unavailable_backend_error_names_the_reason(monkeypatch):
    x, w = torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3)
    # a CUDA-only kernel backend on a CPU tensor
    with pytest.raises(RuntimeError, match=r"backend 'cuda' is not available on cpu"):
        equifast.lift_conv(x, w, backend="cuda")


def test_environment_override(monkeypatch):
    from equifast import backends
    x, w = torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3)
    monkeypatch.setenv("EQUIFAST_BACKEND", "nonsense")
    with pytest.raises(ValueError, match=r"unknown backend 'nonsense'"):
        equifast.lift_conv(x, w)
    monkeypatch.setenv("EQUIFAST_BACKEND", "reference")
    from equifast._args import make_plan
    plan = make_plan("C4", 1, 0, 1, "view", 3, 3, "lift_conv")
    assert backends.resolve("auto", plan, x, w, "lift_conv").NAME == "reference"
    monkeypatch.delenv("EQUIFAST_BACKEND")
    assert backends.resolve("auto", plan, x, w, "lift_conv").NAME in ("cpu", "torch")


def test_available_backends_lists_the_portable_ones():
    names = equifast.available_backends("cpu")
    assert "reference" in names and "torch" in names
    assert set(names) <= set(equifast.backends.NAMES)


def test_direct_custom_op_calls_check_the_geometry():
    """torch.ops.equifast.* skip the Python wrappers' checks; the op itself refuses bad geometry."""
    x, w = torch.randn(1, 1, 5, 5), torch.randn(1, 1, 3, 3)
    with pytest.raises(ValueError, match="dilation"):
        torch.ops.equifast.lift_conv(x, w, None, "C4", [1, 1], [0, 0, 0, 0], [2 ** 62, 1], "view", "auto")
    with pytest.raises(ValueError, match="empty"):
        torch.ops.equifast.lift_conv(x, w, None, "C4", [1, 1], [0, 0, 0, 0], [3, 1], "view", "auto")
    s, w5 = torch.randn(1, 4, 1, 5, 5), torch.randn(1, 4, 1, 3, 3)
    with pytest.raises(ValueError, match="padding"):
        torch.ops.equifast.group_conv(s, w5, None, "C4", [1, 1], [2 ** 62, 2 ** 62, 0, 0], [1, 1], "view", "auto")
    # a huge stride is valid (as in conv2d): one output row
    assert torch.ops.equifast.group_conv(s, w5, None, "C4", [2 ** 62, 1], [0, 0, 0, 0], [1, 1], "view",
                                         "auto").shape == (1, 4, 1, 1, 3)
    assert torch.ops.equifast.group_conv(s, w5, None, "C4", [1, 1], [1, 1, 1, 1], [1, 1], "view", "auto").shape \
        == (1, 4, 1, 5, 5)
