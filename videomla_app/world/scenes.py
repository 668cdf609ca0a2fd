"""Scene backgrounds: static, smooth, painted once per (scene, size) with vectorised numpy.

Backgrounds never move. That keeps rendering cheap (copy a cached array), lets the readers subtract
the known background, and keeps the frames simple enough for a tiny 8x autoencoder. Shapes are
drawn in resolution-independent coordinates (0..1 across the frame), so every size shows the same
picture; features are large and soft, with 1-pixel anti-aliased edges.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .spec import SCENES

RGB = tuple[float, float, float]

# Centre height at which bouncing objects touch the ground (fraction of the frame, y down).
FLOOR_Y = 0.92


class _Canvas:
    """A float image plus its pixel-centre coordinate grids, with a few soft painting primitives."""

    def __init__(self, size: int) -> None:
        self.n = size
        c = (np.arange(size, dtype=np.float64) + 0.5) / size
        self.x = c[None, :]
        self.y = c[:, None]
        self.img = np.zeros((size, size, 3), dtype=np.float64)
        self.px = 1.0 / size  # one pixel in normalised units

    def gradient(self, stops: list[tuple[float, RGB]]) -> None:
        """Vertical gradient through colour stops (position 0 = top)."""
        pos = np.array([p for p, _ in stops])
        cols = np.array([c for _, c in stops], dtype=np.float64)
        y = self.y[:, 0]
        column = np.stack([np.interp(y, pos, cols[:, k]) for k in range(3)], axis=-1)
        self.img[:] = column[:, None, :]

    def paint(self, colour: RGB | np.ndarray, alpha: np.ndarray) -> None:
        """Alpha-composite a colour (or per-pixel colour image) over the canvas."""
        a = np.clip(alpha, 0.0, 1.0)[..., None]
        self.img = self.img * (1.0 - a) + np.asarray(colour, dtype=np.float64) * a

    def edge(self, sdf: np.ndarray, soft_px: float = 1.0) -> np.ndarray:
        """Coverage from a signed distance (normalised units, negative inside), soft over `soft_px`."""
        return np.clip(0.5 - sdf / (soft_px * self.px), 0.0, 1.0)

    def disc(self, cx: float, cy: float, r: float) -> np.ndarray:
        return np.hypot(self.x - cx, self.y - cy) - r

    def glow(self, cx: float, cy: float, sigma: float) -> np.ndarray:
        return np.exp(-((self.x - cx) ** 2 + (self.y - cy) ** 2) / (2 * sigma**2))

    def below(self, horizon: np.ndarray, soft_px: float = 1.0) -> np.ndarray:
        """Coverage of the region under a horizon curve y = horizon(x)."""
        return self.edge(horizon - self.y, soft_px)

    def vshade(self, top: float, bottom: float, c_top: RGB, c_bottom: RGB) -> np.ndarray:
        """Per-pixel colour interpolated vertically between two rows (clamped)."""
        w = np.clip((self.y - top) / max(bottom - top, 1e-6), 0.0, 1.0)[..., None]
        return np.asarray(c_top) * (1 - w) + np.asarray(c_bottom) * w

    def cloud(self, cx: float, cy: float, s: float) -> None:
        """A cartoon cloud: a few overlapping puffs with a flat base and a slightly bluish belly."""
        puffs = [(-0.9, 0.15, 0.45), (-0.35, -0.2, 0.6), (0.3, -0.1, 0.55), (0.85, 0.18, 0.4)]
        sdf = np.full_like(self.img[..., 0], np.inf)
        for dx, dy, r in puffs:
            sdf = np.minimum(sdf, self.disc(cx + dx * s, cy + dy * s, r * s))
        sdf = np.maximum(sdf, self.y - (cy + 0.42 * s))  # flat bottom
        belly = self.vshade(cy - 0.6 * s, cy + 0.45 * s, (255, 255, 255), (218, 228, 242))
        self.paint(belly, self.edge(sdf, 1.2) * 0.96)

    def stars(self, count: int, seed: int, y_max: float, bright: float = 1.0) -> None:
        """Fixed soft star dots (same for every clip of the scene, so backgrounds stay static)."""
        rng = np.random.default_rng(seed)
        xs = rng.uniform(0.02, 0.98, count)
        ys = rng.uniform(0.02, y_max, count) ** 1.2
        sig = rng.uniform(0.0035, 0.0065, count)
        amp = rng.uniform(0.35, 1.0, count) * bright
        light = np.zeros_like(self.img[..., 0])
        for x, y, s, a in zip(xs, ys, sig, amp):
            light += a * np.exp(-((self.x - x) ** 2 + (self.y - y) ** 2) / (2 * (s + 0.4 * self.px) ** 2))
        self.paint((250, 250, 235), np.clip(light, 0, 1) * 0.9)

    def wave(self, base: float, terms: list[tuple[float, float, float]]) -> np.ndarray:
        """A horizon curve base + sum(a * sin(2 pi f x + p))."""
        h = np.full_like(self.x, base)
        for a, f, p in terms:
            h = h + a * np.sin(2 * np.pi * f * self.x + p)
        return h


def _day(c: _Canvas) -> None:
    c.gradient([(0.0, (76, 146, 228)), (0.6, (132, 190, 242)), (1.0, (180, 218, 248))])
    c.paint((255, 244, 200), 0.45 * c.glow(0.8, 0.17, 0.12))
    c.paint((255, 248, 214), c.edge(c.disc(0.8, 0.17, 0.065)))
    c.cloud(0.24, 0.25, 0.12)
    c.cloud(0.64, 0.44, 0.085)
    c.cloud(0.97, 0.68, 0.1)


def _sunset(c: _Canvas) -> None:
    c.gradient([(0.0, (44, 40, 104)), (0.32, (118, 66, 132)), (0.58, (226, 118, 98)),
                (0.74, (250, 190, 124))])
    c.paint((255, 214, 150), 0.5 * c.glow(0.5, 0.74, 0.14))
    c.paint((255, 232, 168), c.edge(c.disc(0.5, 0.74, 0.1)))
    hills = c.wave(0.75, [(0.025, 1.3, 0.4), (0.012, 3.1, 1.7)])
    c.paint(c.vshade(0.72, 1.0, (66, 38, 78), (34, 22, 48)), c.below(hills))


def _night(c: _Canvas) -> None:
    c.gradient([(0.0, (8, 12, 34)), (0.75, (26, 36, 80)), (1.0, (34, 46, 94))])
    c.stars(42, seed=11, y_max=0.8)
    c.paint((230, 232, 210), 0.25 * c.glow(0.22, 0.2, 0.09))
    c.paint((238, 238, 218), c.edge(c.disc(0.22, 0.2, 0.055)))
    c.paint((26, 34, 74), c.edge(np.maximum(c.disc(0.245, 0.19, 0.05), c.disc(0.22, 0.2, 0.055))))
    hills = c.wave(0.86, [(0.03, 0.9, 2.0), (0.012, 2.7, 0.3)])
    c.paint((12, 16, 38), c.below(hills))


def _beach(c: _Canvas) -> None:
    c.gradient([(0.0, (98, 178, 238)), (0.5, (186, 226, 250)), (1.0, (186, 226, 250))])
    c.cloud(0.74, 0.2, 0.09)
    sea = c.vshade(0.5, 0.66, (44, 132, 186), (74, 176, 204))
    c.paint(sea, c.below(np.full_like(c.x, 0.5)))
    shore = c.wave(0.655, [(0.008, 2.0, 0.5), (0.004, 5.0, 2.0)])
    c.paint((244, 248, 246), c.below(shore - 0.012, 1.2))  # foam line
    c.paint(c.vshade(0.66, 1.0, (242, 222, 172), (226, 198, 146)), c.below(shore, 1.2))


def _meadow(c: _Canvas) -> None:
    c.gradient([(0.0, (112, 180, 238)), (0.55, (196, 228, 246)), (1.0, (196, 228, 246))])
    c.cloud(0.3, 0.2, 0.1)
    far = c.wave(0.56, [(0.035, 0.8, 0.6), (0.015, 2.2, 2.5)])
    c.paint((136, 182, 116), c.below(far))
    near = c.wave(0.66, [(0.03, 0.6, 3.0), (0.01, 2.9, 1.0)])
    c.paint(c.vshade(0.63, 1.0, (112, 166, 74), (74, 128, 56)), c.below(near))


def _underwater(c: _Canvas) -> None:
    c.gradient([(0.0, (44, 168, 192)), (0.55, (24, 110, 150)), (1.0, (12, 62, 104))])
    rays = np.clip(np.sin(2 * np.pi * (2.6 * c.x + 0.9 * c.y)), 0, 1) ** 6
    c.paint((170, 236, 240), 0.16 * rays * np.clip(1.1 - 1.2 * c.y, 0, 1))
    for x0, h, p in [(0.08, 0.3, 0.0), (0.15, 0.2, 2.0), (0.87, 0.34, 1.0), (0.94, 0.22, 3.0)]:
        top = 1.0 - h  # seaweed fronds: wavy strips tapering towards their tips
        width = 0.022 * np.clip((c.y - top) / h, 0.15, 1.0)
        frond = np.abs(c.x - x0 - 0.018 * np.sin(14 * c.y + p)) - width
        c.paint((28, 98, 84), c.edge(np.maximum(frond, top - c.y), 1.2))
    floor = c.wave(0.9, [(0.012, 1.4, 0.2), (0.005, 4.0, 1.1)])
    c.paint(c.vshade(0.88, 1.0, (186, 170, 122), (150, 134, 96)), c.below(floor, 1.2))


def _space(c: _Canvas) -> None:
    c.gradient([(0.0, (6, 6, 18)), (1.0, (18, 10, 34))])
    c.paint((70, 42, 112), 0.55 * c.glow(0.3, 0.65, 0.2))
    c.paint((36, 62, 120), 0.45 * c.glow(0.72, 0.3, 0.15))
    c.stars(70, seed=23, y_max=1.0, bright=0.9)
    cx, cy, r = 0.8, 0.8, 0.11
    light = np.clip(1.0 - np.hypot(c.x - (cx - 0.05), c.y - (cy - 0.05)) / (1.6 * r), 0.25, 1.0)[..., None]
    bands = 0.08 * np.sin(2 * np.pi * (c.y - cy) / r * 2.2)[..., None]
    c.paint(np.array([176, 150, 128]) * (light + bands), c.edge(c.disc(cx, cy, r)))
    ring = np.abs(np.hypot((c.x - cx) / 1.9, (c.y - cy) / 0.45) - r * 0.95) - 0.006
    front = (c.y > cy) | (np.hypot(c.x - cx, c.y - cy) > r)
    c.paint((150, 136, 126), c.edge(ring, 1.2) * front)


def _studio(c: _Canvas) -> None:
    c.gradient([(0.0, (196, 194, 190)), (0.62, (214, 212, 208)), (0.72, (184, 182, 178)),
                (1.0, (142, 140, 138))])
    c.paint((232, 230, 224), 0.5 * c.glow(0.5, 0.42, 0.22))
    vignette = np.clip(np.hypot(c.x - 0.5, (c.y - 0.5) * 1.1) - 0.45, 0, 1) * 1.4
    c.paint((110, 108, 106), vignette)


def _snow(c: _Canvas) -> None:
    c.gradient([(0.0, (150, 182, 224)), (0.55, (214, 226, 242)), (1.0, (214, 226, 242))])
    peaks = 0.58 - 0.22 * np.clip(1 - np.abs(c.x - 0.3) / 0.28, 0, 1) - 0.16 * np.clip(
        1 - np.abs(c.x - 0.74) / 0.24, 0, 1)
    c.paint(c.vshade(0.35, 0.6, (236, 240, 248), (178, 194, 220)), c.below(peaks, 1.2))
    ground = c.wave(0.64, [(0.025, 0.7, 1.0), (0.01, 2.3, 0.2)])
    c.paint(c.vshade(0.62, 1.0, (250, 251, 253), (222, 230, 244)), c.below(ground, 1.2))


def _desert(c: _Canvas) -> None:
    c.gradient([(0.0, (150, 196, 232)), (0.55, (240, 226, 196)), (1.0, (240, 226, 196))])
    c.paint((255, 250, 226), 0.4 * c.glow(0.25, 0.22, 0.1))
    c.paint((255, 250, 228), c.edge(c.disc(0.25, 0.22, 0.06)))
    back = c.wave(0.58, [(0.04, 0.9, 1.8), (0.015, 2.1, 0.4)])
    c.paint((218, 176, 118), c.below(back))
    front = c.wave(0.7, [(0.05, 0.7, 4.0), (0.012, 2.4, 1.3)])
    slope = np.cos(2 * np.pi * 0.7 * c.x + 4.0)[..., None]  # lit and shaded sides of the dune
    sand = np.array([238, 198, 138]) + slope * np.array([10, 14, 18])
    c.paint(sand * (1 - 0.18 * np.clip(c.y - 0.7, 0, 1)[..., None]), c.below(front))


_PAINTERS = {"day": _day, "sunset": _sunset, "night": _night, "beach": _beach, "meadow": _meadow,
             "underwater": _underwater, "space": _space, "studio": _studio, "snow": _snow,
             "desert": _desert}
assert set(_PAINTERS) == set(SCENES)


@lru_cache(maxsize=64)
def background(scene: str, size: int) -> np.ndarray:
    """The scene painted at `size`x`size`: read-only float32 [H, W, 3] in 0..255."""
    if scene not in _PAINTERS:
        raise ValueError(f"unknown scene {scene!r}; expected one of {SCENES}")
    canvas = _Canvas(int(size))
    _PAINTERS[scene](canvas)
    img = np.clip(canvas.img, 0, 255).astype(np.float32)
    img.setflags(write=False)
    return img
