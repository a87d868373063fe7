"""Groups: tables, image actions, stack actions, custom groups."""
import math

import pytest
import torch

from equifast import groups

ALL_SMALL = ["C1", "C2", "C3", "C4", "C6", "C8", "D1", "D2", "D3", "D4", "D8"]


@pytest.mark.parametrize("name", ALL_SMALL)
def test_tables_are_a_group(name):
    G = groups.get(name)
    n = G.order
    assert n == (int(name[1:]) * (2 if name[0] == "D" else 1))
    for a in range(n):
        assert G.cayley[0][a] == a == G.cayley[a][0]
        assert G.cayley[a][G.inverse[a]] == 0 == G.cayley[G.inverse[a]][a]
        for b in range(n):
            for c in range(n):
                assert G.cayley[G.cayley[a][b]][c] == G.cayley[a][G.cayley[b][c]]


def test_lookup_returns_same_object_and_rejects_unknown():
    assert groups.get("C4") is groups.get("C4") is groups.cyclic(4)
    assert groups.get(groups.get("D4")) is groups.get("D4")
    with pytest.raises(ValueError, match="unknown group 'Q8'") as info:
        groups.get("Q8")
    assert "C4" not in str(info.value).split("custom group")[1]     # built-in groups are not listed as custom
    with pytest.raises(ValueError, match="unknown group 'C0'"):
        groups.get("C0")
    with pytest.raises(TypeError, match="group must be a name"):
        groups.get(4)
    with pytest.raises(ValueError, match="order n >= 1"):
        groups.cyclic(0)


def test_c4_matches_rot90_and_d4_flip_first():
    x = torch.randn(2, 3, 5, 5)
    C4, D4 = groups.get("C4"), groups.get("D4")
    for k in range(4):
        assert torch.equal(C4.act(x, k), torch.rot90(x, k, dims=(-2, -1)))
        assert torch.equal(D4.act(x, k), torch.rot90(x, k, dims=(-2, -1)))
        assert torch.equal(D4.act(x, 4 + k), torch.rot90(torch.flip(x, dims=(-1,)), k, dims=(-2, -1)))


def test_c2_d1_d2_on_non_square_images():
    x = torch.randn(1, 2, 4, 7)
    assert torch.equal(groups.get("C2").act(x, 1), torch.rot90(x, 2, dims=(-2, -1)))
    assert torch.equal(groups.get("D1").act(x, 1), torch.flip(x, dims=(-1,)))
    assert torch.equal(groups.get("D2").act(x, 3), torch.rot90(torch.flip(x, dims=(-1,)), 2, dims=(-2, -1)))


@pytest.mark.parametrize("name", ["C4", "D4"])
def test_quarter_turn_groups_need_square_images(name):
    with pytest.raises(ValueError, match="square"):
        groups.get(name).act(torch.randn(1, 1, 4, 5), 1)


