"""Closed-form object trajectories that can run forever, and how each motion is laid out.

Positions are in frame units (x right, y down, both in [0, 1)) on a torus: linear motions wrap
around the edges and are drawn on both sides while crossing, so an object never leaves the frame.
Every trajectory is a pure function of time, which is what makes chunked (streaming) rendering
equal to a full render and lets a clip run for hours.

`plan(...)` builds the trajectory a spec asks for, either fresh (first segment) or starting from
the objects' current positions (a timeline change), laid out so objects never overlap: they share
one velocity (linear), sit at evenly spaced phases of one orbit (circling), in separate lanes
(bouncing) or at separate anchors (hovering).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from .scenes import FLOOR_Y

SIZE_RADIUS = {"small": 0.052, "medium": 0.074, "large": 0.096}  # object radius, frame units
SPEED_FACTOR = {"slow": 0.6, "normal": 1.0, "fast": 1.6}
LINEAR_SPEED = 0.24  # frame widths per second at normal speed
ORBIT_PERIOD = 3.6  # seconds per turn at normal speed
ORBIT_RADIUS = 0.27
BOUNCE_PERIOD = 1.2  # seconds per hop at normal speed
BOUNCE_HEIGHT = 0.4
HOVER_AMP = (0.014, 0.028)  # x, y bobbing amplitude
HOVER_PERIOD = (3.3, 2.3)  # seconds, at normal speed
BLEND_SECONDS = 1.0  # how long a timeline change takes to settle into the new motion

DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}


class Path(Protocol):
    n: int

    def __call__(self, t: np.ndarray) -> np.ndarray:
        """Positions [T, n, 2] at times t [T] (seconds)."""


def wrap_delta(d: np.ndarray) -> np.ndarray:
    """Shortest displacement on the unit torus."""
    return (d + 0.5) % 1.0 - 0.5


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


@dataclass(frozen=True, eq=False)
class Linear:
    t0: float
    start: np.ndarray  # [n, 2]
    velocity: np.ndarray  # [2], frame units per second

    @property
    def n(self) -> int:
        return len(self.start)

    def __call__(self, t: np.ndarray) -> np.ndarray:
        dt = (np.asarray(t, dtype=np.float64) - self.t0)[:, None, None]
        return (self.start[None] + dt * self.velocity[None, None]) % 1.0


@dataclass(frozen=True, eq=False)
class Orbit:
    t0: float
    centre: np.ndarray  # [2]
    radius: float
    phases: np.ndarray  # [n] radians at t0
    omega: float  # radians per second, sign = direction

    @property
    def n(self) -> int:
        return len(self.phases)

    def __call__(self, t: np.ndarray) -> np.ndarray:
        ang = self.phases[None] + self.omega * (np.asarray(t, dtype=np.float64) - self.t0)[:, None]
        return np.stack([self.centre[0] + self.radius * np.cos(ang),
                         self.centre[1] + self.radius * np.sin(ang)], axis=-1) % 1.0


@dataclass(frozen=True, eq=False)
class Bounce:
    """Parabolic hops (constant gravity) on the floor, each object in its own lane."""

    t0: float
    xs: np.ndarray  # [n]
    rest_y: np.ndarray  # [n], centre height when touching the floor
    height: float
    u0: np.ndarray  # [n], hop phase at t0 in [0, 1)
    period: float

    @property
    def n(self) -> int:
        return len(self.xs)

    def __call__(self, t: np.ndarray) -> np.ndarray:
        u = (self.u0[None] + (np.asarray(t, dtype=np.float64) - self.t0)[:, None] / self.period) % 1.0
        y = self.rest_y[None] - 4.0 * self.height * u * (1.0 - u)
        return np.stack([np.broadcast_to(self.xs[None], y.shape), y], axis=-1) % 1.0


@dataclass(frozen=True, eq=False)
class Hover:
    """Gentle bobbing around fixed anchors; the offset is zero at t0 so a change starts in place."""

    t0: float
    base: np.ndarray  # [n, 2]
    amp: np.ndarray  # [2]
    omega: np.ndarray  # [2]
    phase: np.ndarray  # [n, 2]

    @property
    def n(self) -> int:
        return len(self.base)

    def __call__(self, t: np.ndarray) -> np.ndarray:
        dt = (np.asarray(t, dtype=np.float64) - self.t0)[:, None, None]
        off = self.amp * (np.sin(self.omega * dt + self.phase[None]) - np.sin(self.phase[None]))
        return (self.base[None] + off) % 1.0


@dataclass(frozen=True, eq=False)
class Blend:
    """Hand-over from an old path to a new one: positions and velocities stay continuous.

    The first `keep` objects move from where the old path has them towards the new path with a
    smoothstep weight over `tau` seconds (along the shortest way on the torus); the rest follow
    the new path directly (they are fading in).
    """

    t0: float
    tau: float
    old: Callable[[np.ndarray], np.ndarray]
    new: Path
    keep: int

    @property
    def n(self) -> int:
        return self.new.n

    def __call__(self, t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        out = self.new(t)
        sel = t < self.t0 + self.tau
        if self.keep and sel.any():
            ts = t[sel]
            old = self.old(ts)[:, : self.keep]
            w = smoothstep((ts - self.t0) / self.tau)[:, None, None]
            new = out[sel, : self.keep]
            out[sel, : self.keep] = (old + w * wrap_delta(new - old)) % 1.0
        return out


def _torus_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = wrap_delta(a - b)
    return np.hypot(d[..., 0], d[..., 1])


def _spread(anchors: np.ndarray, candidates: np.ndarray, n: int) -> np.ndarray:
    """Keep the anchors and add candidates, one at a time, each farthest from those already placed."""
    placed = list(anchors)
    for _ in range(n - len(placed)):
        if placed:
            dist = np.min(_torus_dist(candidates[:, None], np.array(placed)[None]), axis=1)
            placed.append(candidates[int(np.argmax(dist))])
        else:
            placed.append(candidates[0])
    return np.array(placed[:n], dtype=np.float64).reshape(n, 2)


def plan(motion: str, speed: str, size: str, n: int, t0: float, rng: np.random.Generator,
         anchors: np.ndarray | None = None) -> Path:
    """The canonical path of `n` objects from time `t0`.

    `anchors` [m, 2] (m <= n) are the current positions of the objects that already exist; the
    path starts as close to them as its layout allows (the caller blends the rest).
    """
    anchors = np.zeros((0, 2)) if anchors is None else np.asarray(anchors, dtype=np.float64)[:n]
    m = len(anchors)
    f = SPEED_FACTOR[speed]
    r = SIZE_RADIUS[size]
    # Draw every random number up front, in a fixed order, so layouts do not depend on the branch.
    jitter = rng.uniform(-1.0, 1.0, size=(8, 2))
    u = rng.uniform(0.0, 1.0, size=8)
    spin = 1.0 if rng.uniform() < 0.5 else -1.0
    bob_phase = 2.0 * np.pi * rng.uniform(0.0, 1.0, size=(4, 2))

    if motion in DIRECTIONS:
        # Objects sit on a lattice of the torus (i/n along the motion, lane i*k/n across it), which
        # keeps them about half a frame apart; all share one velocity, so they never meet.
        d = np.array(DIRECTIONS[motion])
        k = 2 if n == 4 else 1
        first_lane = {1: 0.3 + 0.4 * u[0], 2: 0.22 + 0.06 * u[0], 3: 0.16 + 0.02 * u[0],
                      4: 0.22 + 0.06 * u[0]}[n]
        lanes = first_lane + ((np.arange(n) * k) % n) / n
        along = (u[1] + np.arange(n) / n) % 1.0
        fresh = np.stack([along, lanes], -1) if d[0] != 0 else np.stack([lanes, along], -1)
        start = _spread(anchors, fresh, n) if m else fresh
        return Linear(t0, start, d * LINEAR_SPEED * f)

    if motion == "circling":
        centre = np.array([0.5, 0.48]) + 0.03 * jitter[0]
        radius = min(ORBIT_RADIUS, 0.46 - r)
        omega = spin * 2.0 * np.pi * f / ORBIT_PERIOD
        slots = 2.0 * np.pi * np.arange(n) / n
        if m:
            d = anchors - centre
            ang = np.arctan2(d[:, 1], d[:, 0])
            first = int(np.argmin(ang))
            rel = (ang - ang[first]) % (2 * np.pi)
            phases = np.empty(n)
            taken = np.argsort(rel)  # existing objects keep their cyclic order on the orbit
            for slot, i in enumerate(taken):
                phases[i] = ang[first] + slots[slot]
            phases[m:] = ang[first] + slots[m:]
        else:
            phases = 2.0 * np.pi * u[2] + slots
        return Orbit(t0, centre, radius, phases, omega)

    if motion == "bouncing":
        rest = FLOOR_Y - r
        height = min(BOUNCE_HEIGHT, rest - r - 0.05)
        lanes = (np.arange(n) + 0.5) / n + 0.02 * jitter[:n, 0] if n > 1 else np.array([0.3 + 0.4 * u[0]])
        xs = np.empty(n)
        # Neighbours hop in antiphase: they pass each other fast, half-way up, and spend most of
        # the time at different heights (a row of four large shapes is nearly edge to edge).
        u0 = (0.5 * np.arange(n) + 0.08 * u[3:3 + n]) % 1.0
        if m:  # lanes keep the objects' left-to-right order; new objects take the remaining lanes
            rank = np.argsort(np.argsort(np.concatenate([anchors[:, 0], lanes[m:]])))
            xs[:] = lanes[rank]
            for i in range(m):  # continue each existing object's hop at its current height, falling
                h = np.clip((rest - anchors[i, 1]) / height, 0.0, 1.0)
                u0[i] = 1.0 - 0.5 * (1.0 - np.sqrt(1.0 - h))
        else:
            xs[:] = lanes
        return Bounce(t0, xs, np.full(n, rest), height, u0 % 1.0, BOUNCE_PERIOD / f)

    if motion == "hovering":
        slots = {1: [(0.5, 0.45)], 2: [(0.28, 0.42), (0.72, 0.52)],
                 3: [(0.26, 0.33), (0.74, 0.36), (0.5, 0.72)],
                 4: [(0.27, 0.29), (0.73, 0.29), (0.27, 0.71), (0.73, 0.71)]}[n]
        fresh = np.array(slots) + 0.04 * jitter[:n]
        if m:
            margin = r + HOVER_AMP[1] + 0.03
            base = _spread(np.clip(anchors, margin, 1.0 - margin), fresh, n)
        else:
            base = fresh
        omega = 2.0 * np.pi * f / np.array(HOVER_PERIOD)
        return Hover(t0, base, np.array(HOVER_AMP), omega, bob_phase[:n])

    raise ValueError(f"unknown motion {motion!r}")
