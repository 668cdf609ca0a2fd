"""Training clips from the procedural world, optionally rendered ahead in worker processes.

A step's clips are a pure function of ``(seed, step)`` (:func:`clip_batch`), which is what makes
every stage reproducible and resumable. That also makes them safe to render ahead of time: a
:class:`ClipSource` with ``workers > 0`` renders the next steps' batches in a process pool while
the current step trains, and returns exactly the batches it would have rendered itself (tested).

Why: on a GPU the DiT step of the tiny model takes milliseconds while rendering a batch of 32
clips of 9 frames takes ~0.4 s on one core, so without workers a GPU would wait on numpy/PIL
almost all the time. On the 2-core CPU the training step itself saturates the cores, so the
default there stays ``workers=0`` (in-process, nothing to start).
"""

from __future__ import annotations

import multiprocessing
import signal
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from .. import world
from ..world.spec import COLOURS, COUNTS, MOTIONS

# Rendering starts anywhere in the first two minutes of a world's motion.
START_RANGE = 16 * 120


def clip_batch(frame_size: int, step: int, seed: int, batch: int, n_frames: int,
               motion_weights: tuple[tuple[str, float], ...] = (),
               colour_weights: tuple[tuple[str, float], ...] = (),
               ) -> tuple[np.ndarray, list[str], list[str]]:
    """``batch`` world clips uint8 [B, F, S, S, 3], their captions and scenes, a pure function of
    ``(seed, step)``. With ``motion_weights`` (``colour_weights``), (value, weight) pairs, each
    clip's motion (colour) is drawn from them instead of uniformly (:func:`weighted_draw`)."""
    check_clip_weights(motion_weights, colour_weights)
    rng = np.random.default_rng([seed, step, 0x51DE])
    clips, captions, scenes = [], [], []
    for _ in range(batch):
        spec = world.sample_spec(rng)
        if motion_weights:
            spec = replace(spec, motion=weighted_draw(rng, motion_weights))
        if colour_weights:
            spec = replace(spec, colour=weighted_draw(rng, colour_weights))
        start = int(rng.integers(0, START_RANGE))
        clips.append(world.render(spec, start, start + n_frames, size=frame_size,
                                  seed=int(rng.integers(1 << 30))))
        captions.append(world.caption(spec, rng))
        scenes.append(spec.scene)
    return np.stack(clips), captions, scenes


def weighted_draw(rng: np.random.Generator, weights: tuple[tuple[str, float], ...]) -> str:
    """One value drawn with probability proportional to its weight (values left out: never).

    Why: the world draws every attribute uniformly, so slow hovering, the motion whose objects a
    model most easily lets stop (a few pixels of bob a second), is one clip in seven, and orange,
    the colour whose hovering objects `tiny` lets stop most, one in seven of those. A weight asks
    for more of a value without a second world. The draws come after ``sample_spec``'s (motion,
    then colour), so the other attributes are the ones the uniform world would have drawn."""
    names = [v for v, _ in weights]
    w = np.array([float(x) for _, x in weights])
    return names[int(rng.choice(len(names), p=w / w.sum()))]


def check_weights(attribute: str, weights: tuple[tuple[str, float], ...], known: tuple) -> None:
    """Refuse weights that draw nothing sensible (empty weights: the uniform world, fine)."""
    names = [v for v, _ in weights]
    w = np.array([float(x) for _, x in weights])
    if weights and (set(names) - set(known) or len(set(names)) != len(names)
                    or not (w >= 0).all() or w.sum() <= 0):
        raise ValueError(f"{attribute} weights need distinct known {attribute}s and non-negative weights "
                         f"with a positive sum, got {weights!r}")


def check_clip_weights(motion_weights: tuple[tuple[str, float], ...],
                       colour_weights: tuple[tuple[str, float], ...]) -> None:
    """Both of :func:`clip_batch`'s weights, against the world's motions and colours."""
    check_weights("motion", motion_weights, MOTIONS)
    check_weights("colour", colour_weights, COLOURS)


