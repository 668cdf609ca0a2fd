"""Readers: recover scene, object colour, count and motion from pixels.

They grade whether generated videos follow their prompts, so they must survive blur, noise and
small colour shifts, not only the renderer's crisp frames. The pipeline is deliberately simple:

1. pool frames to ~32x32 (averages away noise and fine detail a tiny decoder cannot produce);
2. scene = the known background closest to the temporal median frame (objects move, the
   background does not), tried at a few blur levels and with a global colour-shift correction;
3. background = that template, replaced by the clip's own temporal median wherever the two agree
   (absorbs small differences of a generated background); foreground = pixels far from it;
4. connected components on the torus (objects wrapping around an edge stay one component);
5. count = the most common component count over frames; colour = palette vote in which each
   pixel picks the palette colour that, mixed with the background behind it, explains it best
   (so blurred edges vote correctly); motion = centroid tracks classified by shape of path.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .motion import wrap_delta
from .palette import PALETTE
from .scenes import background
from .spec import COLOURS, SCENES

WORK = 32  # readers work at about this resolution
FG_THRESHOLD = 26.0  # RGB distance from the background that counts as object
FG_STRONG = 48.0  # a component is an object only if some pixel is this far (hysteresis)
SCENE_CAP = 60.0  # per-pixel error cap when matching backgrounds (objects cost at most this)
MAX_SHIFT = 30.0  # largest global colour shift the background model corrects
REFINE_TOL = 35.0  # where the temporal median is this close to the template, trust the median
BLURS = (0.0, 0.7, 1.4, 2.4)  # Gaussian sigmas (working pixels) the templates are tried at
HOVER_AMPLITUDE = 0.06  # paths within this distance of their mean are "hovering"
_NEIGHBOURS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def _as_frames(frames: np.ndarray) -> np.ndarray:
    x = np.asarray(frames)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] != x.shape[2]:
        raise ValueError(f"expected frames [F, S, S, 3] (or one [S, S, 3]), got {x.shape}")
    return x


def _pool_factor(size: int) -> int:
    for p in range(max(1, size // WORK), 0, -1):
        if size % p == 0:
            return p
    return 1


def _pool(x: np.ndarray) -> np.ndarray:
    f, s = x.shape[0], x.shape[1]
    p = _pool_factor(s)
    y = x.astype(np.float32).reshape(f, s // p, p, s, 3).sum(axis=2)  # two 1-axis sums: 4x faster
    return y.reshape(f, s // p, s // p, p, 3).sum(axis=3) / (p * p)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of [h, w, 3] with edge padding."""
    if sigma <= 0:
        return img
    r = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    for axis in (0, 1):
        pad = [(0, 0)] * 3
        pad[axis] = (r, r)
        p = np.pad(img, pad, mode="edge")
        n = img.shape[axis]
        img = sum(w * np.take(p, np.arange(i, i + n), axis=axis) for i, w in enumerate(k))
    return img


@lru_cache(maxsize=16)
def _templates(size: int) -> np.ndarray:
    """Every scene's background at `size`, pooled like the frames, at every blur level:
    [n_scenes, n_blurs, h, w, 3]. Generated frames are blurrier than the renderer's."""
    pooled = [_pool(background(s, size)[None])[0] for s in SCENES]
    return np.stack([np.stack([_blur(p, b) for b in BLURS]) for p in pooled]).astype(np.float32)


