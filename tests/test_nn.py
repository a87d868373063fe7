"""equifast.nn: every layer equivariant on its own and inside a network, on every backend that
supports the case; Equivarify, the orientation head, interop, export, exactness and data."""
import gzip
import math
import os
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import equifast
import equifast.nn as enn
from equifast import backends as _backends
from equifast import groups
from equifast._args import make_plan
from equifast.interop import from_field_major, is_field_major, to_field_major

BACKENDS = equifast.available_backends("cpu")   # triton runs in its interpreter on CPU under the tests
GROUPS = ("C4", "D4")
TOL = dict(atol=1e-9, rtol=1e-9)   # float64, exact groups


def _dtype_tol(backend):
    """float64 and a rounding-level tolerance where the backend takes float64, else float32."""
    plan = make_plan("C4", 1, 1, 1, "view", 3, 3, "t")
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    if _backends.supports(_backends.module(backend), plan, x, torch.zeros(1, 1, 3, 3, dtype=torch.float64))[0]:
        return torch.float64, TOL
    return torch.float32, dict(atol=2e-5, rtol=2e-5)


def generators(G):
    """Equivariance under generators implies it for the whole group: r (and f for D_n)."""
    return [1] if G.name.startswith("C") else [1, G.order // 2]


pytestmark = pytest.mark.usefixtures("one_thread")


def _supports(backend, layer, x):
    plan = make_plan(layer.group, layer.stride, layer.padding, layer.dilation, layer.frame, *layer.kernel_size, "t")
    ok, why = _backends.supports(_backends.module(backend), plan, x, layer.weight)
    if not ok:
        pytest.skip(f"{backend}: {why}")


# ---------------------------------------------------------------------------- conv layers
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("frame,stride,padding,k", [("view", 1, 1, 3), ("view", 2, 0, 2), ("canonical", 1, 1, 3)])
def test_lift_conv2d_equivariant(backend, group, frame, stride, padding, k):
    G = groups.get(group)
    dtype, tol = _dtype_tol(backend)
    torch.manual_seed(0)
    layer = enn.LiftConv2d(2, 3, k, stride=stride, padding=padding, group=group, frame=frame, backend=backend,
                           dtype=dtype)
    x = torch.randn(2, 2, 6, 6, dtype=dtype)
    _supports(backend, layer, x)
    y = layer(x)
    assert y.shape == (2, G.order, 3, *layer.output_size(6, 6))
    for g in range(G.order):
        torch.testing.assert_close(layer(G.act(x, g)), G.act_stack(y, g, frame), **tol)
    # the layer is the functional op with its own parameters
    ref = equifast.lift_conv(x, layer.weight, layer.bias, group=group, stride=stride, padding=padding, frame=frame,
                             backend="reference")
    torch.testing.assert_close(y, ref, **tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("frame,stride,padding,k", [("view", 1, 1, 3), ("view", 2, 1, 3), ("canonical", 1, 1, 3)])
def test_group_conv2d_equivariant(backend, group, frame, stride, padding, k):
    G = groups.get(group)
    dtype, tol = _dtype_tol(backend)
    torch.manual_seed(1)
    layer = enn.GroupConv2d(2, 3, k, stride=stride, padding=padding, group=group, frame=frame, backend=backend,
                            dtype=dtype)
    s = torch.randn(2, G.order, 2, 6, 6, dtype=dtype)
    _supports(backend, layer, s)
    y = layer(s)
    for g in range(G.order):
        torch.testing.assert_close(layer(G.act_stack(s, g, frame)), G.act_stack(y, g, frame), **tol)
    ref = equifast.group_conv(s, layer.weight, layer.bias, group=group, stride=stride, padding=padding, frame=frame,
                              backend="reference")
    torch.testing.assert_close(y, ref, **tol)


def test_conv_init_repr_and_args():
    lift = enn.LiftConv2d(3, 8, 5, group="C4")
    gconv = enn.GroupConv2d(8, 16, 3, group="D4", frame="canonical", bias=False, padding="same")
    assert lift.weight.shape == (8, 3, 5, 5) and lift.bias.shape == (8,)
    assert gconv.weight.shape == (16, 8, 8, 3, 3) and gconv.bias is None
    # kaiming-uniform(a=sqrt 5) bound = 1/sqrt(fan_in); GroupConv2d's fan_in counts the group axis
    assert lift.weight.abs().max() <= 1 / math.sqrt(3 * 25) + 1e-7
    assert gconv.weight.abs().max() <= 1 / math.sqrt(8 * 8 * 9) + 1e-7
    assert gconv.weight.abs().max() > 0.5 / math.sqrt(8 * 8 * 9)
    assert lift.bias.abs().max() <= 1 / math.sqrt(75)
    r = repr(gconv)
    assert "group=D4" in r and "canonical" in r and "bias=False" in r and "'same'" in r
    w0 = lift.weight.detach().clone()
    lift.reset_parameters()
    assert not torch.equal(w0, lift.weight)
    with pytest.raises(ValueError, match="frame"):
        enn.LiftConv2d(1, 1, 3, frame="bogus")
    with pytest.raises(ValueError, match="padding"):
        enn.GroupConv2d(1, 1, 3, padding="full")
    with pytest.raises(ValueError, match="group axis"):
        enn.GroupConv2d(2, 2, 3, group="C4")(torch.randn(1, 8, 2, 5, 5))


# ---------------------------------------------------------------------------- norm / pool
@pytest.mark.parametrize("frame", ["view", "canonical"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_group_batchnorm_equivariant(frame, layout):
    G = groups.get("D4")
    torch.manual_seed(2)
    s = torch.randn(3, 8, 4, 5, 5, dtype=torch.float64) * 3 + 1
    if layout == "channels_last":
        s = s.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2)
    elif layout == "strided":
        s = s.transpose(1, 2).contiguous().transpose(1, 2)
    bn = enn.GroupBatchNorm2d(4, group="D4").double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    y = bn(s)
    # statistics over (B, n, H, W), one per channel
    mean = s.mean(dim=(0, 1, 3, 4), keepdim=True)
    var = s.var(dim=(0, 1, 3, 4), unbiased=False, keepdim=True)
    expect = (s - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, 1, -1, 1, 1) + bn.bias.view(1, 1, -1, 1, 1)
    torch.testing.assert_close(y, expect)
    for g in range(G.order):                     # training mode: batch statistics
        torch.testing.assert_close(bn(G.act_stack(s, g, frame)), G.act_stack(y, g, frame))
    bn.eval()
    y = bn(s)
    for g in range(G.order):                     # eval mode: running statistics
        torch.testing.assert_close(bn(G.act_stack(s, g, frame)), G.act_stack(y, g, frame))
    with pytest.raises(ValueError, match="5-D"):
        bn(torch.randn(2, 4, 5, 5))


def test_group_pool_and_per_copy():
    G = groups.get("C4")
    s = torch.randn(2, 4, 3, 6, 6)
    for mode in ("max", "mean"):
        pool = enn.GroupPool(mode)
        out = pool(s)
        assert out.shape == (2, 3, 6, 6)
        for g in range(4):
            torch.testing.assert_close(pool(G.act_regular(s, g)), out)            # invariant (view frame)
            torch.testing.assert_close(pool(G.act_canonical(s, g)), G.act(out, g))  # canonical: image action
    assert enn.GroupPool()(torch.randn(2, 4, 10)).shape == (2, 10)
    with pytest.raises(ValueError):
        enn.GroupPool("median")
    pc = enn.PerCopy(nn.MaxPool2d(2))
    y = pc(s)
    assert y.shape == (2, 4, 3, 3, 3)
    torch.testing.assert_close(y[:, 1], nn.functional.max_pool2d(s[:, 1], 2))
    torch.testing.assert_close(pc(G.act_regular(s, 1)), G.act_regular(y, 1))


# ---------------------------------------------------------------------------- Equivarify
class _CountCalls(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


@pytest.mark.parametrize("group", ["C4", "D4", "C2"])
def test_equivarify_mlp(group):
    G = groups.get(group)
    torch.manual_seed(3)
    mlp = _CountCalls(nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))).double()
    eq = enn.Equivarify(mlp, group)
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    y = eq(x)
    assert y.shape == (5, G.order, 10)
    assert mlp.calls == 1                                          # all views in one batched call
    for g in range(G.order):                                       # copy g = F(g⁻¹ x)
        torch.testing.assert_close(y[:, g], mlp.inner(G.act(x, G.inverse[g])))
        torch.testing.assert_close(eq(G.act(x, g)), G.act_regular(y, g))
    torch.testing.assert_close(y[:, 0], mlp.inner(x))              # p ∘ F̂ = F
    assert sum(p.numel() for p in eq.parameters()) == sum(p.numel() for p in mlp.parameters())


def test_equivarify_cnn_with_batchnorm_train_mode():
    G = groups.get("C4")
    torch.manual_seed(4)
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2),
                        nn.Flatten()).double()
    eq = enn.Equivarify(cnn, G)
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    y = eq(x)
    for g in range(4):
        torch.testing.assert_close(eq(G.act(x, g)), G.act_regular(y, g))
    # equivarifying a layer that reads a stack (the paper's head dense∘pool∘conv3∘g⁻¹)
    head = nn.Sequential(nn.Flatten(1, 2), nn.Conv2d(4 * 3, 5, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).double()
    for action in ("regular", "canonical"):
        eq2 = enn.Equivarify(head, G, action=action)
        s = torch.randn(2, 4, 3, 7, 7, dtype=torch.float64)
        z = eq2(s)
        assert z.shape == (2, 4, 5)
        for g in range(4):
            frame = "view" if action == "regular" else "canonical"
            torch.testing.assert_close(eq2(G.act_stack(s, g, frame)), G.act_regular(z, g))
    with pytest.raises(ValueError, match="action"):
        enn.Equivarify(head, G, action="bogus")


# ---------------------------------------------------------------------------- head
def test_orientation_head_label_encoding_and_decoder():
    G = groups.get("C4")
    y = torch.tensor([7, 0, 3])
    k = torch.tensor([1, 0, 3])
    idx = enn.encode_labels(y, k, 10)
    assert idx.tolist() == [17, 0, 33]
    onehot = enn.encode_labels(y, k, 10, order=4)                  # the paper's 0 ⊕ e_m ⊕ 0 ⊕ 0
    assert onehot.shape == (3, 40)
    assert onehot[0].reshape(4, 10)[1, 7] == 1 and onehot[0].sum() == 1
    scores = torch.full((3, 40), -5.0)
    scores[torch.arange(3), idx] = 5.0
    c, e = enn.decode_scores(scores, 10)
    assert c.tolist() == y.tolist() and e.tolist() == k.tolist()
    assert enn.element_angle("C4", e).tolist() == [90.0, 0.0, 270.0]
    assert enn.element_angle("D4", torch.tensor([5])).tolist() == [90.0]
    with pytest.raises(ValueError):
        enn.encode_labels(torch.tensor([10]), torch.tensor([0]), 10)

    head = enn.OrientationHead(12, 10, group=G).double()
    s = torch.randn(2, 4, 3, 2, 2, dtype=torch.float64)
    out = head(s)
    assert out.shape == (2, 40)
    for g in range(4):   # permuting the copies permutes the 10-slot blocks
        torch.testing.assert_close(head(G.act_regular(s, g)),
                                   G.act_regular(out.view(2, 4, 10), g).reshape(2, 40))
        torch.testing.assert_close(head.invariant(head(G.act_regular(s, g))), head.invariant(out))


# ---------------------------------------------------------------------------- networks
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("frame", ["view", "canonical"])
def test_layers_inside_a_network(backend, group, frame):
    G = groups.get(group)
    dtype, tol = _dtype_tol(backend)
    torch.manual_seed(5)
    kw = dict(group=group, frame=frame, backend=backend, dtype=dtype)
    net = nn.Sequential(enn.LiftConv2d(1, 4, 3, padding=1, **kw), enn.GroupBatchNorm2d(4, dtype=dtype), nn.ReLU(),
                        enn.GroupConv2d(4, 4, 3, padding=1, **kw), nn.ReLU(),
                        enn.PerCopy(nn.AvgPool2d(2)) if frame == "view" else nn.Identity(),
                        enn.GroupConv2d(4, 5, 3, padding=1, bias=False, **kw))
    x = torch.randn(3, 1, 8, 8, dtype=dtype)
    _supports(backend, net[0], x)
    y = net(x)
    inv = enn.GroupPool("max")(y).mean(dim=(-2, -1))
    for g in generators(G):
        yg = net(G.act(x, g))
        torch.testing.assert_close(yg, G.act_stack(y, g, frame), **tol)
        torch.testing.assert_close(enn.GroupPool("max")(yg).mean(dim=(-2, -1)), inv, **tol)
    y.sum().backward()
    assert net[0].weight.grad is not None and net[3].weight.grad.abs().sum() > 0


def test_strided_view_frame_exact_where_canonical_breaks():
    """Stride 2 on even sizes and even kernels break filter-rotation G-CNNs; the view frame is exact."""
    rows = enn.exactness_comparison(sizes=(16, 17), batch=2)
    by = {(r["config"], r["size"]): r for r in rows}
    assert all(r["view"] < 1e-12 for r in rows)
    assert by[("3x3, stride 2, padding 1", 16)]["canonical"] > 1e-3       # even size, stride 2: broken
    assert by[("3x3, stride 2, padding 1", 17)]["canonical"] < 1e-12      # odd size: centred grid, exact
    assert by[("3x3, stride 1, padding 1", 16)]["canonical"] < 1e-12
    assert by[("4x4 (even), stride 1, padding 'same'", 17)]["canonical"] > 1e-3
    table = enn.format_exactness_table(rows)
    assert table.startswith("| layer configuration") and "16x16" in table


# ---------------------------------------------------------------------------- interop / export
def test_interop_round_trip_zero_copy():
    y = torch.randn(2, 5 * 4, 6, 6)
    s = from_field_major(y, 4)
    assert s.shape == (2, 4, 5, 6, 6) and s.data_ptr() == y.data_ptr()
    for c in (0, 3):
        for g in range(4):
            torch.testing.assert_close(s[:, g, c], y[:, c * 4 + g], rtol=0, atol=0)
    back = to_field_major(s, copy="never")
    assert back.data_ptr() == y.data_ptr() and torch.equal(back, y)
    assert is_field_major(s) and not is_field_major(torch.randn(2, 4, 5, 6, 6))
    # equifast ops read the strided view directly; a contiguous stack converts with one copy
    w = torch.randn(3, 4, 5, 3, 3)
    out = equifast.group_conv(s, w, padding=1, frame="canonical")
    torch.testing.assert_close(out, equifast.group_conv(s.contiguous(), w, padding=1, frame="canonical"))
    fm = to_field_major(out)
    torch.testing.assert_close(from_field_major(fm, 4), out)
    with pytest.raises(ValueError):
        to_field_major(torch.randn(2, 4, 5, 6, 6), copy="never")
    with pytest.raises(ValueError, match="multiple"):
        from_field_major(torch.randn(2, 10, 3, 3), 4)


@pytest.mark.parametrize("group", ["C4", "D4", "C8"])
def test_lift_to_conv2d_canonical(group):
    torch.manual_seed(6)
    layer = enn.LiftConv2d(3, 5, 3, stride=2, padding=1, group=group, frame="canonical", dtype=torch.float64)
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    y = layer(x)
    conv = layer.to_conv2d()
    assert type(conv) is nn.Conv2d and conv.weight.shape == (groups.get(group).order * 5, 3, 3, 3)
    torch.testing.assert_close(conv(x).view_as(y), y)
    fm = layer.to_conv2d(layout="field_major")
    torch.testing.assert_close(from_field_major(fm(x), layer.order), y)
    torch.testing.assert_close(layer.export()(x), y)


@pytest.mark.parametrize("group", ["C4", "D4"])
def test_lift_to_conv2d_view_identity(group):
    G = groups.get(group)
    torch.manual_seed(7)
    layer = enn.LiftConv2d(2, 4, 5, padding=2, group=group, dtype=torch.float64)
    assert layer.view_identity_holds()
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    y = layer(x)
    conv_out = layer.to_conv2d()(x).view_as(y)
    for g in range(G.order):   # the frames' identity (docs/conventions.md): canonical copy g = g · (view copy g)
        torch.testing.assert_close(conv_out[:, g], G.act(y[:, g], g))
    torch.testing.assert_close(layer.export()(x), y)
    strided = enn.LiftConv2d(2, 4, 3, stride=2, padding=1, group=group)
    assert not strided.view_identity_holds()
    with pytest.raises(ValueError, match="view-frame"):
        strided.to_conv2d()


@pytest.mark.parametrize("frame", ["view", "canonical"])
def test_group_conv_to_conv2d(frame):
    torch.manual_seed(8)
    layer = enn.GroupConv2d(3, 2, 3, stride=2, padding=1, group="D4", frame=frame, dtype=torch.float64)
    s = torch.randn(2, 8, 3, 9, 9, dtype=torch.float64)
    y = layer(s)
    torch.testing.assert_close(layer.to_conv2d()(s.reshape(2, 24, 9, 9)).view_as(y), y)


def test_lazy_parameter_sharing_reexport():
    import importlib
    mod = importlib.import_module("equifast.nn")
    for name in ("EquivariantLinear", "DeepSets"):
        try:
            obj = getattr(mod, name)
        except AttributeError as exc:           # module not there yet: a clear AttributeError, not ImportError
            assert "parameter_sharing" in str(exc)
        else:
            assert obj.__name__ == name
    with pytest.raises(AttributeError):
        mod.NoSuchLayer


# ---------------------------------------------------------------------------- data
def test_rotation_transform_records_angle():
    from equifast.data import RandomRotation, RotatedDataset, rotate_batch, rotation_angle
    x = torch.randn(16, 1, 6, 6)
    xr, k = rotate_batch(x, "C4", torch.Generator().manual_seed(0))
    assert k.shape == (16,) and set(k.tolist()) <= {0, 1, 2, 3} and len(set(k.tolist())) > 1
    for i in range(16):
        assert torch.equal(xr[i], torch.rot90(x[i], int(k[i]), dims=(-2, -1)))
    assert rotation_angle(k, "C4").tolist() == [90.0 * v for v in k.tolist()]
    t = RandomRotation("C4", seed=1)
    img, kk = t(x[0])
    assert torch.equal(img, torch.rot90(x[0], kk, dims=(-2, -1))) and t.angle(kk) == 90.0 * kk
    ds = RotatedDataset(x, torch.arange(16), "C4", seed=3)
    xi, yi, ki = ds[5]
    assert torch.equal(xi, torch.rot90(x[5], int(ki), dims=(-2, -1))) and yi == 5


def test_load_digits_upsampled():
    from equifast.data import load_digits
    s8, s16 = load_digits(size=8), load_digits(size=16)
    assert s8.x_train.shape[1:] == (1, 8, 8) and s16.x_train.shape[1:] == (1, 16, 16)
    assert len(s8.y_train) + len(s8.y_test) == 1797 and 0 <= s8.x_train.min() and s8.x_train.max() <= 1
    torch.testing.assert_close(s16.x_train[:, :, ::2, ::2], s8.x_train)
    # nearest upsampling commutes with rotation
    torch.testing.assert_close(torch.rot90(s16.x_test, 1, (-2, -1))[:, :, ::2, ::2], torch.rot90(s8.x_test, 1, (-2, -1)))
    with pytest.raises(ValueError):
        load_digits(size=12)


def _write_idx(path, arr, gz):
    arr = np.asarray(arr)
    code = {np.uint8: 0x08}[arr.dtype.type]
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(header + arr.tobytes())


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_idx(tmp_path, gz):
    from equifast.data import load_mnist
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    tr = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    te = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / f"train-images-idx3-ubyte{sfx}", tr, gz)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{sfx}", np.arange(12, dtype=np.uint8) % 10, gz)
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{sfx}", te, gz)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{sfx}", np.arange(5, dtype=np.uint8), gz)
    split = load_mnist(tmp_path)
    assert split.x_train.shape == (12, 1, 28, 28) and split.x_test.shape == (5, 1, 28, 28)
    torch.testing.assert_close(split.x_train[3, 0], torch.from_numpy(tr[3].astype(np.float32) / 255))
    assert split.y_test.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(FileNotFoundError, match="t10k|train"):
        load_mnist(tmp_path / "nowhere") if False else load_mnist(_empty_dir(tmp_path))


