"""Setting up runs, shared by every front end: validate a request, open the model, decide where the
video goes, and build the :class:`~videomla_app.recorder.Recording` (new video, exact continuation
of our clip, or continuation of footage made elsewhere). Raises InputError / RunError."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from . import world
from .errors import InputError, RunError
from .models import ModelUnavailable, load_pipeline
from .recorder import Recording, file_sha256, session_path_for
from .timeline import PromptSegment, Timeline

MAX_SECONDS = 120 * 60  # longer requests are almost certainly typos (and days of CPU time)


def duration_seconds(minutes: float | None, seconds: float | None, default: float | None) -> float:
    if minutes is not None and seconds is not None:
        raise InputError("give either --minutes or --seconds, not both")
    s = seconds if seconds is not None else (minutes * 60 if minutes is not None else default)
    if s is None:
        raise InputError("give a duration with --minutes or --seconds")
    if not math.isfinite(s) or s <= 0:
        raise InputError(f"duration must be a positive number of seconds, got {s:g}")
    if s > MAX_SECONDS:
        raise InputError(f"duration {s / 60:g} min is longer than the {MAX_SECONDS // 60} min limit")
    return s


def default_output(prompt: str) -> Path:
    import platformdirs

    slug = "-".join(re.findall(r"[a-z0-9]+", prompt.lower()))[:48].strip("-") or "video"
    folder = Path(os.environ.get("VIDEOMLA_OUTPUT_DIR") or Path(platformdirs.user_videos_dir()) / "videomla")
    return folder / f"{slug}-{datetime.now():%Y%m%d-%H%M%S}.mp4"


def check_output(path: Path, force: bool, est_bytes: int) -> Path:
    if path.suffix.lower() != ".mp4":
        raise InputError(f"output must be an .mp4 file, got {path}")
    if path.exists() and not force:
        raise InputError(f"{path} exists; choose another --out or add --force to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot create output folder {path.parent}: {e.strerror}") from None
    if not os.access(path.parent, os.W_OK):
        raise RunError(f"output folder {path.parent} is not writable")
    free = shutil.disk_usage(path.parent).free
    if free < est_bytes:
        raise RunError(f"not enough disk space in {path.parent}: about {est_bytes / 1e6:.0f} MB needed, "
                       f"{free / 1e6:.0f} MB free")
    return path


def estimate_bytes(pipe, seconds: float) -> int:
    """Disk a run needs: the video (generous 0.15 byte per pixel per frame) plus two sessions."""
    from .cache import make_cache

    v = pipe.preset.video
    cache = make_cache(pipe.model.cfg, pipe.preset.cache, pipe.batch, "meta", pipe.dtype)  # sizes only
    return int(seconds * v.fps * v.width * v.height * 0.15 + 2 * cache.nbytes + 10e6)


def open_pipeline(model: str, **kw):
    try:
        return load_pipeline(model, **kw)
    except ModelUnavailable as e:
        raise RunError(str(e)) from None
    except ValueError as e:
        raise InputError(str(e)) from None


def continue_session(clip: Path, info: dict, prompt: str, device: str, dest: Path, force: bool):
    """Our clip: restore its session (cache, RNG, decoder) and append to its encoded frames."""
    from .session import load_session, read_session_meta

    session = session_path_for(clip)
    try:
        meta = read_session_meta(session)
    except ValueError as e:
        raise RunError(str(e)) from None
    extra = json.loads(meta["extra"])
    if "video_sha256" in extra:
        if file_sha256(clip) != extra["video_sha256"]:
            raise RunError(f"{session.name} belongs to another version of {clip.name}; move it away to "
                                 "continue the video from its pixels instead")
    elif extra.get("pixel_frames") != info["frames"]:
        raise RunError(f"{session.name} describes {extra.get('pixel_frames')} frames but {clip.name} has "
                             f"{info['frames']}: the session does not belong to this video")
    s = extra["settings"]
    pipe = open_pipeline(meta["model"], device=device, dtype=s["dtype"], steps=len(s["steps"]), window=s["window"],
                         sink=s["sink"], recache=s.get("recache", True), guidance=s.get("guidance", 1.0),
                         warm_start=s.get("warm_start", 0.0),  # sessions from before warm starts: off
                         context_noise=s.get("context_noise", 0.0))  # ... and before context noise: clean
    if s.get("weights") and pipe.weights_id and s["weights"] != pipe.weights_id:
        # the saved cache holds keys of the weights that made the video: other weights would read
        # them as noise, and the continuation would silently not be the video's own
        raise RunError(f"{clip.name} was made with other {meta['model']} weights than this build ships; its "
                       f"session cannot continue it exactly: move {session.name} away to continue from its frames")
    try:
        state, timeline, _ = load_session(session, pipe)
    except ValueError as e:
        raise RunError(str(e)) from None
    now = pipe.frame_time(state.frame)
    if prompt.strip():
        timeline = Timeline(timeline.segments + (PromptSegment(now, prompt.strip()),))
    return Recording(pipe, timeline, dest, state, s, force=force, base_video=clip, base_frames=info["frames"])


def continue_footage(clip: Path, prompt: str, model: str, seed: int, device: str, dest: Path, force: bool):
    """Any other video: encode its last frames as context, then generate after them."""
    from .encoders import pixel_frames
    from .video_io import read_frames

    if not prompt.strip():
        raise InputError(f"{clip.name} was not made by videomla: give a prompt to continue it, "
                         f"e.g. videomla extend {clip.name} \"a red ball bouncing\"")
    timeline = Timeline.single(" ".join(prompt.split()))
    pipe = open_pipeline(model, device=device)
    v = pipe.preset.video
    try:
        frames, _ = read_frames(clip, size=(v.width, v.height), fps=v.fps)
    except ValueError as e:
        raise RunError(str(e)) from None
    c = pipe.preset.cache
    ts = pipe.vae.temporal_stride
    context = frames[-pixel_frames(c.sink_frames + c.window_frames, ts):]
    state = pipe.new_state(seed)
    pipe.prime(state, pipe.vae.encode(context), timeline.segments[0].prompt)
    settings = run_settings(pipe, model, seed)
    settings["continued_from"] = clip.name
    return Recording(pipe, timeline, dest, state, settings, force=force, prefix_frames=frames,
                     base_frames=len(frames))


def run_settings(pipe, model: str, seed: int) -> dict:
    return {"model": model, "seed": seed, "steps": list(pipe.preset.sampler.steps),
            "window": pipe.preset.cache.window_frames, "sink": pipe.preset.cache.sink_frames,
            "dtype": str(pipe.dtype).replace("torch.", ""), "recache": pipe.recache,
            "guidance": pipe.preset.sampler.guidance, "warm_start": pipe.preset.sampler.warm_start,
            "context_noise": pipe.preset.sampler.context_noise,
            "first_steps": list(pipe.preset.sampler.first_steps or pipe.preset.sampler.steps),
            **({"weights": pipe.weights_id} if pipe.weights_id else {})}


def reference_captions(n: int = 400) -> tuple[str, ...]:
    """A fixed sample of the captions the embedded model was trained on (the world's phrasings)."""
    import numpy as np

    rng = np.random.default_rng(20261128)
    return tuple(world.caption(world.sample_spec(rng), rng) for _ in range(n))


# What the embedded models can draw, named in a warning about words they never saw.
WORLD_WORDS = "it knows " + ", ".join(f"{attr}s ({', '.join(words)})" for attr, words in world.VOCAB.items())


def prompt_warnings(pipe, prompts: Timeline | str) -> list[str]:
    """Warnings (never errors) for each prompt of a timeline (or one prompt, as ``extend`` adds;
    "" has none) that is far from every training caption, names words no caption contains (a
    prompt can be close overall and still ask for a "dragon"), or whose end falls past the token
    states the model reads (which then likely ignores it). A warned prompt that names every
    attribute a caption names gets one more line: the same request as a training caption. A prompt
    asking for a motion the model was measured to seldom draw (model.json "follows") is told which
    motions it does draw.

    Only models with a real sentence encoder are checked; the dev models' toy encoder has no notion
    of similarity.
    """
    from .eval_follows import follows_warning
    from .text_encoder import MiniLMTextEncoder, check_prompt

    if not isinstance(pipe.text_encoder, MiniLMTextEncoder):
        return []
    import platformdirs

    cache = Path(platformdirs.user_cache_dir("videomla", appauthor=False)) / "reference_captions.npz"
    if isinstance(prompts, Timeline):
        texts = [seg.prompt for seg in prompts.segments]
    else:
        texts = [" ".join(prompts.split())]
    refs, enc = reference_captions(), pipe.text_encoder
    out = []
    for prompt in dict.fromkeys(filter(None, texts)):  # a prompt repeated in a timeline: warned once
        before = len(out)
        try:
            check = check_prompt(enc, prompt, refs, top_k=20, cache_path=cache)
        except OSError:  # an unwritable cache folder must not stop a run
            check = check_prompt(enc, prompt, refs, top_k=20)
        # Familiarity is scored against every caption; the examples shown are the nearest ones the
        # model reads in full, so a copied example draws no warning of its own.
        shown = [c for c in check.examples if not enc.unread_tail(c)][:3] or list(check.examples[:3])
        if msg := replace(check, examples=tuple(shown)).message():
            out.append(f'"{prompt}": {msg}')
        if unseen := world.unseen_words(prompt):
            named = ", ".join(f'"{w}"' for w in unseen)
            out.append(f'"{prompt}": no training caption contains {named}, so the model has not learned '
                       f"{'it' if len(unseen) == 1 else 'them'}; {WORLD_WORDS}")
        if tail := pipe.text_encoder.unread_tail(prompt):
            n = pipe.text_encoder.text_len - 1  # the first state is [CLS]
            out.append(f'"{prompt}": the model reads only the first {n} tokens (word pieces) of a prompt, '
                       f'so "{tail}" is likely ignored; shorten the prompt or move what matters to the front')
        if len(out) > before and (fitted := world.in_caption_words(prompt)) and fitted != prompt.lower():
            out.append(f'"{prompt}": in the words it was trained on, that is "{fitted}"')
        # last, and not a reason for the line above: the words are fine, the model is not
        follows = getattr(pipe, "follows", None)
        if follows and (motion := follows_warning(pipe.preset.name, follows, prompt)):
            out.append(f'"{prompt}": {motion}')
    return out


def plan_extension(clip: Path, prompt: str, model: str, seed: int, device: str, dest: Path, force: bool,
                   add_seconds: float, label: str | None = None) -> tuple[Recording, int]:
    """Everything ``extend`` decides, for every front end: read the clip, continue it exactly from
    its session or from its frames, check the output. Returns (recording, chunks to generate).
    ``label`` names the clip in messages (the UI shows upload names, not temp paths)."""
    from .video_io import probe

    label = label or str(clip)
    if not clip.is_file():
        raise RunError(f"{label}: no such video file")
    try:
        info = probe(clip)
    except Exception:
        raise RunError(f"{label}: cannot read this video (corrupt or not a video)") from None
    if info["frames"] == 0:
        raise RunError(f"{label}: the video has no frames")
    if session_path_for(clip).exists():
        rec = continue_session(clip, info, prompt, device, dest, force)
    else:
        rec = continue_footage(clip, prompt, model, seed, device, dest, force)
    check_output(dest, force, estimate_bytes(rec.pipe, add_seconds))
    return rec, rec.pipe.chunks_for_seconds(add_seconds, rec.state.frame)
