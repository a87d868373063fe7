"""The ``fourier`` backend (group_conv in the group-Fourier basis): its bases, and the op against the
reference in float64, layouts, low precision, autograd machinery, equivariance and refusals."""
import itertools

import pytest
import torch

import equifast
from equifast import groups
from equifast._args import check_group
from equifast._layout import is_channels_last
from equifast.backends import fourier
from equifast.backends.fourier import basis
from helpers import forward_backward, make_problem, max_err, to_channels_last

pytestmark = pytest.mark.usefixtures("one_thread")


def _custom(name, cayley):
    """A group acting trivially on images (the view-frame group_conv never reads the image action)."""
    if name in groups.names():
        return groups.get(name)
    return groups.custom(name, cayley, lambda g, H, W: torch.arange(H * W), exact=True)


def _table(elements, mul):
    index = {e: i for i, e in enumerate(elements)}
    return [[index[mul(a, b)] for b in elements] for a in elements]


def _compose(p, q):           # permutations as tuples: (p∘q)(i) = p[q[i]]
    return tuple(p[i] for i in q)


S3 = _custom("fourier-S3", _table(sorted(itertools.permutations(range(3))), _compose))          # 2-d irrep, real type
C3xC2 = _custom("fourier-C3xC2", _table([(a, b) for a in range(3) for b in range(2)],
                                        lambda x, y: ((x[0] + y[0]) % 3, (x[1] + y[1]) % 2)))   # complex type


def _quaternion_mul(a, b):    # Q8 as (sign, unit) with units 1, i, j, k: 4-d irrep of quaternionic type
    table = {("1", u): (1, u) for u in "1ijk"}
    table.update({(u, "1"): (1, u) for u in "1ijk"})
    table.update({("i", "i"): (-1, "1"), ("j", "j"): (-1, "1"), ("k", "k"): (-1, "1"),
                  ("i", "j"): (1, "k"), ("j", "k"): (1, "i"), ("k", "i"): (1, "j"),
                  ("j", "i"): (-1, "k"), ("k", "j"): (-1, "i"), ("i", "k"): (-1, "j")})
    sign, unit = table[(a[1], b[1])]
    return (a[0] * b[0] * sign, unit)


Q8 = _custom("fourier-Q8", _table([(s, u) for s in (1, -1) for u in "1ijk"], _quaternion_mul))

GROUPS = ["C1", "C2", "C4", "C8", "C16", "D4", "D8", S3.name, C3xC2.name, Q8.name]


# ------------------------------------------------------------------------------------------------
# Bases
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", GROUPS + ["C3", "D1", "D2", "D3"])
def test_basis_reproduces_the_regular_representation(name):
    group = groups.get(name)
    b = basis.get(group)
    R = basis.right_regular(group.cayley_tensor())
    assert max_err(basis.operator(b), R) <= 1e-12           # Σ_blocks t_out ρ(h) t_in = R(h), every h
    if b.kind != "cyclic":                                   # orthogonal Q with QᵀR(g)Q = ⊕ρ(g)
        basis.check(b, R)


@pytest.mark.parametrize("name, blocks", [("C4", 5), ("C8", 11), ("C16", 23), ("D4", 12), ("D8", 28),
                                          ("fourier-S3", 10), ("fourier-Q8", 4 + 16)])
def test_filter_blocks(name, blocks):
    assert basis.get(groups.get(name)).filter_blocks == blocks


def test_numeric_basis_of_a_dihedral_group():
    """The numerical construction (used for custom groups) on D4's table: four 1-d irreducibles and
    two copies of the 2-d one, checked to 1e-12 on construction and here."""
    group = groups.get("D4")
    b = basis.numeric(group.cayley_tensor(), "D4")
    assert max_err(basis.operator(b), basis.right_regular(group.cayley_tensor())) <= 1e-12
    assert sorted((blk.d, blk.units) for blk in b.blocks) == [(1, 4), (2, 2)]


def test_bad_basis_is_refused_with_a_clear_error():
    group = groups.get("D4")
    good = basis.dihedral(4, "D4")
    blk = good.blocks[1]
    broken = basis.Basis("D4", 8, (good.blocks[0], basis.Block(blk.d, blk.t_in, blk.t_w * 1.001, blk.t_out,
                                                                blk.bias)), "dihedral")
    with pytest.raises(basis.BasisError, match=r"basis of group D4 is off by .*QᵀR\(g\)Q"):
        basis.check(broken, basis.right_regular(group.cayley_tensor()))