def _empty_dir(tmp_path):
    d = tmp_path / "empty"
    d.mkdir(exist_ok=True)
    return d


# ---------------------------------------------------------------------------- runnable examples
EXAMPLES = sorted((os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + "/examples/" + f)
                  for f in os.listdir(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                   "examples")) if f.startswith("layers_") and f.endswith(".py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[os.path.basename(p) for p in EXAMPLES])
def test_layer_examples_run(path, capsys):
    import runpy
    runpy.run_path(path, run_name="__main__")


def test_docs_nn_md_code_blocks_run():
    import re
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "docs", "nn.md")
    if not os.path.exists(path):
        pytest.skip("docs/nn.md not present")
    try:
        import escnn  # noqa: F401  (the "coming from escnn" block needs it; numpy<2)
        has_escnn = True
    except Exception:
        has_escnn = False
    namespace, ran = {}, 0
    for i, block in enumerate(re.findall(r"```python\n(.*?)```", open(path).read(), re.S)):
        if "from escnn" in block and not has_escnn:
            continue
        exec(compile(block, f"docs/nn.md block {i}", "exec"), namespace)
        ran += 1
    assert ran >= 8


CUDA_BACKENDS = equifast.available_backends("cuda") if torch.cuda.is_available() else ["cuda-backends"]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("frame", ["view", "canonical"])
def test_layers_on_cuda(backend, frame):
    G = groups.get("D4")
    torch.manual_seed(9)
    kw = dict(group="D4", frame=frame, backend=backend, device="cuda")
    net = nn.Sequential(enn.LiftConv2d(1, 4, 3, padding=1, **kw), enn.GroupBatchNorm2d(4, device="cuda"), nn.ReLU(),
                        enn.GroupConv2d(4, 5, 3, padding=1, **kw))
    x = torch.randn(3, 1, 8, 8, device="cuda")
    y = net(x)
    for g in generators(G):
        torch.testing.assert_close(net(G.act(x, g)), G.act_stack(y, g, frame), atol=1e-4, rtol=1e-4)
    y.sum().backward()
    assert net[0].weight.grad is not None


