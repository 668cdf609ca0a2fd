"""Render frames of a spec or timeline: cached background + cached sprites pasted per object.

The per-frame work is a background copy and, per object, two small array operations on a sprite-
sized window (shadow, then object), wrapping around the frame edges. Everything else (positions,
sprites, backgrounds) is closed-form or cached, so rendering runs at thousands of frames per
second on one CPU core and any frame range can be rendered on its own.
"""

from __future__ import annotations

import time

import numpy as np

from .objects import ANGLE_STEP, SHADOW_OFFSET, SUBPIXEL, Sprite, sprite
from .scenes import background
from .spec import SCENES, SHAPES, WorldSpec
from .states import FrameStates, frame_states
from .timeline import Timeline, as_timeline

DEFAULT_SIZE = 128
DEFAULT_FPS = 16


def _window(frame: np.ndarray, top: int, left: int, s: int) -> tuple[np.ndarray, object]:
    """A writable [s, s, 3] window of `frame` at (top, left), wrapping around the edges.

    Returns the window and an index to write it back with (None when it is a view).
    """
    h, w = frame.shape[:2]
    if 0 <= top and top + s <= h and 0 <= left and left + s <= w:
        return frame[top:top + s, left:left + s], None
    idx = (((top + np.arange(s)) % h)[:, None], ((left + np.arange(s)) % w)[None, :])
    return frame[idx], idx


def _place(x: float, y: float, radius: float, angle: float, shape: str, size: int) -> tuple[Sprite, int, int]:
    cx, cy = x * size, y * size
    ix, iy = int(np.floor(cx)), int(np.floor(cy))
    qx, qy = int(round((cx - ix) * SUBPIXEL)), int(round((cy - iy) * SUBPIXEL))
    if qx == SUBPIXEL:
        ix, qx = ix + 1, 0
    if qy == SUBPIXEL:
        iy, qy = iy + 1, 0
    angle_q = 0 if shape == "ball" else int(round(angle / ANGLE_STEP))
    radius_q = max(SUBPIXEL, int(round(radius * size * SUBPIXEL)))
    sp = sprite(shape, radius_q, angle_q, qx, qy)
    return sp, iy - sp.half, ix - sp.half


def _draw_frame(out: np.ndarray, st: FrameStates, f: int, size: int) -> None:
    a, b, mix = int(st.scene_from[f]), int(st.scene_to[f]), float(st.scene_mix[f])
    if a == b or mix >= 1.0:
        out[...] = background(SCENES[b], size)
    else:
        bg_a = background(SCENES[a], size)
        out[...] = bg_a + mix * (background(SCENES[b], size) - bg_a)
    placed = []
    for i in range(st.opacity.shape[1]):
        op = float(st.opacity[f, i])
        if op <= 1.0 / 512:
            continue
        x, y = st.pos[f, i]
        sp, top, left = _place(x, y, float(st.radius[f, i]), float(st.angle[f, i]),
                               SHAPES[int(st.shape[f, i])], size)
        placed.append((sp, top, left, op, st.colour[f, i].astype(np.float32)))
    dx, dy = round(SHADOW_OFFSET[0] * size), round(SHADOW_OFFSET[1] * size)
    for sp, top, left, op, _ in placed:  # all shadows first: a shadow never darkens an object
        win, idx = _window(out, top + dy, left + dx, 2 * sp.half + 1)
        win *= (1.0 - op * sp.shadow)[..., None]
        if idx is not None:
            out[idx] = win
    for sp, top, left, op, colour in placed:
        win, idx = _window(out, top, left, 2 * sp.half + 1)
        if op >= 1.0:
            win *= (1.0 - sp.alpha)[..., None]
            win += sp.alpha_mul[..., None] * colour + sp.alpha_add[..., None]
        else:
            win *= (1.0 - op * sp.alpha)[..., None]
            win += op * (sp.alpha_mul[..., None] * colour + sp.alpha_add[..., None])
        if idx is not None:
            out[idx] = win


def render(world: WorldSpec | Timeline, start: int, stop: int, size: int = DEFAULT_SIZE, seed: int = 0,
           fps: float = DEFAULT_FPS) -> np.ndarray:
    """Frames [start, stop) of `world` as uint8 [F, size, size, 3].

    Deterministic in (world, seed, fps, size): rendering [a, b) gives exactly those frames of a
    full render, so long clips can be streamed chunk by chunk with flat memory.
    """
    if size < 16 or size % 16:
        raise ValueError(f"size must be a positive multiple of 16, got {size}")
    st = frame_states(as_timeline(world), start, stop, seed, fps)
    out = np.empty((stop - start, size, size, 3), dtype=np.float32)
    for f in range(stop - start):
        _draw_frame(out[f], st, f, size)
    np.clip(out, 0.0, 255.0, out=out)
    out += 0.5
    return out.astype(np.uint8)


def stream(world: WorldSpec | Timeline, n_frames: int, chunk: int = 64, size: int = DEFAULT_SIZE,
           seed: int = 0, fps: float = DEFAULT_FPS):
    """Yield consecutive chunks of a long clip (each uint8 [<=chunk, H, W, 3])."""
    for a in range(0, n_frames, chunk):
        yield render(world, a, min(a + chunk, n_frames), size=size, seed=seed, fps=fps)


def benchmark(n_clips: int = 32, frames: int = 32, size: int = DEFAULT_SIZE, seed: int = 0) -> float:
    """Frames per second of a training-like stream: random specs, random start frames.

    Only the one-off SDF tables are built before timing; sprite caches start as they are, so the
    number includes the sprite misses a data loader meets when every clip is a new spec.
    """
    from .spec import SHAPES, WorldSpec, sample_spec

    for shape in SHAPES:  # one-off per process: SDF tables and the scene backgrounds
        render(WorldSpec(shape, "red", "small", 1, "left", "day"), 0, 1, size=size)
    rng = np.random.default_rng(seed)
    jobs = [(sample_spec(rng), int(rng.integers(0, 20_000))) for _ in range(n_clips)]
    t0 = time.perf_counter()
    for i, (spec, start) in enumerate(jobs):
        render(spec, start, start + frames, size=size, seed=seed + i)
    return n_clips * frames / (time.perf_counter() - t0)
