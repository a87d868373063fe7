"""Host-side pieces of the Triton forward GEMM and the static sm_90 check, without running a kernel.

The kernels themselves are checked against the reference in tests/test_triton.py (interpreter);
here: the affine views that replace gather tables (and their inverses, the row maps of the view
lift's input gradient), the filter pre-passes that fold the group into the GEMM and their adjoints
(the weight gradients), the channels-innermost copy of deep inputs, the autotuning spaces, and
the SASS reader of tools/gpu_static_check.py.
"""
from __future__ import annotations

import importlib.util
import pathlib

import pytest
import torch

from equifast import groups

triton = pytest.importorskip("triton")
F = importlib.import_module("equifast.backends.triton._forward")
C = importlib.import_module("equifast.backends.triton._common")

EXACT = ("C1", "C2", "C4", "D1", "D2", "D4")
ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("group", EXACT)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_affine_views_equal_the_group_action(group, layout):
    """x read at off + p·sph + q·spw is act(x, g⁻¹), for every element, in both layouts."""
    g = groups.get(group)
    H = W = 5
    x = torch.randn(2, 3, H, W)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    maps = F.affine_maps(g, H, W, g.inverse)
    assert maps is not None
    for e, (sph, spw, off) in enumerate(F.view_strides(maps, x.stride(2), x.stride(3))):
        storage = x.as_strided((x.numel(),), (1,))
        pos = off + torch.arange(H)[:, None] * sph + torch.arange(W)[None, :] * spw         # [H, W]
        chan = torch.arange(2)[:, None, None, None] * x.stride(0) + torch.arange(3)[None, :, None, None] * x.stride(1)
        view = storage[chan + pos]
        torch.testing.assert_close(view, g.act(x, g.inverse[e]), rtol=0, atol=0)


def test_affine_maps_refuse_what_is_not_affine():
    assert F.affine_maps(groups.get("C8"), 5, 5, range(8)) is None                    # interpolated
    def action(e, H, W):                       # an involution that no affine map of (p, q) gives
        perm = torch.arange(H * W)
        if e == 1:
            perm[[0, 5, 2, 11]] = perm[[5, 0, 11, 2]]
        return perm
    name = "swap_pairs_static_test"
    shuffled = groups.get(name) if name in groups.names() else groups.custom(name, [[0, 1], [1, 0]], action)
    assert F.affine_maps(shuffled, 4, 4, [0, 1]) is None


@pytest.mark.parametrize("frame", ["view", "canonical"])
@pytest.mark.parametrize("group", ["C4", "D4", "C8"])
def test_group_weight_folds_the_group_into_one_conv(group, frame):
    """y[b, g] = conv2d(stack as n·C_in channels, W[g]) with the pre-pass filters equals group_conv."""
    import equifast
    from equifast._args import make_plan
    g = groups.get(group)
    n, C_in, C_out = g.order, 2, 3
    s = torch.randn(2, n, C_in, 7, 7, dtype=torch.float64)
    w = torch.randn(C_out, n, C_in, 3, 3, dtype=torch.float64)
    plan = make_plan(group, 1, 1, 1, frame, 3, 3, "group_conv")
    w_k = F.group_weight(w, plan)                                    # [n·C_out, n, 3, 3, C_in]
    filters = w_k.permute(0, 1, 4, 2, 3).reshape(n * C_out, n * C_in, 3, 3)
    y = torch.nn.functional.conv2d(s.reshape(2, n * C_in, 7, 7), filters, padding=1).reshape(2, n, C_out, 7, 7)
    ref = equifast.group_conv(s, w, group=group, frame=frame, padding=1, backend="reference")
    torch.testing.assert_close(y, ref)


def test_lift_weight_folds_the_copies_into_columns():
    import equifast
    from equifast._args import make_plan
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    plan = make_plan("D4", 1, 1, 1, "canonical", 3, 3, "lift_conv")
    w_k = F.lift_weight(w, plan, folded=True)                        # [8·5, 3, 3, 3(ci)]
    y = torch.nn.functional.conv2d(x, w_k.permute(0, 3, 1, 2), padding=1).reshape(2, 8, 5, 7, 7)
    ref = equifast.lift_conv(x, w, group="D4", frame="canonical", padding=1, backend="reference")
    torch.testing.assert_close(y, ref)


@pytest.mark.parametrize("group", EXACT)
def test_inverse_rows_invert_the_affine_views(group):
    """The row maps of the view lift's input gradient send input pixel P to the view pixel (p, q)
    with X_g[p, q] = x[P] (here top = left = 0), for every copy g."""
    g = groups.get(group)
    H, W = (5, 5) if group in ("C4", "D4") else (4, 6)
    maps = F.affine_maps(g, H, W, g.inverse)
    assert F.rows_invert(maps, H, W)
    P0 = torch.arange(H).repeat_interleave(W)
    P1 = torch.arange(W).repeat(H)
    for (a00, a01, a10, a11, t0, t1), (u0, b00, b01, u1, b10, b11) in zip(maps, F.inverse_rows(maps, 0, 0)):
        p, q = u0 + b00 * P0 + b01 * P1, u1 + b10 * P0 + b11 * P1
        assert torch.equal(t0 + a00 * p + a01 * q, P0) and torch.equal(t1 + a10 * p + a11 * q, P1)
    assert not F.rows_invert([(1, 0, 0, 0, 0, 0)], 3, 3)                          # not a bijection