def test_public_api_documented():
    import equifast.data
    import equifast.interop
    import equifast.models
    for mod in (enn, equifast.models, equifast.data, equifast.interop):
        for name in mod.__all__:
            obj = getattr(mod, name)
            assert obj.__doc__ and len(obj.__doc__.strip()) > 20, f"{mod.__name__}.{name} has no docstring"
    for cls in (enn.LiftConv2d, enn.GroupConv2d, enn.GroupBatchNorm2d, enn.GroupPool, enn.Equivarify,
                enn.OrientationHead, equifast.models.Figure3Net, equifast.models.ResGCNN):
        assert "Shapes" in cls.__doc__ or "shape" in cls.__doc__.lower(), cls


@pytest.mark.parametrize("module", ["equifast.nn.conv", "equifast.nn.norm", "equifast.nn.pool", "equifast.nn._export",
                                    "equifast.nn.equivarify", "equifast.nn.head", "equifast.interop"])
def test_docstring_examples(module):
    import doctest
    import importlib
    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0 and result.attempted > 0


# ---------------------------------------------------------------------------- eval fast path and its cache
def _op_output(layer, x):
    """The layer's function through the op on the reference backend (no cache involved)."""
    op = equifast.lift_conv if isinstance(layer, enn.LiftConv2d) else equifast.group_conv
    return op(x, layer.weight.detach(), None if layer.bias is None else layer.bias.detach(), group=layer.group,
              stride=layer.stride, padding=layer.padding, dilation=layer.dilation, frame=layer.frame,
              backend="reference")