def test_group_without_a_basis_is_refused_and_auto_falls_back(monkeypatch):
    """A basis that misses the 1e-12 check (forced here by a negative tolerance) is a clear refusal."""
    group = _custom("fourier-C2xC2-refused", _table([(a, b) for a in range(2) for b in range(2)],
                                                    lambda x, y: ((x[0] + y[0]) % 2, (x[1] + y[1]) % 2)))
    monkeypatch.setattr(basis, "TOLERANCE", -1.0)
    monkeypatch.setattr(basis, "_CACHE", {})
    s, w, b = make_problem("group_conv", group.name, H=5)
    with pytest.raises(RuntimeError, match=r"backend 'fourier' does not support this call: .*basis of group "
                                           r"fourier-C2xC2-refused is off by"):
        equifast.group_conv(s, w, b, group=group.name, padding=1, backend="fourier")
    want = equifast.group_conv(s, w, b, group=group.name, padding=1, backend="reference")
    assert max_err(equifast.group_conv(s, w, b, group=group.name, padding=1), want) <= 1e-10


# ------------------------------------------------------------------------------------------------
# The op against the reference (float64, 1e-10)
# ------------------------------------------------------------------------------------------------
def _assert_matches_reference(s, w, b, **kw):
    out, grads = forward_backward("group_conv", s, w, b, backend="fourier", **kw)
    want, want_grads = forward_backward("group_conv", s.contiguous(), w, b, backend="reference", **kw)
    assert out.dtype == s.dtype and out.shape == want.shape
    assert max_err(out, want) <= 1e-10
    for got, ref in zip(grads, want_grads):
        assert (got is None) == (ref is None)
        if ref is not None:
            assert max_err(got, ref) <= 1e-10
    return out, grads


@pytest.mark.parametrize("name", GROUPS)
def test_matches_reference(name):
    s, w, b = make_problem("group_conv", name, B=2, C_in=3, C_out=4, H=7)
    _assert_matches_reference(s, w, b, group=name, padding=1)


@pytest.mark.parametrize("conv", [dict(stride=2, padding=1), dict(padding=(1, 2, 0, 1)),
                                  dict(padding="same", dilation=2),
                                  dict(stride=(2, 1), padding=(2, 0), dilation=(1, 2)), dict(padding="valid"),
                                  dict(padding=(3, 0, 1, 2))])
@pytest.mark.parametrize("name", ["C4", "D4", "C8"])
def test_stride_padding_dilation(name, conv):
    s, w, b = make_problem("group_conv", name, B=2, C_in=2, C_out=3, H=9, k=3)
    _assert_matches_reference(s, w, b, group=name, **conv)


@pytest.mark.parametrize("conv, flipped", [
    (dict(padding=(1, 2, 0, 1)), (1, 0, 2, 1)),               # stride 1: d*(k-1) - p on every side
    (dict(padding="same", dilation=2), (2, 2, 2, 2)),
    (dict(padding="valid"), (2, 2, 2, 2)),
    (dict(padding=(3, 0, 1, 2)), None),                       # padding beyond the kernel's reach
    (dict(stride=2, padding=1), None),
])
def test_input_gradient_takes_the_flipped_convolution_at_stride_one(conv, flipped):
    """Which input gradients run as a convolution of grad_out with flipped filters (the cases of
    test_stride_padding_dilation, each checked there against the reference)."""
    from equifast.backends.fourier import group_conv as fgc
    plan = check_group(torch.zeros(1, 4, 1, 9, 9), torch.zeros(1, 4, 1, 3, 3), None, "C4", conv.get("stride", 1),
                       conv["padding"], conv.get("dilation", 1), "view")
    assert fgc._flipped_padding(plan, (3, 3)) == flipped


@pytest.mark.parametrize("name", ["C4", "D4"])
@pytest.mark.parametrize("conv", [dict(padding=1), dict(stride=2, padding=(1, 2, 0, 1))])
def test_channels_last_keeps_its_layout(name, conv):
    s, w, b = make_problem("group_conv", name, B=2, C_in=3, C_out=2, H=8)
    out, grads = _assert_matches_reference(to_channels_last(s), w, b, group=name, **conv)
    assert is_channels_last(out) and is_channels_last(grads[0])


