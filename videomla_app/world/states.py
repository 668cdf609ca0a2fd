"""Per-frame object states of a timeline: where every object is and how it looks at each frame.

A timeline is compiled once per (timeline, seed, fps): each segment gets its path, planned from
the positions the previous segment's path gives at the change, and blended in (`motion.Blend`),
so positions and velocities are continuous across a change. Colour, size and scene cross-fade
over half a second; objects added or removed fade in or out.

States are evaluated in fixed, frame-aligned blocks. Vectorised numpy maths may round an element
differently depending on where it sits in an array; aligned blocks make the states of frame f the
same whichever range [start, stop) asked for it, so chunked renders equal full renders bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .motion import BLEND_SECONDS, SIZE_RADIUS, Blend, Path, plan, smoothstep
from .palette import OBJECT_RGB
from .spec import SCENES, SHAPES, WorldSpec
from .timeline import Timeline

FADE_SECONDS = 0.5  # cross-fade of colour, size, scene and of objects appearing/disappearing
WOBBLE_DEG = 10.0  # non-round shapes rock gently, which makes even hovering look alive
WOBBLE_PERIOD = 2.9
BLOCK = 64  # frames per evaluation block


@dataclass(frozen=True, eq=False)
class FrameStates:
    """States of frames `frames`, for up to N objects (N = the timeline's largest count)."""

    frames: np.ndarray  # [F] frame indices
    pos: np.ndarray  # [F, N, 2] centre, frame units (x right, y down), on the unit torus
    radius: np.ndarray  # [F, N] frame units
    colour: np.ndarray  # [F, N, 3] RGB 0..255
    opacity: np.ndarray  # [F, N] 0 = absent
    angle: np.ndarray  # [F, N] degrees
    shape: np.ndarray  # [F, N] index into SHAPES
    scene_from: np.ndarray  # [F] index into SCENES
    scene_to: np.ndarray  # [F]
    scene_mix: np.ndarray  # [F] 0 -> scene_from, 1 -> scene_to

    def __getitem__(self, idx: slice) -> FrameStates:
        return FrameStates(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))


@dataclass(frozen=True, eq=False)
class _Segment:
    start: int
    t0: float
    spec: WorldSpec
    path: Path


@lru_cache(maxsize=64)
def _compile(timeline: Timeline, seed: int, fps: float) -> tuple[_Segment, ...]:
    segs: list[_Segment] = []
    for k, (start, spec) in enumerate(timeline.segments):
        t0 = start / fps
        rng = np.random.default_rng([int(seed), k, 0x5EED])
        if not segs:
            path: Path = plan(spec.motion, spec.speed, spec.size, spec.count, t0, rng)
        else:
            prev = segs[-1]
            keys = ("motion", "speed", "size", "count")
            if all(getattr(prev.spec, a) == getattr(spec, a) for a in keys):
                path = prev.path  # nothing about the movement changed: just keep going
            else:
                anchors = prev.path(np.array([t0]))[0, : spec.count]
                canon = plan(spec.motion, spec.speed, spec.size, spec.count, t0, rng, anchors)
                keep = min(prev.spec.count, spec.count)
                path = Blend(t0, BLEND_SECONDS, prev.path, canon, keep)
        segs.append(_Segment(start, t0, spec, path))
    return tuple(segs)


def _wobble_phase(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng([int(seed), 0xB0B]).uniform(0, 2 * np.pi, n)


@lru_cache(maxsize=256)
def _block(timeline: Timeline, seed: int, fps: float, b0: int) -> FrameStates:
    segs = _compile(timeline, seed, fps)
    n_max = timeline.max_count
    frames = np.arange(b0, b0 + BLOCK)
    t = frames / fps
    f_n = (BLOCK, n_max)
    pos = np.zeros(f_n + (2,))
    radius = np.zeros(f_n)
    colour = np.zeros(f_n + (3,))
    opacity = np.zeros(f_n)
    shape = np.zeros(f_n, dtype=np.int64)
    scene_from = np.zeros(BLOCK, dtype=np.int64)
    scene_to = np.zeros(BLOCK, dtype=np.int64)
    scene_mix = np.ones(BLOCK)

    seg_of = np.searchsorted(np.array([s.start for s in segs]), frames, side="right") - 1
    for k in np.unique(seg_of):
        seg = segs[k]
        prev = segs[k - 1] if k > 0 else seg
        sel = seg_of == k
        ts = t[sel]
        spec, old = seg.spec, prev.spec
        n = spec.count
        ramp = smoothstep((ts - seg.t0) / FADE_SECONDS) if k > 0 else np.ones_like(ts)
        r_mix = ramp[:, None]
        c_new, c_old = np.array(OBJECT_RGB[spec.colour], float), np.array(OBJECT_RGB[old.colour], float)
        rad_new, rad_old = SIZE_RADIUS[spec.size], SIZE_RADIUS[old.size]

        pos[sel, :n] = seg.path(ts)
        colour[sel, :n] = (c_old + r_mix * (c_new - c_old))[:, None, :]
        radius[sel, :n] = rad_old + r_mix * (rad_new - rad_old)
        shape[sel, :n] = SHAPES.index(spec.shape)
        opacity[sel, :n] = 1.0
        if old.count < n:  # new objects fade in
            opacity[sel, old.count:n] = r_mix
        if old.count > n:  # removed objects fade out where the old path takes them
            out = np.flatnonzero(sel)[ts < seg.t0 + FADE_SECONDS]
            if len(out):
                gone = slice(n, old.count)
                pos[out, gone] = prev.path(t[out])[:, gone]
                opacity[out, gone] = 1.0 - smoothstep((t[out] - seg.t0) / FADE_SECONDS)[:, None]
                colour[out, gone] = c_old
                radius[out, gone] = rad_old
                shape[out, gone] = SHAPES.index(old.shape)
        scene_from[sel] = SCENES.index(old.scene)
        scene_to[sel] = SCENES.index(spec.scene)
        scene_mix[sel] = ramp

    phase = _wobble_phase(seed, n_max)
    angle = WOBBLE_DEG * np.sin(2 * np.pi * t[:, None] / WOBBLE_PERIOD + phase[None])
    states = FrameStates(frames, pos, radius, colour, opacity, angle, shape, scene_from, scene_to, scene_mix)
    for f in states.__dataclass_fields__:
        getattr(states, f).setflags(write=False)
    return states


def frame_states(timeline: Timeline, start: int, stop: int, seed: int = 0, fps: float = 16.0) -> FrameStates:
    """States of frames [start, stop); a pure function of (timeline, seed, fps, frame)."""
    if not 0 <= start <= stop:
        raise ValueError(f"need 0 <= start <= stop, got {start}, {stop}")
    if seed < 0:
        raise ValueError("seed must be >= 0")
    b0 = start // BLOCK * BLOCK
    blocks = [_block(timeline, int(seed), float(fps), b) for b in range(b0, max(stop, start + 1), BLOCK)]
    whole = FrameStates(*(np.concatenate([getattr(b, f) for b in blocks])
                          for f in FrameStates.__dataclass_fields__))
    return whole[start - b0: stop - b0]