def _assert_matches_op(y, layer, x):
    """y equals the layer's op output to float32 rounding (outputs grow to ~1e3 after the tests'
    lr=0.5 steps, so the absolute tolerance scales with them)."""
    expected = _op_output(layer, x)
    torch.testing.assert_close(y, expected, atol=1e-6 * max(1.0, float(expected.abs().max())), rtol=1e-5)


def _fast_layers():
    torch.manual_seed(4)
    return [(enn.LiftConv2d(2, 3, 3, stride=2, padding=1, group="D4", frame="view"), torch.randn(2, 2, 9, 9)),
            (enn.LiftConv2d(2, 3, 4, padding=(1, 2, 0, 1), group="C4", frame="canonical"), torch.randn(2, 2, 8, 8)),
            (enn.GroupConv2d(3, 4, 3, padding=1, group="D4", frame="canonical"), torch.randn(2, 8, 3, 7, 7)),
            (enn.GroupConv2d(3, 4, 3, stride=2, group="C4", frame="view"), torch.randn(2, 4, 3, 8, 8))]


@pytest.mark.parametrize("index", range(4))
def test_eval_cache_matches_op_and_is_reused(index):
    layer, x = _fast_layers()[index]
    layer.eval()
    with torch.no_grad():
        y = layer(x)
        cached = layer._cache
        assert cached is not None and cached[1] is not None
        torch.testing.assert_close(y, _op_output(layer, x), atol=1e-5, rtol=1e-5)
        layer(x)
        assert layer._cache is cached                      # reused, not rebuilt
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), y)
    # channels_last input: same values, channels_last stack out, as the op
    x_cl = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else \
        x.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2)
    with torch.no_grad():
        torch.testing.assert_close(layer(x_cl), y)