def _shift(x: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Per-frame global colour shift of `x` against `bg` (the median ignores the objects)."""
    d = (x - bg).reshape(x.shape[0], -1, 3)
    return np.clip(np.median(d, axis=1), -MAX_SHIFT, MAX_SHIFT)


def _template_errors(pooled: np.ndarray, size: int) -> np.ndarray:
    """Mean capped distance of the temporal median frame to every template: [n_scenes, n_blurs]."""
    med = np.median(pooled, axis=0)
    d = med[None, None] - _templates(size)
    shift = np.clip(np.median(d.reshape(*d.shape[:2], -1, 3), axis=2), -MAX_SHIFT, MAX_SHIFT)
    err = np.linalg.norm(d - shift[:, :, None, None, :], axis=-1)
    return np.minimum(err, SCENE_CAP).mean(axis=(2, 3))


def scene_scores(frames: np.ndarray) -> dict[str, float]:
    """Distance from the clip's temporal median frame to each scene at its best blur (lower = closer)."""
    x = _as_frames(frames)
    err = _template_errors(_pool(x), x.shape[1]).min(axis=1)
    return {name: float(e) for name, e in zip(SCENES, err)}


def read_scene(frames: np.ndarray) -> str:
    scores = scene_scores(frames)
    return min(scores, key=scores.get)


def _label(mask: np.ndarray) -> np.ndarray:
    """8-connected component labels per frame, wrapping around the edges (background = -1)."""
    big = mask.size
    lab = np.where(mask, np.arange(big).reshape(mask.shape), big)
    while True:
        nxt = lab
        for dy, dx in _NEIGHBOURS:
            nxt = np.minimum(nxt, np.roll(lab, (dy, dx), axis=(1, 2)))
        nxt = np.where(mask, nxt, big)
        if np.array_equal(nxt, lab):
            break
        lab = nxt
    return np.where(lab == big, -1, lab)


def explain(c: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For pixels c [P, 3] over background b [P, 3]: index of the candidate that explains c best.

    Candidates 0..6 are the palette colours, 7 a shadow (darker background), 8 a highlight or
    background glitch (whiter background). Candidate k explains c when c - b is close to
    t * (v_k - b) for some mix 0 <= t <= 1.2, so a blurred edge pixel (object mixed with the
    background) still picks its object's colour.
    """
    d = c - b
    shadow, highlight = (-0.6 * b)[:, None, :], (255.0 - b)[:, None, :]
    v = np.concatenate([PALETTE[None] - b[:, None, :], shadow, highlight], axis=1)
    t = np.clip(np.sum(d[:, None] * v, -1) / np.maximum(np.sum(v * v, -1), 1e-6), 0.0, 1.2)
    res = np.linalg.norm(d[:, None] - t[..., None] * v, axis=-1)
    return np.argmin(res, axis=1)


@dataclass(frozen=True, eq=False)
class Analysis:
    """Everything the readers derive from a clip, computed once and shared."""

    scene: str
    pooled: np.ndarray  # [F, h, w, 3]
    background: np.ndarray  # [F, h, w, 3], shift-corrected
    diff: np.ndarray  # [F, h, w] distance from the background
    explained: np.ndarray  # [F, h, w] `explain` index of foreground pixels, -1 elsewhere
    mask: np.ndarray  # [F, h, w] pixels of kept object components
    centroids: list[np.ndarray]  # per frame [k, 2] (x, y) in frame units
    areas: list[np.ndarray]  # per frame [k] pixels at the working resolution


def analyse(frames: np.ndarray, scene: str | None = None) -> Analysis:
    """Scene, background model, object pixels and per-frame object centroids of a clip."""
    x = _as_frames(frames)
    pooled = _pool(x)
    err = _template_errors(pooled, x.shape[1])
    if scene is None:
        scene = SCENES[int(np.argmin(err.min(axis=1)))]
    si = SCENES.index(scene)
    bg0 = _templates(x.shape[1])[si, int(np.argmin(err[si]))]
    shift = _shift(pooled, bg0[None])
    if len(pooled) >= 8:  # objects move, so the temporal median shows the clip's own background
        med = np.median(pooled - shift[:, None, None, :], axis=0)
        agree = np.linalg.norm(med - bg0, axis=-1) < REFINE_TOL
        bg0 = np.where(agree[..., None], med, bg0)
    bg = bg0[None] + shift[:, None, None, :]
    diff = np.linalg.norm(pooled - bg, axis=-1)
    fg = diff > FG_THRESHOLD
    explained = np.full(diff.shape, -1, dtype=np.int64)
    explained[fg] = explain(pooled[fg], bg[fg])
    mask = fg & (explained >= 0) & (explained < len(COLOURS))  # shadows and glitches are not objects
    lab = _label(mask)
    f, h, w = mask.shape
    min_area = max(2, int(round(0.0025 * h * w)))
    centroids, areas = [], []
    yy, xx = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
    for i in range(f):
        li = lab[i].ravel()
        sel = li >= 0
        ids, inv, counts = np.unique(li[sel], return_inverse=True, return_counts=True)
        weight = diff[i].ravel()[sel]
        cents = []
        for coord in (xx.ravel()[sel], yy.ravel()[sel]):  # circular mean: wrap-safe centroid
            ang = 2 * np.pi * coord
            c = np.bincount(inv, weight * np.cos(ang), len(ids))
            s = np.bincount(inv, weight * np.sin(ang), len(ids))
            cents.append((np.arctan2(s, c) / (2 * np.pi)) % 1.0)
        peak = np.zeros(len(ids))
        np.maximum.at(peak, inv, weight)
        keep = (counts >= min_area) & (peak >= FG_STRONG)  # hysteresis: weak blobs are glitches
        centroids.append(np.stack(cents, axis=-1)[keep] if len(ids) else np.zeros((0, 2)))
        areas.append(counts[keep])
        kept = np.zeros(h * w, dtype=bool)
        kept[np.flatnonzero(sel)[keep[inv]]] = True
        mask[i] = kept.reshape(h, w)
    return Analysis(scene, pooled, bg, diff, explained, mask, centroids, areas)


def read_count(frames: np.ndarray, scene: str | None = None, analysis: Analysis | None = None) -> int:
    """The most common number of separate objects over the frames."""
    a = analysis or analyse(frames, scene)
    counts = Counter(len(c) for c in a.centroids)
    best = max(counts.values())
    return max(k for k, v in counts.items() if v == best)


def colour_votes(frames: np.ndarray, scene: str | None = None,
                 analysis: Analysis | None = None) -> dict[str, float]:
    """Share of the object pixels' palette votes (see `explain`), each weighted by its squared
    distance from the background so that cores count more than blurred rims."""
    a = analysis or analyse(frames, scene)
    votes = np.bincount(a.explained[a.mask], a.diff[a.mask] ** 2, len(COLOURS))[: len(COLOURS)]
    total = max(float(votes.sum()), 1e-9)
    return {name: float(votes[i] / total) for i, name in enumerate(COLOURS)}


def read_colour(frames: np.ndarray, scene: str | None = None, analysis: Analysis | None = None) -> str:
    votes = colour_votes(frames, scene, analysis)
    return max(votes, key=votes.get)


def _tracks(centroids: list[np.ndarray], max_step: float = 0.2, max_gap: int = 3) -> list[np.ndarray]:
    """Greedy nearest-neighbour tracking on the torus; returns unwrapped paths [L, 3] (frame, x, y)."""
    tracks: list[list[tuple[int, np.ndarray]]] = []
    for f, cents in enumerate(centroids):
        live = [i for i, tr in enumerate(tracks) if f - tr[-1][0] <= max_gap]
        pairs = []
        for ti in live:
            last = tracks[ti][-1][1]
            for ci, c in enumerate(cents):
                dist = float(np.hypot(*wrap_delta(c - (last % 1.0))))
                if dist < max_step * (f - tracks[ti][-1][0]):
                    pairs.append((dist, ti, ci))
        used_t, used_c = set(), set()
        for dist, ti, ci in sorted(pairs):
            if ti in used_t or ci in used_c:
                continue
            last = tracks[ti][-1][1]
            tracks[ti].append((f, last + wrap_delta(cents[ci] - (last % 1.0))))
            used_t.add(ti)
            used_c.add(ci)
        for ci, c in enumerate(cents):
            if ci not in used_c:
                tracks.append([(f, c.astype(np.float64))])
    return [np.array([[f, *p] for f, p in tr]) for tr in tracks]


def classify_path(path: np.ndarray) -> str:
    """Motion class of one unwrapped path [L, 3] (frame, x, y) in frame units.

    Hovering paths stay near their mean; linear ones go straight (net displacement close to the
    path length, same heading at the start and the end); bouncing ones move mostly vertically;
    anything else that turns is circling. A 3-frame median first removes single-frame jumps
    (two objects briefly merged into one blob).
    """
    p = path[:, 1:]
    if len(p) >= 3:
        p = np.concatenate([p[:1], np.median(np.stack([p[:-2], p[1:-1], p[2:]]), axis=0), p[-1:]])
    amp = float(np.max(np.linalg.norm(p - p.mean(axis=0), axis=-1)))
    if amp < HOVER_AMPLITUDE:
        return "hovering"
    steps = np.diff(p, axis=0)
    length = float(np.sum(np.linalg.norm(steps, axis=-1))) + 1e-9
    net = p[-1] - p[0]
    k = max(1, len(p) // 3)
    v_first, v_last = p[k] - p[0], p[-1] - p[-1 - k]
    cos = float(np.dot(v_first, v_last) / (np.linalg.norm(v_first) * np.linalg.norm(v_last) + 1e-9))
    if np.linalg.norm(net) / length > 0.75 and cos > 0.75:
        if abs(net[0]) >= abs(net[1]):
            return "right" if net[0] > 0 else "left"
        return "down" if net[1] > 0 else "up"
    sx, sy = np.sum(np.abs(steps), axis=0)
    if sx < 0.35 * sy:
        return "bouncing"
    return "circling"


def motion_votes(frames: np.ndarray, scene: str | None = None,
                 analysis: Analysis | None = None) -> dict[str, float]:
    """Fraction of tracked frames whose track is classified as each motion."""
    a = analysis or analyse(frames, scene)
    n = len(a.centroids)
    votes: Counter[str] = Counter()
    for path in _tracks(a.centroids):
        if len(path) >= max(4, n // 2):
            votes[classify_path(path)] += len(path)
    total = sum(votes.values())
    return {k: v / total for k, v in votes.items()} if total else {}


def read_motion(frames: np.ndarray, scene: str | None = None, analysis: Analysis | None = None) -> str:
    """One of left/right/up/down/circling/bouncing/hovering (needs about 2 s of frames)."""
    votes = motion_votes(frames, scene, analysis)
    return max(votes, key=votes.get) if votes else "hovering"


def read_all(frames: np.ndarray, scene: str | None = None) -> dict[str, object]:
    """scene, colour, count and motion of a clip, sharing one analysis."""
    a = analyse(frames, scene)
    return {"scene": a.scene, "colour": read_colour(frames, analysis=a),
            "count": read_count(frames, analysis=a), "motion": read_motion(frames, analysis=a)}
