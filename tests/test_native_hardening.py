"""The compiled CPU kernels called directly (``torch.ops.equifast_C.*``, public ops) with hostile
arguments, the group tables they take (affine maps, int32 tables, bounded caches), and the memory of
a large view-frame lift (peak measured in a subprocess, not timed). See docs/reliability.md."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import equifast
from equifast import groups
from equifast._args import make_plan
from equifast.backends import _compiled as ext

pytestmark = pytest.mark.usefixtures("one_thread")

if not ext.load()[0]:
    pytest.skip(f"equifast._C is not available: {ext.load()[1]}", allow_module_level=True)

OPS = torch.ops.equifast_C
EMPTY = torch.empty(0, dtype=torch.int64)


def _lift(x, w, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), order=2, xmap=EMPTY, kperm=EMPTY):
    return OPS.lift_conv(x, w, None, xmap, kperm, order, list(stride), list(padding), list(dilation))


def _conv2d(x, w, stride, padding, dilation):
    """conv2d by its definition, in exact index arithmetic: works for any padding / stride / dilation
    whose output is small (conv2d itself would pad the input in memory or overflow)."""
    from equifast._args import out_size
    (sh, sw), (pt, _, pl, _), (dh, dw) = stride, padding, dilation
    H, W = x.shape[-2:]
    kh, kw = w.shape[-2:]
    Ho, Wo = out_size(H, W, kh, kw, stride, padding, dilation)

    def taps(n_out, n_in, k, s, p, d):
        idx = [[i * s - p + u * d for u in range(k)] for i in range(n_out)]
        inside = torch.tensor([[0 <= r < n_in for r in row] for row in idx])
        return torch.tensor([[r if 0 <= r < n_in else 0 for r in row] for row in idx]), inside

    ri, rm = taps(Ho, H, kh, sh, pt, dh)                              # [Ho, kh]
    ci, cm = taps(Wo, W, kw, sw, pl, dw)                              # [Wo, kw]
    patch = x[:, :, ri[:, :, None, None], ci[None, None, :, :]]       # [B, C, Ho, kh, Wo, kw]
    patch = patch * (rm[:, :, None, None] & cm[None, None]).to(x.dtype)
    return torch.einsum("bciujv,ocuv->boij", patch, w)


# ---------------------------------------------------------------------------------- direct op calls
@pytest.mark.parametrize("xs, ws, match", [
    ((1, 0, 5, 5), (2, 0, 3, 3), "C_in = 0"),
    ((1, 1, 5, 5), (2, 1, 0, 3), "kernel size"),
    ((1, 1, 5, 5), (2, 1, 3, 0), "kernel size"),
    ((1, 1, 0, 5), (2, 1, 1, 1), "spatial size"),
])
def test_zero_sizes_refused_not_divided_by(xs, ws, match):
    with pytest.raises(RuntimeError, match=match):
        _lift(torch.randn(xs), torch.randn(ws))
    grad_out = torch.zeros(1, 2, 2, 1, 1)
    with pytest.raises(RuntimeError, match=match):
        OPS.lift_conv_backward(grad_out, torch.randn(xs), torch.randn(ws), EMPTY, EMPTY, 2, [1, 1], [0, 0, 0, 0],
                               [1, 1], [True, True])


def test_group_conv_zero_channels_refused():
    with pytest.raises(RuntimeError, match="C_in = 0"):
        OPS.group_conv(torch.randn(1, 2, 0, 5, 5), torch.randn(2, 2, 0, 3, 3), None, groups.get("C2").slot_table(),
                       EMPTY, [1, 1], [0, 0, 0, 0], [1, 1])


def test_output_size_floors_like_the_fake():
    """x 3x3, w 5x5, stride 3: conv2d and the fake refuse (empty output); the kernel used to return 1x1."""
    x, w = torch.randn(1, 1, 3, 3), torch.randn(1, 1, 5, 5)
    with pytest.raises(RuntimeError):
        F.conv2d(x, w, stride=3)
    with pytest.raises(RuntimeError, match="output size would be empty"):
        _lift(x, w, stride=(3, 3))
    with pytest.raises(RuntimeError, match="empty"):
        with torch._subclasses.fake_tensor.FakeTensorMode():
            _lift(torch.empty(1, 1, 3, 3), torch.empty(1, 1, 5, 5), stride=(3, 3), xmap=torch.empty(0, dtype=torch.int64),
                  kperm=torch.empty(0, dtype=torch.int64))


@pytest.mark.parametrize("order, match", [(-3, "order must be >= 1, got -3"), (0, "order must be >= 1, got 0")])
def test_bad_order(order, match):
    with pytest.raises(RuntimeError, match=match):
        _lift(torch.randn(1, 1, 5, 5), torch.randn(1, 1, 3, 3), order=order)


def test_float_tables_refused():
    x, w = torch.randn(1, 1, 4, 4), torch.randn(2, 1, 3, 3)
    perm = groups.get("C2").permutations(4, 4)
    with pytest.raises(RuntimeError, match="int32 or int64"):
        _lift(x, w, xmap=perm.double())
    with pytest.raises(RuntimeError, match="int32 or int64"):
        _lift(x, w, kperm=groups.get("C2").permutations(3, 3).float())
    with pytest.raises(RuntimeError, match="int32 or int64"):
        OPS.group_conv(torch.randn(1, 2, 1, 4, 4), torch.randn(2, 2, 1, 3, 3), None,
                       groups.get("C2").slot_table().float(), EMPTY, [1, 1], [0, 0, 0, 0], [1, 1])


def test_bad_affine_maps_refused():
    x, w = torch.randn(1, 1, 4, 4), torch.randn(2, 1, 3, 3)
    good = groups.get("C2").affine_maps(4, 4)
    scaled = good.clone()
    scaled[1, 0, 0] = -2
    with pytest.raises(RuntimeError, match="multiple of 90 degrees"):
        _lift(x, w, xmap=scaled)
    shifted = good.clone()
    shifted[1, 0, 2] += 1
    with pytest.raises(RuntimeError, match="outside itself"):
        _lift(x, w, xmap=shifted)
    huge = good.clone()
    huge[1, :, 2] = -2 ** 63
    with pytest.raises(RuntimeError, match="outside itself"):
        _lift(x, w, xmap=huge)


@pytest.mark.parametrize("stride, padding, dilation", [
    ((2 ** 62, 2 ** 62), (0, 0, 0, 0), (1, 1)),
    ((2 ** 63 - 1, 1), (1, 2, 0, 3), (1, 1)),
    ((1, 2 ** 24), (0, 0, 0, 0), (1, 1)),
    ((2 ** 32, 2 ** 40), (3, 3, 3, 3), (1, 1)),
    ((2 ** 61, 3), (2 ** 61, 0, 0, 3), (1, 1)),
    ((2 ** 61, 2), (2 ** 61, 2 ** 61, 1, 1), (2, 1)),
    ((1, 1), (2 ** 40 + 10, 2 ** 40 + 10, 1, 1), (2 ** 40, 1)),
    ((3, 2), (2, 0, 1, 4), (2, 3)),
])
def test_huge_but_valid_geometry_matches_conv2d(stride, padding, dilation):
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(2, 2, 5, 5, generator=gen, dtype=torch.float64), torch.randn(3, 2, 3, 3, generator=gen,
                                                                                    dtype=torch.float64)
    maps = groups.get("C2").affine_maps(5, 5)[list(groups.get("C2").inverse)]
    out = _lift(x, w, stride, padding, dilation, xmap=maps)
    torch.testing.assert_close(out[:, 0], _conv2d(x, w, stride, padding, dilation))
    torch.testing.assert_close(out[:, 1], _conv2d(x.flip(-1, -2), w, stride, padding, dilation))
    gy = torch.randn_like(out)
    gx, gw = OPS.lift_conv_backward(gy, x, w, maps, EMPTY, 2, list(stride), list(padding), list(dilation),
                                    [True, True])
    xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    ref = torch.stack([_conv2d(xr, wr, stride, padding, dilation),
                       _conv2d(xr.flip(-1, -2), wr, stride, padding, dilation)], 1)
    want_gx, want_gw = torch.autograd.grad(ref, (xr, wr), gy)
    torch.testing.assert_close(gx, want_gx)
    torch.testing.assert_close(gw, want_gw)


@pytest.mark.parametrize("stride, padding, dilation, match", [
    ((1, 1), (2 ** 62, 2 ** 62, 0, 0), (1, 1), "overflows int64"),
    ((1, 1), (2 ** 63 - 1, 0, 0, 0), (1, 1), "overflows int64"),
    ((1, 1), (0, 0, 0, 0), (2 ** 62, 1), "overflows int64"),
    ((1, 1), (0, 0, 0, 0), (2 ** 63 - 1, 1), "overflows int64"),
    ((1, 1), (2 ** 40, 2 ** 40, 2 ** 40, 2 ** 40), (1, 1), "overflows int64"),
    ((0, 1), (0, 0, 0, 0), (1, 1), "stride must be >= 1"),
    ((-2 ** 63, 1), (0, 0, 0, 0), (1, 1), "stride must be >= 1"),
    ((1, 1), (0, -1, 0, 0), (1, 1), "padding must be >= 0"),
    ((1, 1), (0, 0, 0, 0), (0, 1), "dilation must be >= 1"),
    ((1, 1), (0, 0, 0), (1, 1), "padding"),
])
def test_unrepresentable_geometry_refused_by_the_kernel(stride, padding, dilation, match):
    x, w = torch.randn(1, 1, 5, 5), torch.randn(1, 1, 3, 3)
    with pytest.raises(RuntimeError, match=match):
        _lift(x, w, stride, padding, dilation)


def test_strided_staging_is_sized_by_what_is_read():
    """stride (1, 2**24) on an 8x5x5 input used to stage 2**24 columns per row (2.6 GiB)."""
    script = textwrap.dedent("""
        import json, resource, torch, equifast
        from equifast.backends import _compiled
        x, w = torch.randn(8, 1, 5, 5), torch.randn(1, 1, 3, 3)
        equifast.lift_conv(x, w, group="C2", stride=2, backend="cpu")       # load everything first
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = equifast.lift_conv(x, w, group="C2", stride=(1, 2 ** 24), backend="cpu")
        out2 = equifast.lift_conv(x, w, group="C2", stride=2 ** 62, backend="cpu")
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"grew_kib": after - before, "shape": list(out.shape), "shape2": list(out2.shape)}))
    """)
    res = json.loads(_run(script))
    assert res["shape"] == [8, 2, 1, 3, 1] and res["shape2"] == [8, 2, 1, 1, 1]
    assert res["grew_kib"] < 64 * 1024, res


# ------------------------------------------------------------------------------------ group tables
def test_int32_table_int64_table_and_affine_map_agree():
    group = groups.get("D4")
    x, w = torch.randn(2, 2, 6, 6, dtype=torch.float64), torch.randn(3, 2, 3, 3, dtype=torch.float64)
    inv = list(group.inverse)
    outs = [_lift(x, w, (2, 1), (1, 0, 2, 1), (1, 2), order=8, xmap=xmap)
            for xmap in (group.affine_maps(6, 6)[inv], group.permutations(6, 6)[inv],
                         group.permutations(6, 6, torch.int32)[inv])]
    for out in outs[1:]:
        assert torch.equal(out, outs[0])
    want = torch.stack([_conv2d(group.act(x, g), w, (2, 1), (1, 0, 2, 1), (1, 2)) for g in inv], 1)
    torch.testing.assert_close(outs[0], want)


def _custom_group(name):
    """C2 as a custom group: a pixel permutation per element, no affine maps (a table is needed)."""
    def action(g, H, W):
        idx = torch.arange(H * W)
        return idx if g == 0 else idx.flip(0)
    return groups.custom(name, [[0, 1], [1, 0]], action)


def test_custom_exact_group_uses_an_int32_table():
    group = groups.get("test_native_C2") if "test_native_C2" in groups.names() else _custom_group("test_native_C2")
    plan = make_plan(group, 1, 1, 1, "view", 3, 3, "lift_conv")
    xmap, kperm = ext.lift_tables(plan, 7, 7, 3, 3, "cpu")
    assert xmap.dtype == torch.int32 and tuple(xmap.shape) == (2, 49) and kperm.numel() == 0
    assert groups.get("C2").affine_maps(7, 7) is not None and group.affine_maps(7, 7) is None
    x, w = torch.randn(2, 2, 7, 7, dtype=torch.float64), torch.randn(3, 2, 3, 3, dtype=torch.float64)
    for frame in ("view", "canonical"):
        torch.testing.assert_close(equifast.lift_conv(x, w, group=group, padding=1, frame=frame, backend="cpu"),
                                   equifast.lift_conv(x, w, group="C2", padding=1, frame=frame, backend="cpu"))


def test_builtin_view_lift_uses_affine_maps_not_tables():
    plan = make_plan("D4", 1, 1, 1, "view", 3, 3, "lift_conv")
    xmap, _ = ext.lift_tables(plan, 4096, 4096, 3, 3, "cpu")
    assert tuple(xmap.shape) == (8, 2, 3) and xmap.dtype == torch.int64
    small = ext.lift_tables(plan, 5, 5, 3, 3, "cpu")[0]
    assert torch.equal(ext.pixel_table(small, 8, 5, 5), groups.get("D4").permutations(5, 5)[list(groups.get("D4").inverse)])


def test_affine_maps_match_the_pixel_tables():
    for name in ("C1", "C2", "C4", "D1", "D2", "D4"):
        group = groups.get(name)
        for H, W in [(1, 1), (2, 2), (5, 5), (6, 6), (3, 7), (4, 1)]:
            if group.quarter_turns and H != W:
                continue
            maps = group.affine_maps(H, W)
            x = torch.arange(float(H * W)).view(H, W)
            for g in range(group.order):
                direct = torch.stack([x[tuple(maps[g] @ torch.tensor([r, q, 1]))] for r in range(H) for q in range(W)])
                assert torch.equal(direct.view(H, W), group.act(x, g)), (name, H, W, g)


def test_table_cache_is_bounded():
    cache = groups.TableCache(entries=3, max_bytes=1000)
    for i in range(10):
        cache.put(i, torch.zeros(10, dtype=torch.int64))           # 80 bytes each
    assert len(cache) == 3 and cache.get(9) is not None and cache.get(0) is None
    cache.get(7)
    cache.put(10, torch.zeros(10, dtype=torch.int64))
    assert cache.get(7) is not None and cache.get(8) is None            # least recently used evicted
    cache.put(11, torch.zeros(100, dtype=torch.int64))                 # 800 bytes: others evicted to fit
    assert cache.total_bytes() <= 1000
    big = torch.zeros(1000, dtype=torch.int64)
    assert cache.put(12, big) is big and cache.get(12) is None          # larger than the budget: not kept


def test_group_and_kernel_table_caches_stay_bounded():
    group = groups.get("D2")
    for size in range(3, 3 + 3 * groups.TABLE_CACHE_ENTRIES):
        group.permutations(size, size + 1)
        group.sampling_tables(size, size + 1)
        plan = make_plan(group, 1, 1, 1, "view", 3, 3, "lift_conv")
        ext.lift_tables(plan, size, size + 1, 3, 3, "cpu")
    for cache in (group._perms, group._tables, ext._TABLES):
        assert len(cache) <= groups.TABLE_CACHE_ENTRIES and cache.total_bytes() <= groups.TABLE_CACHE_BYTES


# ------------------------------------------------------------------------------------------- memory
def _run(script: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="2")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout.strip().splitlines()[-1]


def test_large_view_lift_peak_memory():
    """A view-frame D4 lift of one 4096x4096 image: the peak resident memory during the call stays
    within 1.5x of input + output (it was 5.45 GiB: int64 tables of n·H·W entries built per call).
    Measured in a fresh process: Linux's peak-RSS counter (VmHWM) is reset right before the call."""
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak RSS")
    script = textwrap.dedent("""
        import json, torch, equifast
        torch.set_num_threads(2)
        equifast.lift_conv(torch.randn(1, 1, 8, 8), torch.randn(1, 1, 3, 3), group="D4", padding=1, backend="cpu")
        def rss(field):
            for line in open("/proc/self/status"):
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
        x = torch.randn(1, 1, 4096, 4096)
        w = torch.randn(1, 1, 3, 3)
        base = rss("VmRSS:")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        out = equifast.lift_conv(x, w, group="D4", padding=1, backend="cpu")
        peak = rss("VmHWM:")
        ok = bool(torch.allclose(out[0, 0, 0], torch.nn.functional.conv2d(x, w, padding=1)[0, 0], atol=1e-4))
        print(json.dumps({"peak_above_base": peak - base, "input": x.numel() * 4, "output": out.numel() * 4,
                          "identity_copy_matches_conv2d": ok}))
    """)
    res = json.loads(_run(script))
    budget = 1.5 * (res["input"] + res["output"])
    # the input was resident before the call, so what the call may add is budget - input
    assert res["peak_above_base"] <= budget - res["input"], res
    assert res["identity_copy_matches_conv2d"]
