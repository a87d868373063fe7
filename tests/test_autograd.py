"""Autograd on the default backend, opcheck of a channels_last input, torch.compile(fullgraph=True),
torch.export and AMP autocast. gradcheck and opcheck of every backend are in tests/test_conformance.py."""
import pytest
import torch

import equifast
from helpers import make_problem

OPS = ("lift_conv", "group_conv")


def test_gradients_only_for_what_requires_grad():
    x, w, b = make_problem("lift_conv", "C4", H=6)
    w.requires_grad_()
    equifast.lift_conv(x, w, b, padding=1).sum().backward()
    assert w.grad is not None and x.grad is None and b.grad is None


def test_opcheck_channels_last():
    x, w, b = make_problem("lift_conv", "C4", dtype=torch.float32, H=6)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(torch.ops.equifast.lift_conv.default,
                          (x, w.requires_grad_(), b, "C4", [1, 1], [1, 1, 1, 1], [1, 1], "view", "torch"))


class TinyGCNN(torch.nn.Module):
    def __init__(self, group="C4", backend="auto"):
        super().__init__()
        n = equifast.groups.get(group).order
        self.group, self.backend = group, backend
        self.w1 = torch.nn.Parameter(torch.randn(4, 1, 3, 3) * 0.3)
        self.b1 = torch.nn.Parameter(torch.zeros(4))
        self.w2 = torch.nn.Parameter(torch.randn(6, n, 4, 3, 3) * 0.1)
        self.head = torch.nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(equifast.lift_conv(x, self.w1, self.b1, group=self.group, padding=1, backend=self.backend))
        h = torch.relu(equifast.group_conv(h, self.w2, group=self.group, stride=2, padding=1, backend=self.backend))
        return self.head(h.amax(dim=(1, 3, 4)))  # invariant pooling over group and space


@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_fullgraph_matches_eager(dynamic):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = TinyGCNN()
    x = torch.randn(3, 1, 10, 10)
    eager = model(x)
    eager.sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, dynamic=dynamic)
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-5)
    for p, g in zip(model.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)
    # a second input size under dynamic shapes runs without recompiling into graph breaks
    if dynamic:
        compiled(torch.randn(2, 1, 12, 12))


def test_export_round_trip():
    model = TinyGCNN().eval()
    x = torch.randn(2, 1, 8, 8)
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), model(x))
    assert any("equifast.lift_conv" in str(node.target) for node in exported.graph.nodes)


@pytest.mark.parametrize("op", OPS)
def test_autocast_casts_like_conv2d(op):
    inp, weight, bias = make_problem(op, "C4", H=6, dtype=torch.float32)
    ref = getattr(equifast, op)(inp, weight, bias, padding=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = getattr(equifast, op)(inp, weight, bias, padding=1)
        conv_dtype = torch.nn.functional.conv2d(torch.randn(1, 1, 3, 3), torch.randn(1, 1, 1, 1)).dtype
    assert out.dtype == conv_dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=5e-2, atol=0.15)
    # float64 is left alone, as conv2d leaves it
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert getattr(equifast, op)(inp.double(), weight.double(), None, padding=1).dtype == torch.float64


def test_autocast_backward():
    model = TinyGCNN()
    x = torch.randn(2, 1, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x).float().sum()
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
               for p in model.parameters())