# The motion a contrast pair's second clip takes (:func:`pair_batch`): the opposite direction for a
# straight motion, another oscillation or the orbit for the ones that stay in place.
CONTRAST: dict[str, tuple[str, ...]] = {
    "left": ("right",), "right": ("left",), "up": ("down",), "down": ("up",),
    "circling": ("bouncing", "hovering"), "bouncing": ("hovering", "circling"),
    "hovering": ("bouncing", "circling")}


# The count a count pair's second clip shows: any other count of the world.
COUNT_CONTRAST: dict[int, tuple[int, ...]] = {c: tuple(o for o in COUNTS if o != c) for c in COUNTS}


def pair_batch(frame_size: int, step: int, seed: int, pairs: int, n_frames: int, motions: tuple[str, ...],
               counts: tuple[int, ...] = ()) -> tuple[np.ndarray, list[str], list[str]]:
    """``pairs`` contrast pairs, 2 x pairs clips uint8 [2P, F, S, S, 3] with their captions and
    scenes, a pure function of ``(seed, step)``: clips 2i and 2i + 1 are one world (objects, scene,
    start, render seed, caption wording) that differs in one attribute, so the two captions differ
    in that attribute's words alone. Each pair draws uniformly from ``motions`` (a motion and its
    :data:`CONTRAST`) and ``counts`` (a count and its :data:`COUNT_CONTRAST`; the renderer lays the
    objects out anew for each count).

    Why: the anchored pair moved objects left for 6 of 16 "... to the right" prompts and right for
    none, though its bank holds as many clips drifting each way. In independent clips the direction
    word is a small part of what tells two videos apart (MiniLM's state at "right" is 6.4 from the
    one at "left", 10.2 from "up"'s), so its gradient is small. In a pair trained on one noise draw
    (``flow.share_pairs``) the word is all that differs, so the pair's whole loss gap is the model
    not using it. Count pairs ask the same of the count word: the motion-pair models drew 3 to 7
    blobs for "a red ball" (count right in 16 % of the evaluation's windows)."""
    rng = np.random.default_rng([seed, step, 0xC0A7])
    options = [("motion", m) for m in motions] + [("count", c) for c in counts]
    clips, captions, scenes = [], [], []
    for _ in range(pairs):
        spec = world.sample_spec(rng)
        attr, first = options[int(rng.integers(len(options)))]
        contrast = CONTRAST[first] if attr == "motion" else COUNT_CONTRAST[first]
        second = contrast[int(rng.integers(len(contrast)))]
        start, render_seed = int(rng.integers(0, START_RANGE)), int(rng.integers(1 << 30))
        state = rng.bit_generator.state
        for value in (first, second):
            rng.bit_generator.state = state  # the same wording draws (one draw per phrase, any value)
            twin = replace(spec, **{attr: value})
            clips.append(world.render(twin, start, start + n_frames, size=frame_size, seed=render_seed))
            captions.append(world.caption(twin, rng))
            scenes.append(twin.scene)
    return np.stack(clips), captions, scenes


