"""Rectified-flow sampling: x_t = (1 - s) x0 + s eps with s = t / 1000 (PAPER §6, App. C.1).

The model predicts the flow ``eps - x0``. Timesteps follow Self-Forcing's FlowMatchScheduler
(shift 5, sigma_min 0, extra_one_step): the 1000-entry training table is
``shift*s / (1 + (shift-1)*s)`` over ``s = linspace(1, 0, 1001)[:-1]``, and the few-step list
[1000, 750, 500, 250] is *warped* through that table to [1000, 937.5, 833.3, 625.0] (PAPER §7).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .config import SamplerConfig


def shift_sigma(s: torch.Tensor | float, shift: float) -> torch.Tensor:
    """Timestep shift: s -> shift*s / (1 + (shift - 1)*s)."""
    s = torch.as_tensor(s, dtype=torch.float64)
    return shift * s / (1 + (shift - 1) * s)


SOLVERS = ("renoise", "euler")


class FlowSampler:
    """Step list, x0 <-> flow conversions and the step rule (re-noising or Euler)."""

    def __init__(self, cfg: SamplerConfig) -> None:
        self.cfg = cfg
        n = cfg.num_train_timesteps
        self.train_timesteps = shift_sigma(torch.linspace(1.0, 0.0, n + 1)[:-1], cfg.shift) * n  # [n], fp64
        if cfg.solver not in SOLVERS:
            raise ValueError(f"unknown solver {cfg.solver!r}; known: {', '.join(SOLVERS)}")
        self.timesteps: list[float] = self._timesteps(cfg.steps)
        # The first chunk's own step list (``SamplerConfig.first_steps``), the same list when unset.
        first = cfg.first_steps
        self.first_timesteps: list[float] = self._timesteps(first) if first else self.timesteps
        w = cfg.warm_start
        if not (math.isfinite(w) and 0.0 <= w <= n):
            raise ValueError(f"warm start must be a timestep in [0, {n}] (0 = off), got {w}")
        # A warm-started chunk: the start timestep, then the sampler's own steps below it.
        self.warm_timesteps: list[float] = [float(w), *(t for t in self.timesteps if t < w)] if w else self.timesteps

    def _timesteps(self, steps: tuple[int, ...]) -> list[float]:
        n, cfg = self.cfg.num_train_timesteps, self.cfg
        if any(not 0 < s <= n for s in steps) or list(steps) != sorted(steps, reverse=True):
            raise ValueError(f"denoising steps must decrease within (0, {n}]: {steps}")
        if cfg.warp:
            table = torch.cat([self.train_timesteps, torch.zeros(1, dtype=torch.float64)])
            return [float(t) for t in table[torch.tensor([n - s for s in steps])]]
        return [float(t) for t in steps]

    def sigma(self, t: float | torch.Tensor) -> torch.Tensor | float:
        return t / self.cfg.num_train_timesteps

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """x_t = (1 - sigma) x0 + sigma noise; t scalar or broadcastable per frame ([B, F, 1, 1, 1])."""
        s = self.sigma(t)
        return (1 - s) * x0 + s * noise

    def x0_from_flow(self, x_t: torch.Tensor, flow: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        return x_t - self.sigma(t) * flow

    def flow_from_x0(self, x_t: torch.Tensor, x0: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        return (x_t - x0) / self.sigma(t)

    def flow_target(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Training target of the flow-matching loss."""
        return noise - x0

    def step(self, x_t: torch.Tensor, flow: torch.Tensor, t: float, t_next: float,
             noise: Callable[[], torch.Tensor]) -> torch.Tensor:
        """x at ``t_next`` from x at ``t`` and the model's flow, by the configured solver.

        ``noise`` is only called by the re-noising solver, so the Euler solver draws nothing from
        the generation RNG (one chunk's noise is all it needs).
        """
        if self.cfg.solver == "euler":
            return x_t + (self.sigma(t_next) - self.sigma(t)) * flow
        return self.add_noise(self.x0_from_flow(x_t, flow, t), noise(), t_next)