@pytest.mark.parametrize("mode", ["units", "grouped"])
@pytest.mark.parametrize("name", ["C4", "D4", "C16", "fourier-S3"])
def test_both_conv_modes_match_reference(monkeypatch, mode, name):
    """One conv per unit and grouped convs over runs (chosen by thread count and group size) agree with
    the reference; ``grouped`` picks the measured-faster one."""
    from equifast.backends.fourier import group_conv as fgc
    monkeypatch.setattr(fgc, "MODE", mode)
    s, w, b = make_problem("group_conv", name, B=2, C_in=3, C_out=2, H=6)
    _assert_matches_reference(s, w, b, group=name, stride=(2, 1), padding=(1, 2, 0, 1))
    _assert_matches_reference(to_channels_last(s), w, None, group=name, padding=1)
    monkeypatch.setattr(fgc, "MODE", "auto")
    units = {g: fgc._units(groups.get(g), "cpu", torch.float64) for g in ("C4", "D4", "C8", "C16")}
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert [fgc.grouped(units[g]) for g in ("C4", "D4", "C8", "C16")] == [False, False, False, True]
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("mix", ["auto", "torch"])
@pytest.mark.parametrize("name", ["C4", "D4", "C16", "fourier-S3"])
def test_both_mix_implementations_match_reference(monkeypatch, mix, name):
    """The group-axis mixes through the compiled kernel (``equifast_C::group_mix``, CPU float32/float64
    where equifast._C is built) and through plain PyTorch agree with the reference, in both layouts and
    both conv modes."""
    from equifast.backends.fourier import group_conv as fgc
    if mix == "auto" and fgc._compiled_mix() is None:
        pytest.skip("equifast._C is not built here: the compiled mix is not available (make build)")
    monkeypatch.setattr(fgc, "MIX", mix)
    calls = []
    if mix == "auto":
        real = fgc._compiled_mix()
        monkeypatch.setattr(fgc, "_compiled_mix", lambda: lambda *a: (calls.append(1), real(*a)))
    for mode in ("units", "grouped"):
        monkeypatch.setattr(fgc, "MODE", mode)
        s, w, b = make_problem("group_conv", name, B=2, C_in=3, C_out=2, H=6)
        _assert_matches_reference(s, w, b, group=name, stride=(2, 1), padding=(1, 2, 0, 1))
        _assert_matches_reference(to_channels_last(s), w, None, group=name, padding=1)
    assert bool(calls) == (mix == "auto")


def test_every_unit_is_in_one_chunk_by_default():
    """One mix in and one mix out per step: the 1-d units and the blocks of D_n and custom groups share
    one chunk (rows = Σ d = n, or 3n/2 for C_n's three-row complex units)."""
    from equifast.backends.fourier import group_conv as fgc
    for name, dims in (("C8", [1] * 11), ("D4", [1] * 4 + [2, 2]), ("fourier-S3", [1, 1, 2, 2])):
        units = fgc._units(groups.get(name), "cpu", torch.float64)
        assert [[u.d for u in c.units] for c in units.chunks] == [dims]
        assert units.chunks[0].t_in.shape == (sum(dims), groups.get(name).order)
        assert units.max_rows(False) == sum(dims)


