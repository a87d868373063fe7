"""equifast.models: Figure3Net (the paper's network), PlainCNN, ResGCNN — shapes, equivariance, training."""
import pytest
import torch

import equifast
from equifast._args import make_plan
from equifast import backends, groups
from equifast.models import Figure3Net, PlainCNN, ResGCNN
from equifast.nn import equivariance_error

BACKENDS = equifast.available_backends("cpu")   # triton: its interpreter on CPU under the tests (float32 only)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("size", [8, 16, 28])
def test_figure3net_default_constructor(size):
    torch.manual_seed(0)
    m = Figure3Net().eval()
    x = torch.randn(3, 1, size, size)
    scores = m(x)
    assert scores.shape == (3, 40)
    cls, el = m.predict(x)
    assert cls.shape == el.shape == (3,) and int(cls.max()) < 10 and int(el.max()) < 4
    assert m.invariant(x).shape == (3, 10)
    assert equivariance_error(m, x, "C4", "image", "scores") < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_figure3net_equivariant_train_mode_and_backends(backend):
    G = groups.get("C4")
    torch.manual_seed(1)
    dtype = torch.float32 if backend == "triton" else torch.float64
    m = Figure3Net(backend=backend, width=4).to(dtype)
    x = torch.randn(4, 1, 8, 8, dtype=dtype)
    lift = make_plan("C4", 1, 0, 1, "view", 3, 3, "lift_conv")
    if not backends.supports(backends.module(backend), lift, x, torch.zeros(1, 1, 3, 3, dtype=dtype))[0]:
        with pytest.raises(RuntimeError, match=f"backend '{backend}' does not support this call"):
            m(x)   # e.g. "fourier", a group_conv-only backend: asked for explicitly, a clear error
        return
    y = m(x).view(4, 4, 10)
    for g in range(4):
        # rotating the input by 90°·g moves the 10-score blocks by g slots (the paper's Figure 4)
        torch.testing.assert_close(m(G.act(x, g)).view(4, 4, 10), G.act_regular(y, g), atol=1e-4, rtol=1e-4)
    m.eval()
    torch.testing.assert_close(m.invariant(G.act(x, 1)), m.invariant(x))


def test_figure3net_upright_image_predicts_rotated_angle():
    """An image rotated by g^k has its argmax in block k when the upright one has it in block 0."""
    G = groups.get("C4")
    torch.manual_seed(2)
    m = Figure3Net(width=4).eval()
    x = torch.randn(8, 1, 8, 8)
    cls0, el0 = m.predict(x)
    for k in range(4):
        cls, el = m.predict(G.act(x, k))
        assert torch.equal(cls, cls0) and torch.equal(el, (el0 + k) % 4)


def test_figure3net_parameters_and_d4():
    m = Figure3Net(width=8, batch_norm=False)
    # conv1 as a plain conv; conv2/conv3 see the 4 stacked copies (4x the plain layer's weights)
    assert m.conv1.weight.shape == (8, 1, 3, 3)
    assert m.conv2.weight.shape == (16, 4, 8, 3, 3) and m.conv3.weight.shape == (16, 4, 16, 3, 3)
    d4 = Figure3Net(group="D4", width=4).eval()
    x = torch.randn(2, 1, 8, 8)
    assert d4(x).shape == (2, 80)
    assert equivariance_error(d4, x, "D4", "image", "scores") < 1e-5


def test_figure3net_training_step_reduces_loss():
    torch.manual_seed(3)
    m = Figure3Net(width=4)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.grad is not None for p in m.parameters())


def test_plain_cnn_not_invariant():
    torch.manual_seed(4)
    p = PlainCNN(width=4).eval()
    x = torch.randn(4, 1, 8, 8)
    assert p(x).shape == (4, 10)
    assert equivariance_error(p, x, "C4", "image", "invariant") > 1e-3


@pytest.mark.parametrize("group", ["C4", "D4"])
def test_resgcnn_view_frame_exactly_invariant_with_stride_2(group):
    torch.manual_seed(5)
    m = ResGCNN(group=group, widths=(4, 8), blocks=(1, 1)).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    assert m(x).shape == (2, 10)
    assert equivariance_error(m, x, group, "image", "invariant") < 1e-10      # train mode (batch stats)
    m.eval()
    assert equivariance_error(m, x, group, "image", "invariant") < 1e-10


def test_resgcnn_canonical_frame_breaks_on_even_size_exact_on_odd():
    torch.manual_seed(6)
    m = ResGCNN(group="C4", frame="canonical", widths=(4, 8), blocks=(1, 1)).double().eval()
    even = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    odd = torch.randn(2, 3, 33, 33, dtype=torch.float64)
    assert equivariance_error(m, even, "C4", "image", "invariant") > 1e-4
    assert equivariance_error(m, odd, "C4", "image", "invariant") < 1e-10