def coverage_map(clips: np.ndarray, scenes: list[str], stride: int) -> np.ndarray:
    """Fraction of each ``stride``-pixel block covered by objects or their shadows, float32 [B, F, h, w].

    Objects are a few percent of the pixels, so plain MSE learns the (static) scenes long before
    it learns to draw the objects that carry most of a prompt's words; this map lets the DiT loss
    weight them up. Scenes are static images, so "differs from the scene's background" is exact.
    """
    B, F, H, W, _ = clips.shape
    out = np.empty((B, F, H // stride, W // stride), np.float32)
    for b, scene in enumerate(scenes):
        bg = world.scenes.background(scene, H).astype(np.float32)  # [H, W, 3]
        on = (np.abs(clips[b].astype(np.float32) - bg).mean(-1) > 12.0).astype(np.float32)  # [F, H, W]
        out[b] = on.reshape(F, H // stride, stride, W // stride, stride).mean((2, 4))
    return out


def latent_cover(cover: np.ndarray, temporal_stride: int) -> np.ndarray:
    """Object cover per pixel frame [B, F, h, w] -> per latent frame [B, f, h, w]: frame 0 alone, then
    the most any of each group's ``temporal_stride`` frames covers (a latent pixel an object passes
    through during its frames has to draw it), with Wan's frame mapping F = 1 + s (f - 1)."""
    s = temporal_stride
    if s == 1:
        return cover
    B, F, h, w = cover.shape
    if (F - 1) % s:
        raise ValueError(f"temporal stride {s} needs 1 + {s}k frames, got {F}")
    rest = cover[:, 1:].reshape(B, (F - 1) // s, s, h, w).max(axis=2)  # [B, f - 1, h, w]
    return np.concatenate([cover[:, :1], rest], axis=1)


@dataclass(frozen=True)
class ClipRequest:
    """What every step of a stage renders: ``batch`` clips of ``n_frames`` frames at ``frame_size``,
    plus their object-coverage maps at ``cover_stride`` pixels per latent pixel (None: no map); with
    ``pair_motions`` or ``pair_counts``, ``batch / 2`` contrast pairs over those motions and counts
    instead of independent clips."""

    frame_size: int
    seed: int
    batch: int
    n_frames: int
    cover_stride: int | None = None
    pair_motions: tuple[str, ...] = ()  # non-empty: batch / 2 contrast pairs (:func:`pair_batch`)
    pair_counts: tuple[int, ...] = ()  # counts those pairs may contrast too
    motion_weights: tuple[tuple[str, float], ...] = ()  # independent clips' motions (:func:`clip_batch`)
    colour_weights: tuple[tuple[str, float], ...] = ()  # and their colours

    def __post_init__(self) -> None:
        # at the start of a stage, not in a render worker
        check_clip_weights(self.motion_weights, self.colour_weights)

    @property
    def paired(self) -> bool:
        return bool(self.pair_motions or self.pair_counts)


@dataclass(frozen=True)
class ClipBatch:
    frames: np.ndarray  # uint8 [B, F, S, S, 3]
    captions: list[str]
    scenes: list[str]
    cover: np.ndarray | None  # float32 [B, F, h, w] or None


def render_batch(req: ClipRequest, step: int) -> ClipBatch:
    """The clips of one step (runs in a worker process when the source has workers)."""
    if req.paired:
        frames, captions, scenes = pair_batch(req.frame_size, step, req.seed, req.batch // 2, req.n_frames,
                                              req.pair_motions, req.pair_counts)
    else:
        frames, captions, scenes = clip_batch(req.frame_size, step, req.seed, req.batch, req.n_frames,
                                              req.motion_weights, req.colour_weights)
    cover = coverage_map(frames, scenes, req.cover_stride) if req.cover_stride else None
    return ClipBatch(frames, captions, scenes, cover)


def _ignore_interrupts() -> None:
    """Ctrl-C reaches the whole process group; the trainer handles it (and shuts the pool down),
    so a worker must not die with a traceback of its own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class ClipSource:
    """The batches of successive steps, rendered in-process or up to ``ahead`` steps in advance by
    ``workers`` processes. Asking for a step out of order (a resume) just drops the stale work."""

    def __init__(self, req: ClipRequest, workers: int = 0, ahead: int | None = None) -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.req, self.workers = req, workers
        self.ahead = max(1, ahead if ahead is not None else 2 * workers)
        self._pool: ProcessPoolExecutor | None = None
        self._pending: dict[int, Future] = {}

    def get(self, step: int) -> ClipBatch:
        if self.workers == 0:
            return render_batch(self.req, step)
        if self._pool is None:
            # spawn, not fork: the trainer may hold CUDA state and OpenMP threads that a fork copies
            # in a broken state; the workers only need numpy, PIL and the world.
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_ignore_interrupts)
        for s in [s for s in self._pending if s < step or s >= step + self.ahead]:
            self._pending.pop(s).cancel()
        for s in range(step, step + self.ahead):
            if s not in self._pending:
                self._pending[s] = self._pool.submit(render_batch, self.req, s)
        return self._pending.pop(step).result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool, self._pending = None, {}

    def __enter__(self) -> ClipSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