@pytest.mark.parametrize("rows", [1, 3])
def test_chunked_units_match_reference(monkeypatch, rows):
    """Units mixed in several chunks of at most ``rows`` rows (a 2-d unit on its own when rows = 1, with
    a 1-d unit when rows = 3)."""
    from equifast.backends.fourier import group_conv as fgc
    monkeypatch.setattr(fgc, "CHUNK_ROWS", lambda n: rows)
    monkeypatch.setattr(fgc, "_UNITS", {})
    assert len(fgc._units(groups.get("C8"), "cpu", torch.float64).chunks) == -(-11 // rows)
    d4 = [[u.d for u in c.units] for c in fgc._units(groups.get("D4"), "cpu", torch.float64).chunks]
    assert d4 == ([[1]] * 4 + [[2], [2]] if rows == 1 else [[1, 1, 1], [1, 2], [2]])
    for name in ("C8", "D4"):
        s, w, b = make_problem("group_conv", name, B=2, C_in=3, C_out=2, H=6)
        _assert_matches_reference(s, w, b, group=name, stride=2, padding=(1, 2, 0, 1))


@pytest.mark.parametrize("images", [1, 2])
@pytest.mark.parametrize("name", ["C16", "fourier-S3"])
def test_batch_slices_match_reference(monkeypatch, images, name):
    """Grouped runs over batch slices (of one image each, or of two and one) write every slice of the
    output and input gradient and sum the weight gradient over the slices."""
    from equifast.backends.fourier import group_conv as fgc
    monkeypatch.setattr(fgc, "MODE", "grouped")
    units = fgc._units(groups.get(name), "cpu", torch.float64)
    B, image_bytes = 5, 3 * 6 * 6 * 8                     # a row of one image: 3 channels, 6x6, float64
    monkeypatch.setattr(fgc, "SLICE_BYTES", images * units.max_rows(True) * image_bytes)
    parts = fgc.slices(B, units, True, image_bytes)
    assert [p.stop - p.start for p in parts] == ([1] * 5 if images == 1 else [2, 1, 2]) and parts[0].start == 0
    assert all(a.stop == b.start for a, b in zip(parts, parts[1:])) and parts[-1].stop == B
    assert fgc.slices(B, units, False, image_bytes) == [slice(0, B)]     # one conv per unit: whole batch
    seen = []
    for step in ("_forward_slice", "_backward_slice"):
        real = getattr(fgc, step)
        monkeypatch.setattr(fgc, step, lambda s, *a, _real=real, _step=step: (seen.append((_step, len(s))),
                                                                               _real(s, *a))[1])
    s, w, b = make_problem("group_conv", name, B=B, C_in=3, C_out=2, H=6)     # the output is smaller
    _assert_matches_reference(s, w, b, group=name, stride=(2, 1), padding=(1, 2, 0, 1))
    sizes = [p.stop - p.start for p in parts]
    assert seen == [("_forward_slice", k) for k in sizes] + [("_backward_slice", k) for k in sizes]


def test_batch_slices_low_precision(monkeypatch):
    """bfloat16 through sliced grouped runs: the weight gradient's slices are summed in float32."""
    from equifast.backends.fourier import group_conv as fgc
    monkeypatch.setattr(fgc, "MODE", "grouped")
    s, w, b = make_problem("group_conv", "C16", B=4, C_in=4, C_out=4, H=8, dtype=torch.bfloat16)
    whole = forward_backward("group_conv", s, w, b, group="C16", padding=1, backend="fourier")
    monkeypatch.setattr(fgc, "SLICE_BYTES", 1)
    sliced = forward_backward("group_conv", s, w, b, group="C16", padding=1, backend="fourier")
    ref = forward_backward("group_conv", s.float(), w.float(), b.float(), group="C16", padding=1, backend="reference")
    for got, base, r in zip((sliced[0],) + sliced[1], (whole[0],) + whole[1], (ref[0],) + ref[1]):
        assert got.dtype == torch.bfloat16
        assert max_err(got, r) <= 1.5 * max_err(base, r) + 1e-3


def test_field_major_input_and_no_bias():
    s, w, _ = make_problem("group_conv", "C8", B=2, C_in=3, C_out=2, H=6)
    _assert_matches_reference(s.transpose(1, 2).contiguous().transpose(1, 2), w, None, group="C8", padding=1)


def test_gradient_masks():
    s, w, b = make_problem("group_conv", "D4", H=6)
    for needs in ((True, False, False), (False, True, False), (False, False, True)):
        leaves = [t.clone().requires_grad_(need) for t, need in zip((s, w, b), needs)]
        refs = [t.clone().requires_grad_(need) for t, need in zip((s, w, b), needs)]
        equifast.group_conv(*leaves, group="D4", padding=1, backend="fourier").square().sum().backward()
        equifast.group_conv(*refs, group="D4", padding=1, backend="reference").square().sum().backward()
        for t, r in zip(leaves, refs):
            assert (t.grad is None) == (r.grad is None)
            if r.grad is not None:
                assert max_err(t.grad, r.grad) <= 1e-10


@pytest.mark.parametrize("name", ["C4", "D4", "C8", "fourier-S3"])
def test_runs_off_cpu_on_its_device_in_its_dtype_and_layout(monkeypatch, name):
    """Off the CPU (CUDA on a GPU machine) the backend mixes with plain PyTorch and convolves in the
    input's dtype (float16 too). Checked here on the meta device: every intermediate must live on the
    input's device (a CPU tensor made inside fails), and output and gradients come back in the input's
    shape, dtype and layout. (Meta has no autocast: the backend's switch-off is replaced for the test.)"""
    import contextlib
    from equifast._args import make_plan
    monkeypatch.setattr(torch, "autocast", lambda *a, **k: contextlib.nullcontext())
    n = groups.get(name).order
    plan = make_plan(name, 1, 1, 1, "view", 3, 3, "group_conv")
    for dtype, channels_last in itertools.product((torch.float32, torch.float16, torch.bfloat16), (False, True)):
        s = torch.empty(2, n, 3, 8, 8, device="meta", dtype=dtype)
        s = to_channels_last(s) if channels_last else s
        w, b = torch.empty(4, n, 3, 3, 3, device="meta", dtype=dtype), torch.empty(4, device="meta", dtype=dtype)
        out = fourier.group_conv_forward(s, w, b, plan)
        gs, gw, _ = fourier.group_conv_backward(torch.empty_like(out), s, w, plan, (True, True, False))
        assert out.shape == (2, n, 4, 8, 8) and gs.shape == s.shape and gw.shape == w.shape
        assert {t.device.type for t in (out, gs, gw)} == {"meta"} and {t.dtype for t in (out, gs, gw)} == {dtype}
        assert is_channels_last(out) == is_channels_last(gs) == channels_last


def test_empty_batch():
    s, w, b = make_problem("group_conv", "C4", B=0, H=6)
    s.requires_grad_()
    out = equifast.group_conv(s, w, b, group="C4", padding=1, backend="fourier")
    assert out.shape == (0, 4, 4, 6, 6)
    out.sum().backward()
    assert s.grad.shape == s.shape


def test_float32_matches_reference():
    s, w, b = make_problem("group_conv", "C8", B=2, C_in=8, C_out=8, H=8, dtype=torch.float32)
    out = equifast.group_conv(s, w, b, group="C8", padding=1, backend="fourier")
    ref = equifast.group_conv(s.double(), w.double(), b.double(), group="C8", padding=1, backend="reference")
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["C4", "D4", "C8"])
def test_low_precision_flash_attention_rule(name, dtype):
    """|fourier - fp32 reference| <= k |torch backend - fp32 reference| + 1e-3 on output and gradients:
    k = 2 (flash-attention's rule) for float16, which runs in float32 on CPU and rounds once; k = 2.5 for
    bfloat16, whose convolutions run in bfloat16 and round four times (the mixed input, the mixed
    filters, the convolution's output, the output) where the dense bank rounds once: about 2x the
    error in rms, measured up to 2.2x in max norm on these problems."""
    factor = 2.0 if dtype == torch.float16 else 2.5
    s, w, b = make_problem("group_conv", name, B=2, C_in=4, C_out=4, H=8, dtype=dtype)
    go = torch.randn(2, groups.get(name).order, 4, 8, 8, generator=torch.Generator().manual_seed(1)).to(dtype)
    out, grads = forward_backward("group_conv", s, w, b, grad_out=go, group=name, padding=1, backend="fourier")
    peer, peer_grads = forward_backward("group_conv", s, w, b, grad_out=go, group=name, padding=1, backend="torch")
    ref, ref_grads = forward_backward("group_conv", s.float(), w.float(), b.float(), grad_out=go.float(),
                                      group=name, padding=1, backend="reference")
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    for what, got, p, r in zip(("output", "grad_s", "grad_weight", "grad_bias"), (out,) + grads,
                               (peer,) + peer_grads, (ref,) + ref_grads):
        allowed = factor * max_err(p, r) + 1e-3
        assert max_err(got, r) <= allowed, f"{what}: error {max_err(got, r):.3e} > {allowed:.3e}"