@pytest.mark.parametrize("index", range(4))
def test_eval_cache_invalidation(index):
    layer, x = _fast_layers()[index]
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer.eval()
    with torch.no_grad():
        before = layer(x)
    # an optimizer step (in-place update, version counter)
    layer.train()
    layer(x).square().sum().backward()
    opt.step()
    layer.eval()
    with torch.no_grad():
        after = layer(x)
    assert not torch.allclose(after, before)
    _assert_matches_op(after, layer, x)
    # an optimizer step while in eval mode (no train() call in between)
    with torch.no_grad():
        layer(x)
    layer.zero_grad()
    with torch.enable_grad():
        layer(x).sum().backward()                          # eval + grad: the op path, weight grads flow
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    opt.step()
    with torch.no_grad():
        _assert_matches_op(layer(x), layer, x)
    # load_state_dict
    other, _ = _fast_layers()[index]
    layer.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _op_output(other, x), atol=1e-5, rtol=1e-5)
    # in-place edit of the parameter
    with torch.no_grad():
        layer.weight.mul_(-2)
        _assert_matches_op(layer(x), layer, x)
    # .to(): a float64 bank for float64 inputs
    layer.double()
    with torch.no_grad():
        y64 = layer(x.double())
    assert y64.dtype == torch.float64
    torch.testing.assert_close(y64, _op_output(layer, x.double()), atol=1e-10, rtol=1e-10)
    # train() drops the cache
    layer.train()
    assert layer._cache is None


