"""The definitions of the ops, written out independently of the backends (rot90, roll, conv2d), on
the default backend. Every backend against the reference, over groups, frames, dtypes, layouts and
convolution arguments, is tests/test_conformance.py."""
import torch

import equifast
from equifast import groups


def test_output_shapes_follow_conv2d():
    x = torch.randn(2, 3, 11, 11)
    w = torch.randn(4, 3, 3, 2)
    for stride, padding, dilation in [(1, 0, 1), (2, 1, 1), (3, (2, 1), 2), (1, "same", 2), (2, "valid", 1)]:
        expect = torch.nn.functional.conv2d(x, w, stride=stride, padding=padding, dilation=dilation).shape
        out = equifast.lift_conv(x, w, group="D2", stride=stride, padding=padding, dilation=dilation)
        assert out.shape == (2, 4, *expect[1:])


def test_bias_is_shared_by_all_copies():
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64)
    diff = equifast.lift_conv(x, w, b, group="C4") - equifast.lift_conv(x, w, group="C4")
    torch.testing.assert_close(diff, b.view(1, 1, 3, 1, 1).expand_as(diff))


def test_view_frame_definition_on_one_example():
    """out[:, g] = conv2d(act(x, g⁻¹), w), written out independently with rot90."""
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    w = torch.randn(4, 3, 2, 3, dtype=torch.float64)
    out = equifast.lift_conv(x, w, group="C4", stride=2, padding=1)
    for g in range(4):
        expect = torch.nn.functional.conv2d(torch.rot90(x, -g, dims=(-2, -1)), w, stride=2, padding=1)
        torch.testing.assert_close(out[:, g], expect)


def test_canonical_frame_definition_and_relation_to_view_frame():
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    canon = equifast.lift_conv(x, w, group="C4", padding=1, frame="canonical")
    view = equifast.lift_conv(x, w, group="C4", padding=1, frame="view")
    for g in range(4):
        expect = torch.nn.functional.conv2d(x, torch.rot90(w, g, dims=(-2, -1)), padding=1)
        torch.testing.assert_close(canon[:, g], expect)
        # odd kernel, same padding, stride 1: canonical[:, g] == act(view[:, g], g)
        torch.testing.assert_close(canon[:, g], torch.rot90(view[:, g], g, dims=(-2, -1)))


def test_group_conv_view_frame_is_a_cyclic_shift_for_c4():
    s = torch.randn(2, 4, 3, 7, 7, dtype=torch.float64)
    w = torch.randn(5, 4, 3, 3, 3, dtype=torch.float64)
    out = equifast.group_conv(s, w, group="C4", padding=1)
    for g in range(4):
        shifted = torch.roll(s, -g, dims=1)  # s[:, (g + h) % 4]
        expect = torch.nn.functional.conv2d(shifted.reshape(2, 12, 7, 7), w.reshape(5, 12, 3, 3), padding=1)
        torch.testing.assert_close(out[:, g], expect)


def test_custom_group_runs_through_the_ops():
    def hflip(g, H, W):
        idx = torch.arange(H * W).reshape(H, W)
        return (idx.flip(1) if g == 1 else idx).reshape(-1)

    G = groups.get("test-ops-hflip") if "test-ops-hflip" in groups.names() else \
        groups.custom("test-ops-hflip", [[0, 1], [1, 0]], hflip)
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    ref = equifast.lift_conv(x, w, group=G, padding=1, backend="reference")
    torch.testing.assert_close(equifast.lift_conv(x, w, group="test-ops-hflip", padding=1, backend="torch"), ref)
    torch.testing.assert_close(ref, equifast.lift_conv(x, w, group="D1", padding=1))