def test_autocast_runs_in_low_precision():
    s, w, b = make_problem("group_conv", "C4", H=6, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = equifast.group_conv(s, w, b, group="C4", padding=1, backend="fourier")
    assert out.dtype == torch.bfloat16


@pytest.mark.parametrize("name", ["C4", "D4", "C16", "fourier-S3", "fourier-Q8"])
@pytest.mark.parametrize("conv", [dict(padding=1), dict(stride=(2, 1), padding=(1, 2, 0, 1), dilation=(1, 2))])
def test_prepared_weight_forward_matches_the_op(name, conv):
    """The eval-mode cache's pair: prepare_weight's filters (no autograd) give group_conv's forward, float64
    to the reference at 1e-10 and bitwise the backend's own forward; a channels_last input too."""
    from equifast.backends.fourier import group_conv as fgc
    s, w, b = make_problem("group_conv", name, B=2, C_in=3, C_out=4, H=8)
    plan = check_group(s, w, b, name, conv.get("stride", 1), conv["padding"], conv.get("dilation", 1), "view")
    prepared = fgc.prepare_weight(w.requires_grad_(), groups.get(name), s.device, s.dtype)
    assert all(not h.requires_grad for h in prepared.hats)
    want = equifast.group_conv(s, w.detach(), b, group=name, backend="reference", **conv)
    for inp in (s, to_channels_last(s)):
        out = fgc.forward_prepared(inp, prepared, b, plan)
        assert out.shape == want.shape and max_err(out, want) <= 1e-10
        assert torch.equal(out, fgc.group_conv_forward(inp, w.detach(), b, plan))
    assert max_err(fgc.forward_prepared(s, prepared, None, plan),
                   equifast.group_conv(s, w.detach(), None, group=name, backend="reference", **conv)) <= 1e-10


def test_prepared_weight_low_precision_and_bad_input():
    from equifast.backends.fourier import group_conv as fgc
    s, w, b = make_problem("group_conv", "C8", B=2, C_in=4, C_out=4, H=8, dtype=torch.bfloat16)
    plan = check_group(s, w, b, "C8", 1, 1, 1, "view")
    prepared = fgc.prepare_weight(w, groups.get("C8"), s.device, torch.bfloat16)
    out = fgc.forward_prepared(s, prepared, b, plan)
    assert out.dtype == torch.bfloat16 and torch.equal(out, fgc.group_conv_forward(s, w, b, plan))
    with pytest.raises(ValueError, match=r"forward_prepared: s must be a \[B, 8, 4, H, W\] stack of torch.bfloat16"):
        fgc.forward_prepared(s.float(), prepared, b, plan)
    with pytest.raises(ValueError, match=r"prepare_weight: weight must be \[C_out, 4, C_in, kh, kw\] for group C4"):
        fgc.prepare_weight(w, groups.get("C4"), s.device, s.dtype)


# ------------------------------------------------------------------------------------------------
# Autograd machinery
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["C4", "D4", "fourier-S3"])
def test_gradcheck(name):
    s, w, b = make_problem("group_conv", name, B=1, C_in=2, C_out=2, H=5)
    f = lambda i, k, c: equifast.group_conv(i, k, c, group=name, stride=(2, 1), padding=1,  # noqa: E731
                                            backend="fourier")
    assert torch.autograd.gradcheck(f, tuple(t.requires_grad_() for t in (s, w, b)), eps=1e-6, atol=1e-5,
                                    fast_mode=True)