def test_eval_cache_built_in_inference_mode_serves_grad_of_input():
    layer = enn.GroupConv2d(2, 3, 3, padding=1, frame="canonical").eval().requires_grad_(False)
    s = torch.randn(1, 4, 2, 6, 6)
    with torch.inference_mode():
        layer(s)                                          # cache built under inference mode
    s.requires_grad_(True)
    layer(s).sum().backward()                             # the cached bank is saved for backward
    assert s.grad is not None


@pytest.mark.parametrize("make", [
    lambda: enn.GroupConv2d(6, 5, 3, padding=1, group="D4", frame="canonical"),
    lambda: enn.GroupConv2d(6, 5, 3, stride=2, dilation=2, group="C4", frame="canonical", bias=False),
    lambda: enn.LiftConv2d(3, 5, 5, padding=2, group="C4", frame="canonical"),
    lambda: enn.LiftConv2d(3, 5, 3, stride=2, padding=1, group="D4", frame="view")])
def test_eval_dense_conv_prepacked_bank_matches_conv2d(make):
    from equifast.nn.conv import _DenseConv, _onednn_pointwise
    torch.manual_seed(5)
    layer = make().eval()
    x = torch.randn(2, layer.in_channels, 11, 11) if isinstance(layer, enn.LiftConv2d) else \
        torch.randn(2, layer.order, layer.in_channels, 11, 11)
    with torch.no_grad():
        y = layer(x)
    conv = layer._cache[1]["dense"]
    conv = conv[0] if isinstance(conv, tuple) else conv
    assert isinstance(conv, _DenseConv)
    view_lift = isinstance(layer, enn.LiftConv2d) and layer.frame == "view"   # contiguous stacked views
    assert (conv.packed is not None) == (_onednn_pointwise() is not None and not view_lift)
    _assert_matches_op(y, layer, x)
    # the packed bank and F.conv2d on the bank agree, for any input geometry (one bank, many shapes)
    for shape in [(1, conv.weight.shape[1], 9, 13), (3, conv.weight.shape[1], 16, 7)]:
        xi = torch.randn(shape).contiguous(memory_format=torch.channels_last)
        expected = F.conv2d(xi, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation)
        torch.testing.assert_close(conv(xi), expected, atol=1e-5, rtol=1e-5)
        # an input that needs a gradient goes through F.conv2d (oneDNN's op has no autograd formula)
        xg = xi.clone().requires_grad_(True)
        conv(xg).sum().backward()
        torch.testing.assert_close(xg.grad, torch.autograd.grad(F.conv2d(
            xi.requires_grad_(True), conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation).sum(), xi)[0])
    # float64 layers keep F.conv2d (no blocked float64 bank)
    layer.double()
    with torch.no_grad():
        _assert_matches_op(layer(x.double()), layer, x.double())
    conv = layer._cache[1]["dense"]
    assert (conv[0] if isinstance(conv, tuple) else conv).packed is None


