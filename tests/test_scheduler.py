import pytest
import torch

from videomla_app.config import SamplerConfig
from videomla_app.scheduler import FlowSampler


def test_warped_steps_match_self_forcing():
    s = FlowSampler(SamplerConfig())
    assert s.timesteps == pytest.approx([1000.0, 937.5, 833.3333, 625.0], abs=1e-3)


def test_unwarped_steps_are_the_list():
    assert FlowSampler(SamplerConfig(warp=False)).timesteps == [1000.0, 750.0, 500.0, 250.0]


def test_noise_and_x0_round_trip():
    s = FlowSampler(SamplerConfig())
    x0, eps = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    for t in s.timesteps:
        xt = s.add_noise(x0, eps, t)
        flow = s.flow_target(x0, eps)
        torch.testing.assert_close(s.x0_from_flow(xt, flow, t), x0)
        torch.testing.assert_close(s.flow_from_x0(xt, x0, t), flow)
    torch.testing.assert_close(s.add_noise(x0, eps, 1000.0), eps)


def test_bad_step_lists_are_rejected():
    for steps in [(500, 750), (0,), (1200, 500)]:
        with pytest.raises(ValueError):
            FlowSampler(SamplerConfig(steps=steps))


def test_euler_step_follows_the_straight_path_exactly():
    """With the true flow eps - x0 an Euler step lands on the same noisy point the forward process
    gives (rectified-flow paths are straight), and it never draws noise."""
    s = FlowSampler(SamplerConfig(warp=False, solver="euler"))
    x0, eps = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    flow = s.flow_target(x0, eps)
    x = s.add_noise(x0, eps, s.timesteps[0])

    def no_noise():
        raise AssertionError("the Euler solver drew noise")

    for t, t_next in zip(s.timesteps, s.timesteps[1:]):
        x = s.step(x, flow, t, t_next, no_noise)
        torch.testing.assert_close(x, s.add_noise(x0, eps, t_next))


def test_renoise_step_redraws_the_noise():
    s = FlowSampler(SamplerConfig())
    x0, eps, fresh = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    t, t_next = s.timesteps[0], s.timesteps[1]
    x = s.step(s.add_noise(x0, eps, t), s.flow_target(x0, eps), t, t_next, lambda: fresh)
    torch.testing.assert_close(x, s.add_noise(x0, fresh, t_next))


def test_unknown_solver_is_rejected():
    with pytest.raises(ValueError, match="unknown solver 'heun'"):
        FlowSampler(SamplerConfig(solver="heun"))


def test_warm_start_runs_the_steps_below_its_timestep():
    unwarped = SamplerConfig(warp=False)
    assert FlowSampler(SamplerConfig(warp=False, warm_start=750)).warm_timesteps == [750.0, 500.0, 250.0]
    assert FlowSampler(SamplerConfig(warp=False, warm_start=600)).warm_timesteps == [600.0, 500.0, 250.0]
    assert FlowSampler(SamplerConfig(warp=False, warm_start=100)).warm_timesteps == [100.0]
    assert FlowSampler(unwarped).warm_timesteps == [1000.0, 750.0, 500.0, 250.0]  # 0 = off
    for bad in (-1.0, 1001.0, float("nan")):
        with pytest.raises(ValueError, match="warm start"):
            FlowSampler(SamplerConfig(warm_start=bad))


def test_first_chunk_steps_default_to_the_steps_and_follow_the_same_warp():
    assert FlowSampler(SamplerConfig(warp=False)).first_timesteps == [1000.0, 750.0, 500.0, 250.0]
    s = FlowSampler(SamplerConfig(warp=False, first_steps=(1000, 875, 750, 625, 500, 375, 250, 125)))
    assert s.first_timesteps == [1000.0, 875.0, 750.0, 625.0, 500.0, 375.0, 250.0, 125.0]
    assert s.timesteps == [1000.0, 750.0, 500.0, 250.0]  # later chunks keep theirs
    warped = FlowSampler(SamplerConfig(first_steps=(1000, 750, 500, 250)))
    assert warped.first_timesteps == pytest.approx([1000.0, 937.5, 833.3333, 625.0], abs=1e-3)
    for steps in [(500, 750), (0,), (1200, 500)]:
        with pytest.raises(ValueError, match="denoising steps"):
            FlowSampler(SamplerConfig(first_steps=steps))