def test_opcheck():
    s, w, b = make_problem("group_conv", "D4", B=2, C_in=2, C_out=3, H=6, dtype=torch.float32)
    torch.library.opcheck(torch.ops.equifast.group_conv.default,
                          (s.requires_grad_(), w.requires_grad_(), b.requires_grad_(), "D4", [2, 1], [1, 1, 0, 1],
                           [1, 1], "view", "fourier"))


def test_compile_fullgraph_matches_eager():
    s, w, b = make_problem("group_conv", "C8", B=2, C_in=3, C_out=4, H=6, dtype=torch.float32)
    f = lambda i, k, c: equifast.group_conv(i, k, c, group="C8", padding=1, backend="fourier")  # noqa: E731
    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    leaves = [t.clone().requires_grad_() for t in (s, w, b)]
    out = compiled(*leaves)
    out.square().sum().backward()
    want, want_grads = forward_backward("group_conv", s, w, b, grad_out=2 * out.detach(), group="C8", padding=1,
                                        backend="fourier")
    torch.testing.assert_close(out.detach(), want)
    for t, g in zip(leaves, want_grads):
        torch.testing.assert_close(t.grad, g)


def test_export_round_trip():
    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(make_problem("group_conv", "D4", C_in=3, C_out=2, dtype=torch.float32)[1])

        def forward(self, s):
            return equifast.group_conv(s, self.w, group="D4", padding=1, backend="fourier")

    layer, s = Layer(), make_problem("group_conv", "D4", C_in=3, H=6, dtype=torch.float32)[0]
    exported = torch.export.export(layer, (s,))
    torch.testing.assert_close(exported.module()(s), layer(s))
    assert any("equifast.group_conv" in str(node.target) for node in exported.graph.nodes)