def test_eval_cache_is_left_out_of_copies_and_pickles():
    """deepcopy and torch.save of a layer whose eval cache is built (it may hold oneDNN's blocked
    weights, which cannot be copied) work and give the same outputs; the copy rebuilds its cache."""
    import copy
    import io
    torch.manual_seed(6)
    layer = enn.GroupConv2d(4, 3, 3, padding=1, group="D4", frame="canonical").eval()
    s = torch.randn(2, 8, 4, 7, 7)
    with torch.no_grad():
        y = layer(s)
    assert layer._cache is not None
    other = copy.deepcopy(layer)
    assert other._cache is None and layer._cache is not None
    buf = io.BytesIO()
    torch.save(layer, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    with torch.no_grad():
        torch.testing.assert_close(other(s), y)
        torch.testing.assert_close(loaded(s), y)


def test_eval_fast_path_respects_explicit_backend_and_env(monkeypatch):
    layer = enn.GroupConv2d(2, 3, 3, backend="reference").eval()
    s = torch.randn(1, 4, 2, 6, 6)
    with torch.no_grad():
        layer(s)
    assert layer._cache is None                           # an explicit backend: always the op
    layer = enn.GroupConv2d(2, 3, 3).eval()
    monkeypatch.setenv("EQUIFAST_BACKEND", "reference")
    with torch.no_grad():
        layer(s)
    assert layer._cache is None


def test_eval_fast_path_interpolated_view_lift_takes_the_op():
    layer = enn.LiftConv2d(1, 2, 3, padding=1, group="C8").eval()
    x = torch.randn(1, 1, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _op_output(layer, x), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- default frame
def test_default_frame_switch():
    assert enn.get_default_frame() == "view"
    with enn.default_frame("canonical"):
        assert enn.LiftConv2d(1, 2, 3).frame == "canonical"
        assert enn.GroupConv2d(2, 2, 3).frame == "canonical"
        assert enn.GroupConv2d(2, 2, 3, frame="view").frame == "view"          # explicit wins
        assert equifast.models.Figure3Net().conv2.frame == "view"              # the paper's network stays view
        assert equifast.models.ResGCNN().stem.frame == "view"
    assert enn.get_default_frame() == "view"                                   # restored
    try:
        enn.default_frame("canonical")                                         # module-level setting
        assert enn.LiftConv2d(1, 2, 3).frame == "canonical"
    finally:
        enn.default_frame("view")
    assert enn.LiftConv2d(1, 2, 3).frame == "view"
    with pytest.raises(ValueError, match="frame must be one of"):
        enn.default_frame("regular")
    assert enn.get_default_frame() == "view"


def test_interop_is_a_lazy_attribute_of_equifast():
    import subprocess
    import sys
    code = ("import sys, equifast\nassert 'equifast.interop' not in sys.modules\n"
            "print(equifast.interop.from_field_major.__name__, equifast.interop.from_escnn.__name__)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["from_field_major", "from_escnn"]


def test_per_copy_max_pool_runs_channels_last_with_the_same_values():
    """Pools see the copies as channels; max pooling runs (and stays) channels_last."""
    s = torch.randn(2, 4, 3, 9, 9)
    for pool in (nn.MaxPool2d(2), nn.MaxPool2d(3, 2, 1, ceil_mode=True), nn.MaxPool2d(2, dilation=2)):
        layer = enn.PerCopy(pool)
        y = layer(s)
        assert y.permute(0, 3, 4, 1, 2).is_contiguous()          # a channels_last stack
        torch.testing.assert_close(y, torch.stack([pool(s[:, g]) for g in range(4)], 1), atol=0, rtol=0)
        y_cl = layer(s.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2))   # pooled as a view
        torch.testing.assert_close(y_cl, y, atol=0, rtol=0)
        torch.testing.assert_close(layer.export()(s), y, atol=0, rtol=0)


def test_eval_fast_path_defers_to_a_non_dense_backend_auto_prefers(monkeypatch):
    """Where auto picks a backend other than a dense convolution (fused kernels, fourier), eval
    inference runs that backend through the op instead of the cached bank."""
    import types
    from equifast.backends import torch as torch_backend
    other = types.SimpleNamespace(NAME="other", lift_conv_forward=torch_backend.lift_conv_forward,
                                  group_conv_forward=torch_backend.group_conv_forward)
    calls = []

    def resolve(backend, plan, x, weight, op):
        calls.append(op)
        return other
    monkeypatch.setattr(equifast.backends, "resolve", resolve)
    layer = enn.GroupConv2d(2, 3, 3, padding=1).eval()
    s = torch.randn(1, 4, 2, 6, 6)
    with torch.no_grad():
        y = layer(s)
        layer(s)
    assert layer._cache is None and calls.count("group_conv") == 3   # one decision, then two op calls
    torch.testing.assert_close(y, _op_output(layer, s), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("group", ["C4", "D4", "C8"])
def test_eval_fast_path_fourier_caches_the_transformed_filters(group):
    """backend="fourier" (or auto where it picks fourier) in eval: the transformed filters are built
    once and reused, the output is the op's, and an optimizer step rebuilds them."""
    torch.manual_seed(0)
    layer = enn.GroupConv2d(3, 5, 3, padding=1, group=group, backend="fourier").eval()
    s = torch.randn(2, layer.order, 3, 9, 9)
    with torch.no_grad():
        y = layer(s)
        prepared = layer._cache[1]["fourier"]
        layer(s)
        assert layer._cache[1]["fourier"] is prepared                  # reused
    _assert_matches_op(y, layer, s)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    with torch.enable_grad():
        layer(s).square().sum().backward()                            # eval + grad: the op
    opt.step()
    with torch.no_grad():
        _assert_matches_op(layer(s), layer, s)
        assert layer._cache[1]["fourier"] is not prepared              # rebuilt after the step


def test_eval_fast_path_follows_auto_to_fourier(monkeypatch):
    from equifast.backends import fourier
    monkeypatch.setattr(fourier, "preferred", lambda plan, x, weight: True)
    layer = enn.GroupConv2d(4, 4, 3, padding=1, group="D4").eval()
    s = torch.randn(1, 8, 4, 7, 7)
    with torch.no_grad():
        y = layer(s)
    assert set(layer._cache[1]) == {"fourier"}
    _assert_matches_op(y, layer, s)
    canonical = enn.GroupConv2d(4, 4, 3, padding=1, group="D4", frame="canonical").eval()
    with torch.no_grad():
        canonical(s)
    assert set(canonical._cache[1]) == {"dense"}                      # fourier refuses: the dense bank