@pytest.mark.parametrize("name", ALL_SMALL)
@pytest.mark.parametrize("size", [(5, 5), (6, 6)])
def test_action_is_a_left_action(name, size):
    """act(act(x, h), g) == act(x, g·h): exactly for exact groups, on the interior for interpolated ones."""
    G = groups.get(name)
    x = torch.randn(2, *size, dtype=torch.float64)
    for g in range(G.order):
        for h in range(G.order):
            lhs, rhs = G.act(G.act(x, h), g), G.act(x, G.cayley[g][h])
            if G.exact:
                assert torch.equal(lhs, rhs)
    assert G.exact == (4 % (G.order // (2 if name[0] == "D" else 1)) == 0)


def test_interpolated_rotation_of_a_smooth_image_is_close_to_exact():
    """C8 rotation by 90° (element 2) equals rot90 up to interpolation of a smooth image."""
    H = 21
    r = torch.arange(H, dtype=torch.float64)
    img = torch.exp(-((r[:, None] - 8) ** 2 + (r[None, :] - 12) ** 2) / 18.0)
    C8 = groups.get("C8")
    assert torch.allclose(C8.act(img, 2), torch.rot90(img, 1), atol=1e-9)
    rotated45 = C8.act(img, 1)
    # the bump's mass is preserved (it stays inside the image) and its centre turns by 45°
    assert abs(rotated45.sum() / img.sum() - 1) < 0.02
    rows, cols = torch.meshgrid(r, r, indexing="ij")
    cy = float((rotated45 * rows).sum() / rotated45.sum()) - 10
    cx = float((rotated45 * cols).sum() / rotated45.sum()) - 10
    angle = math.degrees(math.atan2(-cy, cx)) - math.degrees(math.atan2(2, 2))
    assert abs(angle - 45) < 2


def test_sampling_tables_shapes_and_weights():
    index, weight = groups.get("C8").sampling_tables(7, 7)
    assert index.shape == weight.shape == (8, 49, 4)
    assert torch.allclose(weight[0].sum(-1), torch.ones(49, dtype=torch.float64))
    assert bool((weight >= 0).all())
    perms = groups.get("D4").permutations(6, 6)
    assert perms.shape == (8, 36)
    with pytest.raises(ValueError, match="interpolates"):
        groups.get("C8").permutations(6, 6)


@pytest.mark.parametrize("name", ["C4", "D4", "D2"])
def test_stack_actions_are_actions(name):
    G = groups.get(name)
    n = G.order
    s = torch.randn(2, n, 3, 6, 6)
    for g in range(n):
        for h in range(n):
            for frame in ("view", "canonical"):
                lhs = G.act_stack(G.act_stack(s, h, frame), g, frame)
                assert torch.equal(lhs, G.act_stack(s, G.cayley[g][h], frame))
    g = 1
    expected = torch.stack([s[:, G.cayley[G.inverse[g]][h]] for h in range(n)], 1)
    assert torch.equal(G.act_regular(s, g), expected)
    assert torch.equal(G.act_canonical(s, g), G.act(expected, g))
    with pytest.raises(ValueError, match=r"expected a stack \[B, %d" % n):
        G.act_regular(torch.randn(2, n + 1, 3, 6, 6), 1)


def test_act_all_and_act_each_match_act():
    G = groups.get("C8")
    x = torch.randn(3, 2, 9, 9)
    allv = G.act_all(x)
    each = G.act_each(x.expand(8, *x.shape))
    for g in range(8):
        assert torch.allclose(allv[g], G.act(x, g))
        assert torch.allclose(each[g], G.act(x, g))


def test_custom_group_from_pixel_permutation_and_sampling_table():
    # Z2 acting by a vertical flip, given as a pixel permutation
    def vflip(g, H, W):
        idx = torch.arange(H * W).reshape(H, W)
        return (idx.flip(0) if g == 1 else idx).reshape(-1)

    G = groups.custom("test-vflip", [[0, 1], [1, 0]], vflip)
    assert G.exact and groups.get("test-vflip") is G
    x = torch.randn(2, 3, 4, 5)
    assert torch.equal(G.act(x, 1), x.flip(-2))

    # the same group given as a sampling table with weights (a half-half blend is not a homomorphism,
    # so use the exact table in the (index, weight) form)
    def vflip_table(g, H, W):
        idx = vflip(g, H, W)[:, None]
        return idx, torch.ones_like(idx, dtype=torch.float64)

    G2 = groups.custom("test-vflip-table", [[0, 1], [1, 0]], vflip_table, exact=True)
    assert torch.equal(G2.act(x, 1), x.flip(-2))
    with pytest.raises(ValueError, match="already registered"):
        groups.custom("test-vflip", [[0, 1], [1, 0]], vflip)


def test_custom_group_axioms_are_checked():
    ident = lambda g, H, W: torch.arange(H * W)  # noqa: E731
    with pytest.raises(ValueError, match="identity"):
        groups.custom("bad1", [[1, 0], [0, 1]], ident)
    with pytest.raises(ValueError, match="Latin square"):
        groups.custom("bad2", [[0, 1, 2], [1, 1, 2], [2, 2, 0]], ident)
    with pytest.raises(ValueError, match="associative"):
        # a Latin square with identity 0 that is not associative (order 5 loop)
        loop = [[0, 1, 2, 3, 4], [1, 0, 3, 4, 2], [2, 4, 0, 1, 3], [3, 2, 4, 0, 1], [4, 3, 1, 2, 0]]
        groups.custom("bad3", loop, ident)
    with pytest.raises(ValueError, match="square n x n"):
        groups.custom("bad4", [[0, 1]], ident)


def test_custom_group_action_must_match_cayley_table():
    def wrong(g, H, W):  # claims Z3 but acts by a flip of order 2
        idx = torch.arange(H * W).reshape(H, W)
        return (idx.flip(1) if g else idx).reshape(-1)

    G = groups.custom("test-wrong-z3", [[(a + b) % 3 for b in range(3)] for a in range(3)], wrong)
    with pytest.raises(ValueError, match="not compatible with the cayley table"):
        G.act(torch.randn(1, 3, 3), 1)


def test_layers_with_groups_deepcopy_and_pickle(tmp_path):
    import copy
    from equifast import nn as enn
    net = torch.nn.Sequential(enn.LiftConv2d(1, 3, 3, group="D4", padding=1),
                              enn.GroupConv2d(3, 2, 3, group="D4", padding=1))
    x = torch.randn(2, 1, 8, 8)
    twin = copy.deepcopy(net)
    assert twin[0].group is groups.get("D4")
    assert torch.equal(twin(x), net(x))
    torch.save(net, tmp_path / "net.pt")
    loaded = torch.load(tmp_path / "net.pt", weights_only=False)
    assert loaded[1].group is groups.get("D4")
    assert torch.equal(loaded(x), net(x))