# ------------------------------------------------------------------------------------------------
# Equivariance, frames and refusals
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["C4", "D4", "C8", "fourier-S3"])
def test_equivariant_under_the_regular_action(name):
    group = groups.get(name)
    s, w, b = make_problem("group_conv", name, B=1, C_in=2, C_out=3, H=7)
    f = lambda t: equifast.group_conv(t, w, b, group=name, padding=1, backend="fourier")  # noqa: E731
    for g in range(group.order):
        assert max_err(f(group.act_regular(s, g)), group.act_regular(f(s), g)) <= 1e-10


def test_canonical_frame_where_it_equals_the_view_frame():
    """1x1 kernels are left unchanged by every rotation and flip: canonical = view, run exactly."""
    s, w, b = make_problem("group_conv", "D4", H=6, k=1)
    _assert_matches_reference(s, w, b, group="D4", frame="canonical")
    s, w, b = make_problem("group_conv", "fourier-S3", H=6, k=3)     # trivial image action
    _assert_matches_reference(s, w, b, group="fourier-S3", frame="canonical", padding=1)


def test_canonical_frame_is_refused_clearly_and_auto_falls_back():
    s, w, b = make_problem("group_conv", "C4", H=6)
    with pytest.raises(RuntimeError, match=r"group_conv: backend 'fourier' does not support this call: "
                                           r"fourier: frame='canonical' is supported only where"):
        equifast.group_conv(s, w, b, group="C4", padding=1, frame="canonical", backend="fourier")
    plan = check_group(s, w, b, "C4", 1, 1, 1, "canonical")
    assert equifast.backends.resolve("auto", plan, s, w, "group_conv").NAME != "fourier"
    out = equifast.group_conv(s, w, b, group="C4", padding=1, frame="canonical")
    ref = equifast.group_conv(s, w, b, group="C4", padding=1, frame="canonical", backend="reference")
    assert max_err(out, ref) <= 1e-10


def test_lift_conv_is_refused_clearly():
    x, w, b = make_problem("lift_conv", "C4", H=6)
    with pytest.raises(RuntimeError, match=r"lift_conv: backend 'fourier' does not support this call: "
                                           r"fourier: lift_conv is not supported"):
        equifast.lift_conv(x, w, b, group="C4", padding=1, backend="fourier")
    ok, reason = fourier.supports(check_group(*make_problem("group_conv", "C4", H=6), "C4", 1, 1, 1, "view"),
                                  x, w)
    assert not ok and "lifting convolution has no sum over the group" in reason


def _auto_pick(name, C, B, HW, k=3):
    n = groups.get(name).order
    s, w = torch.empty(B, n, C, HW, HW), torch.empty(C, n, C, k, k)
    return equifast.backends.resolve("auto", check_group(s, w, None, name, 1, k // 2, 1, "view"), s, w,
                                     "group_conv").NAME


def test_auto_takes_fourier_only_where_measured_faster():
    """The rule set from bench/fourier_group_conv.py: large 3x3 layers of order >= 4 (one thread or
    two); never 1x1 kernels or small layers."""
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert _auto_pick("C4", 32, 8, 32) == "fourier" and _auto_pick("D4", 32, 8, 32) == "fourier"
        assert _auto_pick("C4", 16, 32, 8) != "fourier"          # Figure3Net's conv2 on 8x8 digits
        assert _auto_pick("D4", 64, 8, 32, k=1) != "fourier"     # 1x1 shortcut
        assert _auto_pick("C2", 64, 8, 32) != "fourier"
        torch.set_num_threads(2)
        assert _auto_pick("C4", 32, 8, 32) == "fourier" and _auto_pick("C8", 32, 8, 32) == "fourier"
        assert _auto_pick("C4", 16, 32, 8) != "fourier"
    finally:
        torch.set_num_threads(old)


def test_bad_arguments_are_reported_by_the_op():
    s, w, b = make_problem("group_conv", "C4", H=6)
    with pytest.raises(ValueError, match="group axis of size 4"):
        equifast.group_conv(s, w, b, group="D4", backend="fourier")
