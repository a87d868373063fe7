"""equifast.nn.export / Module.export(): plain-PyTorch networks computing the same function.

References are the layers themselves run on the reference backend in float64 (the eval fast path is
off for an explicit non-torch backend), so every comparison is export vs the op, to rounding."""
import os
import random
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import fx, nn

import equifast
import equifast.nn as enn
from equifast import groups
from equifast.interop import from_field_major, to_field_major
from equifast.models import Figure3Net, ResGCNN

pytestmark = pytest.mark.usefixtures("one_thread")

EXACT_GROUPS = ("C1", "C2", "C4", "D1", "D2", "D4")
FRAMES = ("view", "canonical")
TOL = dict(atol=1e-10, rtol=1e-10)
REF = "reference"


def _randomize_batchnorm(model, gen):
    """Running statistics and affine parameters away from their defaults (so eval BN is not ~identity)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen, dtype=m.running_mean.dtype))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen, dtype=m.running_var.dtype) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=gen, dtype=m.weight.dtype) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen, dtype=m.bias.dtype))


def _is_plain(gm: fx.GraphModule):
    """Every call in the graph is a torch op or a torch.nn module (no equifast code)."""
    for node in gm.graph.nodes:
        if node.op == "call_module":
            assert type(gm.get_submodule(node.target)).__module__.startswith("torch."), node.format_node()
        if node.op == "call_function":
            assert "equifast" not in (getattr(node.target, "__module__", None) or ""), node.format_node()
    assert "equifast" not in gm.code


# ---------------------------------------------------------------------------- single layers
LIFT_CONFIGS = [dict(kernel_size=3, padding=1), dict(kernel_size=3, stride=2, padding=1),
                dict(kernel_size=4, stride=2, padding=(0, 1, 1, 2)), dict(kernel_size=3, padding=2, dilation=2),
                dict(kernel_size=2, stride=3, padding=0, bias=False)]


@pytest.mark.parametrize("group", EXACT_GROUPS)
@pytest.mark.parametrize("frame", FRAMES)
@pytest.mark.parametrize("cfg", range(len(LIFT_CONFIGS)))
def test_conv_layers_export(group, frame, cfg):
    kw = dict(LIFT_CONFIGS[cfg])
    torch.manual_seed(cfg)
    G = groups.get(group)
    lift = enn.LiftConv2d(2, 3, group=group, frame=frame, backend=REF, dtype=torch.float64, **kw)
    conv = enn.GroupConv2d(3, 4, group=group, frame=frame, backend=REF, dtype=torch.float64, **kw)
    x = torch.randn(2, 2, 11, 11, dtype=torch.float64)
    for layer, inp in ((lift, x), (conv, torch.randn(2, G.order, 3, 10, 10, dtype=torch.float64))):
        plain = layer.export()
        _is_plain(plain)
        torch.testing.assert_close(plain(inp), layer(inp), **TOL)


@pytest.mark.parametrize("group", ["C4", "D2"])
@pytest.mark.parametrize("train", [False, True])
def test_norm_pool_percopy_head_export(group, train):
    G = groups.get(group)
    gen = torch.Generator().manual_seed(1)
    s = torch.randn(3, G.order, 5, 6, 6, dtype=torch.float64, generator=gen)
    bn = enn.GroupBatchNorm2d(5, group).double()
    _randomize_batchnorm(bn, gen)
    bn.train(train)
    plain = bn.export()
    assert plain.training == train
    torch.testing.assert_close(plain(s), bn(s), **TOL)
    if train:   # the running statistics move alike
        torch.testing.assert_close(dict(plain.named_buffers())["bn.running_mean"], bn.running_mean, **TOL)
    for layer in (enn.GroupPool("max"), enn.GroupPool("mean"), enn.PerCopy(nn.MaxPool2d(2)),
                  enn.PerCopy(nn.Sequential(nn.AvgPool2d(3, 1), nn.Flatten())),
                  enn.OrientationHead(5 * 36, 7, group).double()):
        torch.testing.assert_close(layer.export()(s), layer(s), **TOL)


@pytest.mark.parametrize("group", ["C4", "D4", "D1"])
@pytest.mark.parametrize("action", ["image", "regular", "canonical"])
def test_equivarify_export(group, action):
    G = groups.get(group)
    torch.manual_seed(3)
    if action == "image":
        f, x = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.LazyLinear(4)), torch.randn(2, 2, 6, 6)
    else:
        f, x = nn.Sequential(nn.Flatten(), nn.LazyLinear(4)), torch.randn(2, G.order, 2, 6, 6)
    eq = enn.Equivarify(f, group, action).double()
    x = x.double()
    eq(x)   # materialise the lazy layer
    torch.testing.assert_close(eq.export()(x), eq(x), **TOL)


def test_view_lift_with_interpolated_group_does_not_export():
    with pytest.raises(ValueError, match="C8.*interpolation"):
        enn.LiftConv2d(1, 2, 3, group="C8").export()
    # canonical-frame C8 and every group conv export (filter banks only)
    for layer, x in ((enn.LiftConv2d(1, 2, 3, group="C8", frame="canonical", backend=REF), torch.randn(1, 1, 9, 9)),
                     (enn.GroupConv2d(2, 2, 3, group="C8", backend=REF), torch.randn(1, 8, 2, 9, 9))):
        torch.testing.assert_close(layer.export()(x), layer(x), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- random stacks
def _random_net(rng, group, frame):
    """LiftConv2d, then a random mix of every stack layer, then GroupPool."""
    G = groups.get(group)
    kw = dict(group=group, frame=frame, backend=REF, dtype=torch.float64)
    c = rng.choice([2, 3])
    layers = [enn.LiftConv2d(1, c, rng.choice([1, 2, 3]), stride=rng.choice([1, 2]), padding=rng.choice([0, 1]),
                             bias=rng.random() < 0.5, **kw)]
    for _ in range(rng.randint(2, 5)):
        kind = rng.choice(["conv", "bn", "relu", "pool", "tanh"])
        if kind == "conv":
            out = rng.choice([2, 3, 4])
            layers.append(enn.GroupConv2d(c, out, rng.choice([1, 3]), padding=1, bias=rng.random() < 0.5, **kw))
            c = out
        elif kind == "bn":
            layers.append(enn.GroupBatchNorm2d(c, G).double())
        elif kind == "relu":
            layers.append(nn.ReLU())
        elif kind == "tanh":
            layers.append(nn.Tanh())
        else:
            layers.append(enn.PerCopy(nn.MaxPool2d(2, ceil_mode=True)))
    layers.append(enn.GroupPool(rng.choice(["max", "mean"])))
    return nn.Sequential(*layers)


@pytest.mark.parametrize("group", EXACT_GROUPS)
@pytest.mark.parametrize("frame", FRAMES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_stacks_export(group, frame, seed):
    rng = random.Random(f"{group}{frame}{seed}")
    net = _random_net(rng, group, frame)
    gen = torch.Generator().manual_seed(seed)
    _randomize_batchnorm(net, gen)
    net.eval()
    x = torch.randn(2, 1, 13, 13, dtype=torch.float64, generator=gen)
    plain = enn.export(net)
    _is_plain(plain)
    torch.testing.assert_close(plain(x), net(x), **TOL)


# ---------------------------------------------------------------------------- whole models
def _models():
    return [("Figure3Net-C4", Figure3Net("C4", backend=REF), (3, 1, 12, 12)),
            ("Figure3Net-D4", Figure3Net("D4", backend=REF, width=4), (2, 1, 9, 9)),
            ("ResGCNN-D4-view", ResGCNN("D4", backend=REF, widths=(4, 6, 8)), (2, 3, 16, 16)),
            ("ResGCNN-C4-canonical", ResGCNN("C4", frame="canonical", backend=REF), (2, 3, 16, 16))]


@pytest.mark.parametrize("index", range(4), ids=[m[0] for m in _models()])
def test_models_export(index):
    _, model, shape = _models()[index]
    gen = torch.Generator().manual_seed(index)
    model = model.double()
    _randomize_batchnorm(model, gen)
    model.eval()
    x = torch.randn(*shape, dtype=torch.float64, generator=gen)
    plain = enn.export(model)
    _is_plain(plain)
    assert not plain.training
    torch.testing.assert_close(plain(x), model(x), **TOL)
    # a copy: further training of the model does not change the export
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert not torch.allclose(plain(x), model(x))


def test_export_scripts_and_torch_exports():
    model = Figure3Net("D4", backend=REF, width=4).eval()
    x = torch.randn(2, 1, 8, 8)
    plain = enn.export(model)
    ref = model(x)
    scripted = torch.jit.script(plain)
    torch.testing.assert_close(scripted(x), ref, atol=1e-5, rtol=1e-5)
    program = torch.export.export(plain, (x,))
    torch.testing.assert_close(program.module()(x), ref, atol=1e-5, rtol=1e-5)
    assert not any("equifast" in str(node.target) for node in program.graph.nodes)


def test_export_runs_without_equifast(tmp_path):
    """torch.save / torch.jit.save / torch.export.save of an export load and run where importing
    equifast fails."""
    model = ResGCNN("C4", backend=REF, widths=(4, 4, 4)).eval()
    x = torch.randn(2, 3, 12, 12)
    plain = enn.export(model)
    torch.save({"model": plain, "x": x, "y": model(x)}, tmp_path / "plain.pt")
    torch.jit.save(torch.jit.script(plain), tmp_path / "scripted.pt")
    torch.export.save(torch.export.export(plain, (x,)), tmp_path / "exported.pt2")
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] == "equifast":
                    raise ImportError("equifast is blocked in this test")
        sys.meta_path.insert(0, Block())
        import torch
        d = torch.load(r"{tmp_path / 'plain.pt'}", weights_only=False)
        outs = [d["model"](d["x"]), torch.jit.load(r"{tmp_path / 'scripted.pt'}")(d["x"]),
                torch.export.load(r"{tmp_path / 'exported.pt2'}").module()(d["x"])]
        for out in outs:
            torch.testing.assert_close(out, d["y"], atol=1e-5, rtol=1e-5)
        loaded = [m for m in sys.modules if m.split(".")[0] == "equifast"]
        assert not loaded, loaded
        print("ok", len(outs))
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "ok 3"


def test_export_does_not_call_a_backend(monkeypatch):
    """Exporting and running the export never resolves a backend (whatever auto would pick)."""
    model = Figure3Net("C4", width=4).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        ref = equifast.nn.export(model)(x)

    def no_backend(*args, **kwargs):
        raise AssertionError("a backend was resolved")
    monkeypatch.setattr(equifast.backends, "resolve", no_backend)
    monkeypatch.setattr(equifast.ops._backends, "resolve", no_backend)
    plain = enn.export(model)
    torch.testing.assert_close(plain(x), ref)


def test_export_keeps_train_mode_and_plain_modules():
    net = nn.Sequential(enn.LiftConv2d(1, 2, 3, padding=1), enn.GroupBatchNorm2d(2), nn.ReLU(), enn.GroupPool())
    plain = enn.export(net)            # training mode
    assert plain.training and plain.get_submodule("1.bn").training
    x = torch.randn(4, 1, 6, 6)
    torch.testing.assert_close(plain(x), net(x), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- to_conv2d layouts
@pytest.mark.parametrize("frame", FRAMES)
def test_group_conv_to_conv2d_layouts(frame):
    conv = enn.GroupConv2d(3, 5, 3, stride=2, padding=1, group="D4", frame=frame, backend=REF, dtype=torch.float64)
    s = torch.randn(2, 8, 3, 9, 9, dtype=torch.float64)
    ref = conv(s)
    group_major = conv.to_conv2d()
    torch.testing.assert_close(group_major(s.flatten(1, 2)).unflatten(1, (8, 5)), ref, **TOL)
    field_major = conv.to_conv2d(layout="field_major")
    torch.testing.assert_close(from_field_major(field_major(to_field_major(s)), 8), ref, **TOL)
    with pytest.raises(ValueError, match="layout"):
        conv.to_conv2d(layout="channels")


def test_lift_to_conv2d_field_major():
    lift = enn.LiftConv2d(2, 3, 3, padding=1, group="C4", frame="canonical", backend=REF, dtype=torch.float64)
    x = torch.randn(2, 2, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(from_field_major(lift.to_conv2d(layout="field_major")(x), 4), lift(x), **TOL)


# ---------------------------------------------------------------------------- stacks reaching image modules
def test_stack_reaching_image_module_is_named():
    bad_bn = nn.Sequential(enn.LiftConv2d(1, 4, 3), nn.ReLU(), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match=r"BatchNorm2d at '2'.*GroupBatchNorm2d\(4\)"):
        enn.export(bad_bn)
    bad_pool = nn.Sequential(enn.LiftConv2d(1, 4, 3), enn.GroupConv2d(4, 4, 3), nn.MaxPool2d(2))
    with pytest.raises(ValueError, match=r"MaxPool2d at '2'.*made by '1'.*PerCopy"):
        enn.check_stack_flow(bad_pool)
    good = nn.Sequential(enn.LiftConv2d(1, 4, 3), enn.PerCopy(nn.MaxPool2d(2)), enn.GroupPool(), nn.BatchNorm2d(4))
    enn.check_stack_flow(good)   # GroupPool gives images again


def test_layers_name_the_layer_for_wrong_rank():
    with pytest.raises(ValueError, match="5-D stack.*GroupConv2d"):
        enn.LiftConv2d(1, 2, 3)(torch.randn(1, 4, 1, 5, 5))
    with pytest.raises(ValueError, match="LiftConv2d first"):
        enn.GroupConv2d(2, 2, 3)(torch.randn(1, 8, 5, 5))
    with pytest.raises(ValueError, match=r"nn.BatchNorm2d\(3\)"):
        enn.GroupBatchNorm2d(3)(torch.randn(1, 3, 5, 5))
    for layer, x in ((enn.LiftConv2d(1, 2, 3).eval(), torch.randn(1, 4, 1, 5, 5)),
                     (enn.GroupConv2d(2, 2, 3).eval(), torch.randn(1, 8, 5, 5))):
        with torch.no_grad(), pytest.raises(ValueError, match=type(layer).__name__):
            layer(x)                           # the eval fast path names it too


def test_untraceable_forward_says_what_to_do():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.lift = enn.LiftConv2d(1, 2, 3)

        def forward(self, x):
            return self.lift(x) if x.sum() > 0 else self.lift(-x)
    with pytest.raises(ValueError, match="layer.export"):
        enn.export(DataDependent())


@pytest.mark.gpu
@pytest.mark.parametrize("frame", FRAMES)
def test_export_and_eval_fast_path_on_cuda(frame):
    torch.manual_seed(5)
    net = nn.Sequential(enn.LiftConv2d(1, 4, 3, stride=2, padding=1, group="D4", frame=frame),
                        enn.GroupBatchNorm2d(4), nn.ReLU(), enn.PerCopy(nn.MaxPool2d(2)),
                        enn.GroupConv2d(4, 5, 3, padding=1, group="D4", frame=frame), enn.GroupPool()).cuda().eval()
    x = torch.randn(3, 1, 17, 17, device="cuda")
    with torch.no_grad():
        ref = net(x)                                     # eval fast path (cached banks on the GPU)
        assert net[0]._cache is not None and net[0]._cache[1] is not None
        torch.testing.assert_close(_op(net, x), ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(enn.export(net)(x), ref, atol=1e-4, rtol=1e-4)


def _op(net, x):
    """The network with the eval fast path off (every conv through the op)."""
    for m in net.modules():
        if isinstance(m, (enn.LiftConv2d, enn.GroupConv2d)):
            m._fast_path = lambda x: None
    try:
        return net(x)
    finally:
        for m in net.modules():
            m.__dict__.pop("_fast_path", None)


def test_eval_export_folds_batchnorm_into_the_conv_before_it():
    gen = torch.Generator().manual_seed(7)
    model = ResGCNN("D4", backend=REF, widths=(4, 6, 8)).double()
    _randomize_batchnorm(model, gen)
    model.eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=gen)
    folded, kept = enn.export(model), enn.export(model, fold_batchnorm=False)
    count = lambda m: sum(isinstance(t, nn.BatchNorm2d) for t in m.modules())   # noqa: E731
    assert count(folded) == 0 and count(kept) == 9
    torch.testing.assert_close(folded(x), model(x), **TOL)
    torch.testing.assert_close(kept(x), model(x), **TOL)
    assert count(enn.export(model.train())) == 9           # training mode: batch statistics stay

    class SharedOutput(nn.Module):                          # the conv output is used twice: not folded
        def __init__(self):
            super().__init__()
            self.conv = enn.LiftConv2d(1, 3, 3, padding=1, group="C4", frame="canonical", backend=REF)
            self.bn = enn.GroupBatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y
    shared = SharedOutput().double()
    _randomize_batchnorm(shared, gen)
    shared.eval()
    plain = enn.export(shared)
    assert count(plain) == 1
    x = torch.randn(2, 1, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(plain(x), shared(x), **TOL)