@pytest.mark.parametrize("frame", ["view", "canonical"])
@pytest.mark.parametrize("group", ["C4", "D4", "C8"])
def test_weight_grads_are_the_adjoints_of_the_filter_pre_passes(group, frame):
    """<pre_pass(w), G> = <w, weight_grad(G)> for the lift's and the group conv's filter pre-passes
    (the adjoints use float32 tables, as the kernels do: float32 tolerance)."""
    from equifast._args import make_plan
    torch.manual_seed(0)
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)   # noqa: E731
    g = groups.get(group)
    n = g.order
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    lift = make_plan(group, 1, 1, 1, frame, 3, 3, "lift_conv")
    folded = frame == "canonical"
    G = torch.randn(F.lift_weight(w, lift, folded).shape, dtype=torch.float64)
    close((F.lift_weight(w, lift, folded) * G).sum(), (w * F.lift_weight_grad(G, w, lift, folded)).sum())
    w = torch.randn(3, n, 2, 3, 3, dtype=torch.float64)
    plan = make_plan(group, 1, 1, 1, frame, 3, 3, "group_conv")
    G = torch.randn(F.group_weight(w, plan).shape, dtype=torch.float64)
    close((F.group_weight(w, plan) * G).sum(), (w * F.group_weight_grad(G, w, plan)).sum())


def test_channels_inner_copies_only_where_the_model_says_it_pays():
    deep = torch.randn(2, 3, F.CHANNELS_INNER_MIN, 4, 4, dtype=torch.float16)   # a stack [B, n, C, H, W]
    out = F.channels_inner(deep, F.CHANNELS_INNER_MAX_N)
    assert out.stride(-3) == 1 and torch.equal(out, deep)
    assert F.channels_inner(out, 1) is out                                       # already innermost
    assert F.channels_inner(deep, F.CHANNELS_INNER_MAX_N + 1) is deep           # wide GEMM
    assert F.channels_inner(deep.float(), 1).stride(-3) != 1                    # float32
    shallow = deep[:, :, 1:]
    assert F.channels_inner(shallow, 1) is shallow


@pytest.mark.parametrize("space", [C.gemm_configs, C.forward_configs])
def test_autotune_space_has_no_duplicates(space):
    keys = [(tuple(sorted(c.kwargs.items())), c.num_warps, c.num_stages) for c in space()]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("tap_mode", [False, True])
def test_pruned_forward_space_fits_and_suits_the_walk(dtype, tap_mode):
    x = torch.empty(1, dtype=dtype)
    kept = C.prune_configs(C.forward_configs(), dict(x_ptr=x, TAP_MODE=tap_mode))
    assert kept
    for c in kept:
        assert C.shared_bytes(c, x.element_size()) <= C.SHARED_MEMORY
        bk = c.kwargs["BLOCK_K"]
        assert (bk >= 32) if tap_mode else (c.kwargs["BLOCK_M"] * bk <= 2048)


@pytest.mark.parametrize("tap_mode", [False, True])
def test_pruned_weight_gradient_space_fits_and_suits_the_walk(tap_mode):
    x = torch.empty(1, dtype=torch.bfloat16)
    kept = C.prune_configs(C.gemm_configs(), dict(x_ptr=x, gw_ptr=x, TAP_MODE=tap_mode))
    assert kept
    for c in kept:
        assert C.shared_bytes(c, x.element_size()) <= C.SHARED_MEMORY
        assert tap_mode or c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"] <= 2048


def _tool():
    spec = importlib.util.spec_from_file_location("gpu_static_check", ROOT / "tools" / "gpu_static_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SASS = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   IMAD.HI.U32 R2, R3, R4, RZ ;
        /*0020*/                   LDG.E.U16 R5, desc[UR4][R6.64] ;
        /*0030*/                   IMAD.HI.U32 R2, R3, R4, RZ ;
        /*0040*/                   LDGSTS.E.BYPASS.128 [R7], desc[UR4][R8.64], P0 ;
        /*0050*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8].tnspB, R24 ;
        /*0060*/               @P1 BRA 0x30 ;
        /*0070*/                   STL [R1], R9 ;
        /*0080*/                   STG.E.128 desc[UR4][R10.64], R12 ;
        /*0090*/                   EXIT ;
"""


def test_sass_reader_finds_the_mma_loop_and_its_instructions():
    tool = _tool()
    res = tool.analyse(tool.parse_sass(SASS))
    assert res["loop"] == [0x30, 0x60]
    assert res["mma"] == "HGMMA"
    assert res["loop_instructions"] == 4 and res["loop_div"] == 1 and res["loop_mma"] == 1
    assert res["loop_async"] == {"LDGSTS.E.BYPASS.128": 1} and res["loop_loads"] == {}
    assert res["local_stores"] == 1 and res["stores"] == {"STG.E.128": 1}
