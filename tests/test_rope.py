import math

import torch

from videomla_app.rope import RopeSpec, apply_rope, grid_positions, rope_angles, wan_axis_dims, window_local_frames


def test_wan_split_and_decoupled_subset_are_highest_frequencies():
    assert wan_axis_dims(128) == (44, 42, 42)
    full, sub = RopeSpec.full(128), RopeSpec.decoupled(128, (6, 5, 5))
    assert full.dim == 128 and sub.dim == 32
    f, s = full.frequencies(), sub.frequencies()
    torch.testing.assert_close(s[:6], f[:6])  # temporal pairs 0..5
    torch.testing.assert_close(s[6:11], f[22:27])  # height pairs 0..4
    torch.testing.assert_close(s[11:], f[43:48])  # width pairs 0..4
    assert math.isclose(f[1].item(), 10000 ** (-2 / 44), rel_tol=1e-6)


def test_rotation_preserves_norm_and_is_relative():
    spec = RopeSpec.decoupled(128, (6, 5, 5))
    q, k = torch.randn(32), torch.randn(32)
    def rot(x, t, h, w):
        c, s = rope_angles(spec, torch.tensor([[t, h, w]]))
        return apply_rope(x[None], c, s)[0]
    torch.testing.assert_close(rot(q, 7, 3, 2).norm(), q.norm())
    a = rot(q, 10, 4, 5) @ rot(k, 7, 1, 5)
    b = rot(q, 203, 9, 6) @ rot(k, 200, 6, 6)  # same offsets, far later in the video
    assert abs(a - b) < 1e-4


def test_angles_are_fp32_from_integer_positions():
    spec = RopeSpec.full(128)
    c, s = rope_angles(spec, torch.tensor([[100000, 0, 0]]))
    assert c.dtype == torch.float32
    assert abs(c[0, 0].item() - math.cos(100000.0)) < 1e-2  # fp32 angle, not bf16


def test_grid_positions_frame_major():
    pos = grid_positions(torch.tensor([5, 6]), 2, 3)
    assert pos.shape == (12, 3)
    assert pos[0].tolist() == [5, 0, 0] and pos[5].tolist() == [5, 1, 2] and pos[6].tolist() == [6, 0, 0]


def test_window_local_frames_keeps_sink_and_packs_window():
    # sink 1, window starts at frame 40: frames 40..49 become 1..10, the sink stays 0
    assert window_local_frames([0, 40, 41, 49], 1, 40) == [0, 1, 2, 10]
    # before the window slides, local == absolute
    assert window_local_frames([0, 1, 2, 3], 1, 1) == [0, 1, 2, 3]
