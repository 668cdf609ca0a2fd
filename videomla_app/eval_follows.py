"""Which motions a model follows, measured once and shipped in its ``model.json``, so a prompt that
asks for one it seldom draws is told so before the run instead of after two minutes of video.

Why motion alone: when this was written the embedded ``tiny`` followed circling and hovering in
almost every video and straight motions and bouncing in almost none, while its colour and scene
adherence did not depend on the words used that much. Each fine-tune since moved the per-motion
numbers (the shipped pair's are in ``assets/MODEL_CARD.md``), so they are measured per model. The
measurement is ``videomla eval --prompt-set motions --record``: :data:`PER_MOTION` prompts per
motion, their other attributes drawn at random (seeded) and the speed left at its default, scored
by the same motion reader as every eval, and the per-motion mean written under ``"follows"``.
The same videos also give the objects drawn per count asked (:func:`count_follows`), recorded for
the model card but never warned about.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import world
from .atomic import replacing
from .world.captions import MOTION_PHRASES

PER_MOTION = 8  # videos per motion: with 4 a motion's rate moved by tens of points from video to video
FOLLOWED = 50.0  # motion score (% of reader windows that read the motion asked) below which a prompt is warned


def motion_prompts(per_motion: int = PER_MOTION, seed: int = 0) -> tuple[str, ...]:
    """``per_motion`` canonical captions per motion (motion by motion, in ``world.MOTIONS`` order),
    shape, colour, size, count and scene drawn from ``seed``; speed at its default."""
    rng = np.random.default_rng([seed, 0xF0])
    out = []
    for motion in world.VOCAB["motion"]:
        for _ in range(per_motion):
            spec = world.sample_spec(rng).with_(motion=motion, speed=world.DEFAULTS["speed"])
            out.append(world.caption(spec))
    return tuple(out)


# videos of the hovering set, 30 s each: tiny - twin dynamics -10.0 before the chained pair, -3.6 with it,
# +6.0 with the four-chunk pair (32 videos, two seed sets)
HOVERING = 16
HOVERING_SEED = 1000  # its draw; the motion set draws from 0


def hovering_prompts(n: int = HOVERING, seed: int = HOVERING_SEED) -> tuple[str, ...]:
    """``n`` captions of hovering worlds, every other attribute drawn from ``seed``, the speed too.

    Why a set of its own: the motion reader calls a stopped object "hovering", so a model whose
    hovering objects stop still follows hovering; dynamics over 30 s of these prompts is what showed
    the every-clip `tiny` letting them stop (README, "Slow hovering stops")."""
    rng = np.random.default_rng([seed, 0xF0])
    return tuple(world.caption(world.sample_spec(rng).with_(motion="hovering")) for _ in range(n))


def _per_video(result: dict, attr: str, value) -> dict:
    """{what each prompt names for ``attr``: [per video, the mean of ``value(segment)`` over its
    segments that have an ``attr`` score]}, in the order the videos come; prompts that leave
    ``attr`` open and videos without a scored segment are left out."""
    out: dict = {}
    for video in result["prompts"]:
        named = world.parse_prompt(video["prompt"]).get(attr)
        segs = [s for s in video["segments"] if s.get(attr) is not None]
        if named is not None and segs:
            out.setdefault(named, []).append(float(np.mean([value(s) for s in segs])))
    return out


def motion_follows(result: dict) -> dict:
    """One model's eval result (``evaluate_model``) on motion prompts -> ``{"motion": {motion: %},
    "moving": {motion: %}, "videos": {motion: n}, "seconds": s}``: the mean motion and dynamics
    scores over each motion's videos.

    Why dynamics too: the motion reader calls an object that stays near one place "hovering", so a
    hovering object that has stopped still follows its motion; only dynamics (windows in which an
    object moves) tells a bob from a standstill. Card only, never warned about."""
    scores = _per_video(result, "motion", lambda s: s["motion"])
    moving = _per_video(result, "motion", lambda s: s["dynamics"])
    return {"motion": {str(m): round(float(np.mean(v)), 1) for m, v in scores.items()},
            "moving": {str(m): round(float(np.mean(v)), 1) for m, v in moving.items()},
            "videos": {str(m): len(v) for m, v in scores.items()}, "seconds": result["seconds"]}


def count_follows(result: dict) -> dict:
    """Per count a prompt names, how often a model drew it and how many objects it drew instead:
    ``{"count": {"1": %, ...}, "objects": {"1": mean, ...}, "count_videos": {"1": n, ...}}`` (keys
    as JSON keeps them). ``count`` is the mean count score over the count's videos; ``objects`` the
    mean of each video's modal reading over its segments (0 for a segment without objects).

    Recorded, not warned about: every caption names a count ("a red ball" is one), and the shipped
    models follow none of them reliably, so a warning would greet every prompt. The numbers go in
    the model card instead, where "a red ball" drawing 2.3 objects on average is said once."""
    scores = _per_video(result, "count", lambda s: s["count"])
    drawn = _per_video(result, "count", lambda s: (s.get("readings") or {}).get("count") or 0)
    order = sorted(scores)
    return {"count": {str(n): round(float(np.mean(scores[n])), 1) for n in order},
            "objects": {str(n): round(float(np.mean(drawn[n])), 2) for n in order},
            "count_videos": {str(n): len(scores[n]) for n in order}}


def read_follows(model_json: Path) -> dict | None:
    """A shipped model.json's "follows"; None when it was not measured or there is no readable file
    (a build without that model), which every reader treats as "nothing to say"."""
    try:
        return json.loads(model_json.read_text()).get("follows")
    except (OSError, ValueError):
        return None


def record_follows(model_json: Path, follows: dict) -> None:
    """Write ``follows`` into a shipped ``model.json`` (atomically; the rest of the file kept)."""
    spec = json.loads(model_json.read_text())
    spec["follows"] = follows
    with replacing(model_json) as tmp:
        tmp.write_text(json.dumps(spec, indent=2) + "\n")


def follows_warning(model: str, follows: dict | None, prompt: str) -> str | None:
    """A line for a prompt whose motion the model followed under :data:`FOLLOWED` % of the time in
    its test videos, naming the motions it does follow; None when it follows it or nothing was
    measured."""
    rates = (follows or {}).get("motion") or {}
    motion = world.parse_prompt(prompt).get("motion")
    if motion not in rates or rates[motion] >= FOLLOWED:
        return None
    n = (follows.get("videos") or {}).get(motion)  # type: ignore[union-attr]
    tested = f"{n} test videos" if n else "its test videos"
    good = sorted(((r, m) for m, r in rates.items() if r >= FOLLOWED), reverse=True)
    does = (f"motions it follows: {', '.join(f'{_phrase(m)} ({r:.0f} %)' for r, m in good)}" if good
            else f"it follows no motion {FOLLOWED:.0f} % of the time")
    return f'{model} followed "{_phrase(str(motion))}" {rates[motion]:.0f} % of the time in {tested}; {does}'


def _phrase(motion: str) -> str:
    """The motion as captions say it first ("drifting left", "circling around")."""
    return MOTION_PHRASES[motion][0][0] if motion in MOTION_PHRASES else motion
