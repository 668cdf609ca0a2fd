"""Per-segment video metrics, computed from pixels alone (no model): the core of ``videomla eval``.

A video is cut into segments (15 s by default) and each segment into reader windows (2 s: the
world's motion reader needs about 2 s of track). Every score is on a 0-100 scale where higher is
better, so that one table can show them all; the raw quantities behind them are kept too.

Definitions (``fps`` = frames per second of the video; "working resolution" = the world readers'
~32x32 pooled frames, which average away the fine detail a tiny decoder cannot produce):

Attribute adherence (``colour``, ``count``, ``motion``, ``scene``)
    % of the segment's reader windows whose reading (``world.readers`` on that window) equals the
    attribute the prompt names (``world.parse_prompt``); ``None`` when the prompt does not name it.
    A window without any object reads no colour/motion/count, so it never matches by default.
    ``adherence`` is the mean of the attributes the prompt names.
Count stability (``count_stability``)
    % of 1-s windows whose most common per-frame object count equals the segment's most common
    per-frame count (objects neither pop in nor vanish; says nothing about the count being right).
Flicker (``flicker``, raw) and ``no_flicker`` (score)
    ``flicker`` = mean over consecutive frame pairs of the *median over pixels* of the absolute
    RGB change (channel mean, working resolution, 0-255 units). The scenes are static and the
    objects cover well under half of the frame, so the median ignores the moving objects and
    measures how much the background changes: 0 for the renderer, large for flicker or noise.
    ``no_flicker = 100 * max(0, 1 - flicker / FLICKER_FULL)``.
Dynamics (``dynamics``, score; ``displacement``, raw)
    A reader window *moves* when some object centroid gets at least ``MOVE_MIN`` frame widths away
    from every centroid of the window's first frame with objects (distances on the torus, as the
    world wraps). ``displacement`` = that largest distance, averaged over windows; ``dynamics`` =
    % of windows that move. A frozen video scores 0, even the gentlest bobbing (the renderer's
    slow hovering moves ~0.05 in 2 s) scores 100. A window without objects does not move.
Frame quality (``quality``, score; ``colour_emd`` and ``sharpness``, raw)
    The segment is compared with the renderer's ground truth of the same prompt, seed, frame range
    and size (``world.render(world.spec_from_prompt(prompt, seed), ...)``), by two statistics that
    do not depend on where the objects are:
    ``colour_emd`` = earth mover's distance between the per-channel histograms of all pixels
    (0-255 units, mean over R, G, B); ``sharpness`` = mean gradient energy (mean |dx| + |dy| of
    the luma) of the segment divided by the ground truth's, each plus 0.5 so that flat frames do not
    divide by zero (1 = as sharp, < 1 blurrier, > 1 noisier).
    ``quality = 100 * max(0, 1 - colour_emd / EMD_FULL) * max(0, 1 - |log2 sharpness| / SHARP_FULL)``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

import numpy as np

from . import world
from .world.motion import wrap_delta

SEGMENT_S = 15.0  # report granularity
WINDOW_S = 2.0  # reader window: the motion reader needs about 2 s
STABILITY_S = 1.0  # windows of the count-stability check
MOVE_MIN = 0.015  # frame widths an object must travel within a window to count as moving
FLICKER_FULL = 16.0  # background change per frame (0-255) at which no_flicker reaches 0
EMD_FULL = 32.0  # colour EMD (0-255) at which the colour factor of quality reaches 0
SHARP_FULL = 2.0  # |log2 sharpness| at which the sharpness factor of quality reaches 0 (4x off)
ADHERENCE = ("colour", "count", "motion", "scene")
SCORES = (*ADHERENCE, "adherence", "count_stability", "no_flicker", "dynamics", "quality")
RAW = ("flicker", "displacement", "colour_emd", "sharpness")


METRIC_DEFINITIONS = {  # one line each, for reports (the module docstring has the full story)
    "colour": f"% of {WINDOW_S:g}-s windows whose object colour (world reader) is the prompt's",
    "count": f"% of {WINDOW_S:g}-s windows whose object count is the prompt's",
    "motion": f"% of {WINDOW_S:g}-s windows whose motion class is the prompt's",
    "scene": f"% of {WINDOW_S:g}-s windows whose scene is the prompt's",
    "adherence": "mean of the adherence scores of the attributes the prompt names",
    "count_stability": f"% of {STABILITY_S:g}-s windows whose modal count is the segment's modal count",
    "no_flicker": f"100 * max(0, 1 - flicker / {FLICKER_FULL:g})",
    "dynamics": f"% of {WINDOW_S:g}-s windows in which some object moves >= {MOVE_MIN} frame widths",
    "quality": f"100 * max(0, 1 - colour_emd / {EMD_FULL:g}) * max(0, 1 - |log2 sharpness| / {SHARP_FULL:g})",
    "flicker": "mean over frame pairs of the median-over-pixels |RGB change| (0-255, ~32x32 pooled)",
    "displacement": f"largest object displacement in a {WINDOW_S:g}-s window (frame widths), window mean",
    "colour_emd": "earth mover's distance of per-channel colour histograms to the rendered truth (0-255)",
    "sharpness": "gradient energy (mean |dx| + |dy| of luma) relative to the rendered truth",
}


@dataclass(frozen=True)
class SegmentMetrics:
    """All metrics of one segment of one video (see the module docstring for the definitions)."""

    start_s: float
    end_s: float
    frames: int
    windows: int
    colour: float | None
    count: float | None
    motion: float | None
    scene: float | None
    adherence: float | None
    count_stability: float
    no_flicker: float
    dynamics: float
    quality: float
    flicker: float
    displacement: float
    colour_emd: float
    sharpness: float
    readings: dict  # attribute -> most common reading over the windows (None: nothing read)

    def as_dict(self) -> dict:
        return asdict(self)


def segment_bounds(n_frames: int, fps: float, segment_s: float = SEGMENT_S) -> list[tuple[int, int]]:
    """Frame ranges [a, b) of the segments; a tail shorter than one reader window joins the
    segment before it (too short to read on its own)."""
    seg = max(1, round(segment_s * fps))
    bounds = [(a, min(a + seg, n_frames)) for a in range(0, n_frames, seg)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < WINDOW_S * fps:
        (a, _), _ = bounds[-2], bounds.pop()
        bounds[-1] = (a, n_frames)
    return bounds


def _split(n: int, length: int) -> list[np.ndarray]:
    """Indices 0..n-1 cut into max(1, n // length) nearly equal consecutive windows."""
    return np.array_split(np.arange(n), max(1, n // max(1, length)))


def _mode(values: Iterable) -> object:
    """Most common value (ties: the largest, as ``world.read_count`` does); None if empty."""
    counts = Counter(v for v in values if v is not None)
    if not counts:
        return None
    best = max(counts.values())
    return max(k for k, v in counts.items() if v == best)


def _read_window(a: world.readers.Analysis) -> dict[str, object]:
    """Readings of one window; attributes that need objects read None when there are none."""
    has_objects = bool(a.mask.any())
    votes = world.motion_votes(None, analysis=a)
    return {"scene": a.scene,
            "colour": world.read_colour(None, analysis=a) if has_objects else None,
            "count": world.read_count(None, analysis=a) if has_objects else None,
            "motion": max(votes, key=votes.get) if votes else None}


def _displacement(centroids: list[np.ndarray]) -> float:
    """Largest distance (frame units, torus) of any centroid from every centroid of the first
    frame that has objects; 0 when no frame has objects."""
    frames = [c for c in centroids if len(c)]
    if not frames:
        return 0.0
    ref = frames[0]
    far = 0.0
    for c in frames[1:]:
        d = np.hypot(*np.moveaxis(wrap_delta(c[:, None] - ref[None]), -1, 0))  # [k_now, k_ref]
        far = max(far, float(d.min(axis=1).max()))
    return far


def flicker(pooled: np.ndarray) -> float:
    """Mean over consecutive pairs of the median-over-pixels absolute change (0-255); see above."""
    if len(pooled) < 2:
        return 0.0
    change = np.abs(np.diff(pooled.astype(np.float32), axis=0)).mean(axis=-1)  # [F-1, h, w]
    return float(np.median(change.reshape(len(change), -1), axis=1).mean())


def colour_emd(a: np.ndarray, b: np.ndarray) -> float:
    """Earth mover's distance between the per-channel 256-bin histograms of two uint8 clips,
    mean over channels, in 0-255 units (1-D EMD = area between the cumulative histograms)."""
    out = 0.0
    for ch in range(3):
        ca = np.cumsum(np.bincount(a[..., ch].ravel(), minlength=256)) / a[..., ch].size
        cb = np.cumsum(np.bincount(b[..., ch].ravel(), minlength=256)) / b[..., ch].size
        out += float(np.abs(ca - cb).sum())
    return out / 3


def gradient_energy(frames: np.ndarray) -> float:
    """Mean |dx| + |dy| of the luma (0-255 units per pixel): edges and texture; blur lowers it,
    noise raises it."""
    y = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return float(np.abs(np.diff(y, axis=1)).mean() + np.abs(np.diff(y, axis=2)).mean())


def quality_score(emd: float, sharpness: float) -> float:
    """The 0-100 frame-quality score from its two raw statistics (formula in the module docstring)."""
    colour = max(0.0, 1.0 - emd / EMD_FULL)
    sharp = max(0.0, 1.0 - abs(float(np.log2(max(sharpness, 1e-6)))) / SHARP_FULL)
    return 100.0 * colour * sharp


def ground_truth(prompt: str, start: int, stop: int, size: int, fps: float, seed: int = 0) -> np.ndarray:
    """The renderer's frames [start, stop) of the prompt: what a perfect model would show."""
    return world.render(world.spec_from_prompt(prompt, seed), start, stop, size=size, seed=seed, fps=fps)


def evaluate_segment(frames: np.ndarray, prompt: str, fps: float, start_frame: int = 0,
                     seed: int = 0) -> SegmentMetrics:
    """Metrics of one segment: frames uint8 [F, S, S, 3] that start at video frame ``start_frame``."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[1] != frames.shape[2] or not len(frames):
        raise ValueError(f"expected square RGB frames [F, S, S, 3], got {frames.shape}")
    want = world.parse_prompt(prompt)
    n = len(frames)
    readings, per_frame_counts, moves, pooled = [], [], [], []
    for idx in _split(n, round(WINDOW_S * fps)):
        a = world.analyse(frames[idx[0]:idx[-1] + 1])
        readings.append(_read_window(a))
        per_frame_counts += [len(c) for c in a.centroids]
        moves.append(_displacement(a.centroids))
        pooled.append(a.pooled)
    adherence = {k: (100.0 * float(np.mean([r[k] == want[k] for r in readings])) if k in want else None)
                 for k in ADHERENCE}
    named = [v for v in adherence.values() if v is not None]
    modal = _mode(per_frame_counts)
    stable = [_mode(per_frame_counts[i] for i in idx) == modal for idx in _split(n, round(STABILITY_S * fps))]
    flick = flicker(np.concatenate(pooled))
    truth = ground_truth(prompt, start_frame, start_frame + n, frames.shape[1], fps, seed)
    emd = colour_emd(frames, truth)
    sharp = (gradient_energy(frames) + 0.5) / (gradient_energy(truth) + 0.5)
    return SegmentMetrics(
        start_s=start_frame / fps, end_s=(start_frame + n) / fps, frames=n, windows=len(readings),
        **adherence, adherence=float(np.mean(named)) if named else None,
        count_stability=100.0 * float(np.mean(stable)),
        no_flicker=100.0 * max(0.0, 1.0 - flick / FLICKER_FULL),
        dynamics=100.0 * float(np.mean([m >= MOVE_MIN for m in moves])),
        quality=quality_score(emd, sharp), flicker=flick, displacement=float(np.mean(moves)),
        colour_emd=emd, sharpness=sharp,
        readings={k: _mode(r[k] for r in readings) for k in ADHERENCE})


def evaluate_stream(chunks: Iterable[np.ndarray], prompt: str, fps: float, n_frames: int,
                    segment_s: float = SEGMENT_S, seed: int = 0) -> Iterator[SegmentMetrics]:
    """Evaluate a video arriving chunk by chunk, yielding each segment's metrics as soon as it is
    complete. Only the current segment's frames are held, so memory stays flat however long the
    video is. Frames past ``n_frames`` are ignored."""
    bounds = iter(segment_bounds(n_frames, fps, segment_s))
    a, b = next(bounds, (0, 0))
    held: list[np.ndarray] = []
    have = 0  # frames held, starting at frame a
    for chunk in chunks:
        held.append(np.asarray(chunk))
        have += len(chunk)
        while b > a and have >= b - a:
            buf = np.concatenate(held)
            yield evaluate_segment(buf[: b - a], prompt, fps, a, seed)
            held, have = [buf[b - a:].copy()], have - (b - a)  # copy: let the segment go
            a, b = next(bounds, (b, b))
        if b <= a:
            return
    if b > a:
        raise ValueError(f"the video ended at frame {a + have}, before its {n_frames} frames")


def evaluate_frames(frames: np.ndarray, prompt: str, fps: float, segment_s: float = SEGMENT_S,
                    seed: int = 0) -> list[SegmentMetrics]:
    """Metrics of a whole video (uint8 [F, S, S, 3] from video time 0), one entry per segment.

    ``seed`` is the world seed of the ground truth used by the quality score (it only fills the
    attributes the prompt leaves open and places the objects, which the quality statistics ignore).
    """
    return list(evaluate_stream([frames], prompt, fps, len(frames), segment_s, seed))
