"""equifast.interop.from_escnn against escnn itself.

escnn does not install into the main environment (numpy 2: its lie_learn wheel is built for numpy 1,
and py3nj needs a Fortran compiler). A side environment that reuses the main one works:

    python -m venv .venv-escnn
    echo 'import site; site.addsitedir("<repo>/.venv/lib/python3.11/site-packages")' \
        > .venv-escnn/lib/python3.11/site-packages/main_venv.pth
    .venv-escnn/bin/pip install "numpy<2" "scikit-learn==1.5.2"
    .venv-escnn/bin/pip install --no-deps escnn==1.0.11 lie_learn==0.0.2 pymanopt==2.2.1 requests urllib3 idna certifi
    .venv-escnn/bin/python -m pytest tests/test_interop.py

Without escnn the comparisons skip (with that reason); the error tests run everywhere.
"""
import pytest
import torch
from torch import nn

import equifast.nn as enn
from equifast.interop import from_escnn, from_field_major, to_field_major

pytestmark = pytest.mark.usefixtures("one_thread")

try:
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from escnn import gspaces
        from escnn import nn as escnn_nn
    HAS_ESCNN, WHY = True, ""
except Exception as exc:   # ImportError, or escnn failing on numpy 2 inside its dependencies
    HAS_ESCNN, WHY = False, (f"escnn is not importable here ({type(exc).__name__}: {exc}); it needs numpy<2 "
                             f"-- see the install commands in this file's docstring")

needs_escnn = pytest.mark.skipif(not HAS_ESCNN, reason=WHY)


def _gspace(name):
    return {"C4": lambda: gspaces.rot2dOnR2(4), "D4": lambda: gspaces.flipRot2dOnR2(4),
            "C2": lambda: gspaces.rot2dOnR2(2), "D2": lambda: gspaces.flipRot2dOnR2(2),
            "flip": lambda: gspaces.flip2dOnR2(), "C8": lambda: gspaces.rot2dOnR2(8)}[name]()


def _escnn_net(gs, bias):
    t = escnn_nn.FieldType(gs, [gs.trivial_repr])
    r1 = escnn_nn.FieldType(gs, [gs.regular_repr] * 3)
    r2 = escnn_nn.FieldType(gs, [gs.regular_repr] * 4)
    return t, escnn_nn.SequentialModule(
        escnn_nn.R2Conv(t, r1, 5, padding=2, bias=bias), escnn_nn.InnerBatchNorm(r1), escnn_nn.ReLU(r1),
        escnn_nn.R2Conv(r1, r2, 3, padding=1, stride=2, bias=bias), escnn_nn.InnerBatchNorm(r2), escnn_nn.ELU(r2),
        escnn_nn.PointwiseMaxPool2D(r2, 2),
        escnn_nn.R2Conv(r2, r2, 3, padding=1, dilation=1, bias=bias), escnn_nn.PointwiseNonLinearity(r2, "p_tanh"),
        escnn_nn.PointwiseAvgPool2D(r2, 2), escnn_nn.GroupPooling(r2))


@needs_escnn
@pytest.mark.parametrize("name", ["C4", "D4", "C2", "D2", "flip"])
@pytest.mark.parametrize("bias", [True, False])
def test_from_escnn_reproduces_escnn(name, bias):
    torch.manual_seed(0)
    gs = _gspace(name)
    t, net = _escnn_net(gs, bias)
    net.train()
    with torch.no_grad():
        for _ in range(2):                                  # running statistics away from their init
            net(escnn_nn.GeometricTensor(torch.randn(6, 1, 29, 29), t))
    net.eval()
    ours = from_escnn(net)
    assert isinstance(ours[0], enn.LiftConv2d) and ours[0].frame == "canonical"
    assert isinstance(ours[3], enn.GroupConv2d) and isinstance(ours[1], enn.GroupBatchNorm2d)
    x = torch.randn(3, 1, 29, 29)
    with torch.no_grad():
        expected = net(escnn_nn.GeometricTensor(x, t)).tensor
        torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(enn.export(ours)(x), expected, atol=1e-5, rtol=1e-5)
    # training mode too: batch statistics over (B, n, H, W) in both libraries
    net.train()
    ours.train()
    torch.testing.assert_close(ours(x), net(escnn_nn.GeometricTensor(x, t)).tensor, atol=1e-4, rtol=1e-4)


@needs_escnn
def test_from_escnn_regular_fields_and_export_layouts():
    """A regular -> regular R2Conv on an escnn tensor: equifast on the field-major view, and the
    field-major to_conv2d equals escnn's own export."""
    gs = _gspace("D4")
    r = escnn_nn.FieldType(gs, [gs.regular_repr] * 2)
    conv = escnn_nn.R2Conv(r, escnn_nn.FieldType(gs, [gs.regular_repr] * 3), 3, padding=1).eval()
    ours = from_escnn(conv)
    y = torch.randn(2, 16, 9, 9)
    expected = conv(escnn_nn.GeometricTensor(y, r)).tensor
    torch.testing.assert_close(to_field_major(ours(from_field_major(y, 8))), expected, atol=1e-5, rtol=1e-5)
    theirs = conv.export()
    torch.testing.assert_close(ours.to_conv2d(layout="field_major").weight, theirs.weight, atol=1e-6, rtol=1e-5)


@needs_escnn
def test_from_escnn_refuses_what_it_cannot_reproduce():
    with pytest.raises(ValueError, match="C8.*exact"):
        gs = _gspace("C8")
        from_escnn(escnn_nn.R2Conv(escnn_nn.FieldType(gs, [gs.trivial_repr]),
                                   escnn_nn.FieldType(gs, [gs.regular_repr]), 3))
    gs = _gspace("C4")
    with pytest.raises(ValueError, match="trivial fields"):
        from_escnn(escnn_nn.R2Conv(escnn_nn.FieldType(gs, [gs.regular_repr]),
                                   escnn_nn.FieldType(gs, [gs.trivial_repr]), 3))
    mixed = escnn_nn.FieldType(gs, [gs.regular_repr, gs.trivial_repr])
    with pytest.raises(ValueError, match="only trivial fields .* or regular fields"):
        from_escnn(escnn_nn.PointwiseMaxPool2D(mixed, 2))


def test_from_escnn_names_unsupported_modules():
    with pytest.raises(ValueError, match="no equifast equivalent for escnn's Conv2d"):
        from_escnn(nn.Conv2d(1, 1, 3))
