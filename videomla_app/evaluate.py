"""``videomla eval``: how well a model follows its prompts, over time, on a fixed prompt set.

Each model generates every prompt of :data:`PROMPTS` (prompt ``i`` with seed ``seed + i``) for
``seconds`` (2 minutes by default), chunk by chunk; each 15-s segment is scored as soon as it is
complete (``eval_metrics``: adherence, temporal consistency, dynamics, frame quality, all 0-100,
higher is better), so memory stays flat however long the videos are. Per model the report holds
every segment of every prompt, their mean over prompts per segment, the mean over the video and
the *end/start ratio* (last segment / first segment: with 120 s, minute 2 against minute 0; 1 =
no drift), each video's mean and the standard error over videos, plus generation speed, peak RSS
and the KV cache's bytes against its dense equivalent. With an MLA model and its dense twin (or
any two models) the report adds their per-video difference, paired by prompt and seed, with its
standard error (``eval_stats``): 8 prompts cannot resolve a few points otherwise.

``repeats`` runs every prompt with that many seeds (video ``j`` of prompt ``i`` uses seed
``seed + i + j * len(prompts)``; one repeat is the plain prompt set). Why: the embedded models'
adherence is mostly all-or-nothing per video (a colour is 0 or 100 %, decided in the first chunk
and kept), so the error shrinks with the number of videos, not their length: 4 repeats of 30 s
cost what one 2-minute pass costs and halve the error.

Typical use::

    from videomla_app import evaluate as ev
    report = ev.evaluate_models(["tiny", "tiny-mha"], ev.PROMPTS[:2], seconds=30)
    rich.print(ev.format_table(report))
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from . import __version__, world
from .atomic import replacing
from .config import get_preset
from .eval_metrics import (METRIC_DEFINITIONS, RAW, SCORES, SEGMENT_S, WINDOW_S, SegmentMetrics,
                           evaluate_frames, evaluate_segment, evaluate_stream)
from .eval_ranks import format_ranks, rank_analysis
from .eval_stats import paired_difference, prompt_means, standard_error
from .memory import fmt_bytes
from .models import get_entry, load_pipeline
from .timeline import format_time

__all__ = ["PROMPTS", "PROMPT_SPECS", "SegmentMetrics", "evaluate_frames", "evaluate_segment",
           "evaluate_stream", "evaluate_model", "evaluate_models", "format_table", "format_ranks",
           "rank_analysis", "rank_pair", "ranks_for", "write_json"]

# The fixed prompt set: canonical captions of these specs (training-like phrasing). Together they
# cover every colour, count, motion and shape, three speeds, three sizes and 8 of the 10 scenes;
# the first two already differ in every attribute, so `--prompts 2` is a fair quick check.
PROMPT_SPECS: tuple[world.WorldSpec, ...] = (
    world.WorldSpec("ball", "red", "medium", 1, "bouncing", "day"),
    world.WorldSpec("square", "blue", "small", 2, "left", "night", "slow"),
    world.WorldSpec("star", "yellow", "medium", 3, "circling", "space", "fast"),
    world.WorldSpec("triangle", "green", "large", 1, "right", "meadow"),
    world.WorldSpec("heart", "pink", "medium", 2, "up", "sunset"),
    world.WorldSpec("diamond", "purple", "small", 4, "down", "snow"),
    world.WorldSpec("ball", "orange", "large", 2, "hovering", "beach", "slow"),
    world.WorldSpec("diamond", "green", "medium", 3, "circling", "desert"),
)
PROMPTS: tuple[str, ...] = tuple(world.caption(s) for s in PROMPT_SPECS)

DEFINITIONS = {**METRIC_DEFINITIONS,
               "ratio": "last segment / first segment (with 120 s: minute 2 vs minute 0); 1 = no drift",
               "sem": "standard error of the mean over videos (prompts x repeats): std of the per-video means "
                      "/ sqrt(videos)",
               "comparison": "per metric, mean and standard error of (model a - model b) over videos, "
                             "both run on the same prompts with the same seeds"}


class _Meter:
    """Counts what a generation run costs while its frames pass through."""

    def __init__(self) -> None:
        self.generation_s, self.frames, self.max_rss = 0.0, 0, 0
        self.memory = None

    def frames_of(self, events: Iterable) -> Iterator[np.ndarray]:
        for ev in events:
            self.generation_s += ev.timings["total_s"]
            self.frames += len(ev.frames)
            if ev.memory is not None:
                self.memory = ev.memory
                self.max_rss = max(self.max_rss, ev.memory.rss_bytes)
            yield ev.frames


def _mean(values: Sequence[float | None], weights: Sequence[float] | None = None) -> float | None:
    """Mean of the values that are not None (weighted if weights are given); None if none are."""
    keep = [i for i, v in enumerate(values) if v is not None]
    if not keep:
        return None
    w = None if weights is None else [weights[i] for i in keep]
    return float(np.average([values[i] for i in keep], weights=w))


def summarise(per_prompt: list[dict]) -> dict:
    """Per-segment means over videos, the frame-weighted mean over segments, end/start ratios,
    each video's own mean and the standard error of the mean over videos (``eval_stats``)."""
    first = per_prompt[0]["segments"]
    segments = []
    for j, seg in enumerate(first):
        row = {"start_s": seg["start_s"], "end_s": seg["end_s"], "frames": seg["frames"],
               "label": f"{format_time(seg['start_s'])}–{format_time(seg['end_s'])}"}
        for key in (*SCORES, *RAW):
            row[key] = _mean([p["segments"][j][key] for p in per_prompt])
        segments.append(row)
    weights = [s["frames"] for s in segments]
    mean = {k: _mean([s[k] for s in segments], weights) for k in (*SCORES, *RAW)}
    ratio = {}
    for k in (*SCORES, *RAW):
        a, b = segments[0][k], segments[-1][k]
        ratio[k] = b / a if len(segments) > 1 and a is not None and b is not None and a != 0 else None
    by_prompt = prompt_means(per_prompt, SCORES)
    sem = {k: standard_error([p[k] for p in by_prompt]) for k in SCORES}
    return {"segments": segments, "mean": mean, "ratio": ratio, "prompt_means": by_prompt, "sem": sem}


def video_seeds(n_prompts: int, seed: int = 0, repeats: int = 1) -> list[tuple[int, int, int]]:
    """(prompt index, repeat, seed) of every video, repeat by repeat; seeds never collide."""
    return [(i, j, seed + i + j * n_prompts) for j in range(repeats) for i in range(n_prompts)]


def evaluate_model(name: str, prompts: Sequence[str] = PROMPTS, seconds: float = 120.0, seed: int = 0, *,
                   segment_s: float = SEGMENT_S, device: str = "auto", dtype: str = "auto", pipeline=None,
                   progress: Callable[[str], None] | None = None, repeats: int = 1,
                   warm_start: float | None = None, first_steps: int | None = None) -> dict:
    """Generate each prompt for ``seconds`` (``repeats`` times) with model ``name`` and score it
    segment by segment.

    Prompt ``i`` of repeat ``j`` uses generation seed ``seed + i + j * len(prompts)``, which is
    also the world seed of its ground truth. Pass ``pipeline`` to reuse an already loaded
    :class:`StreamingPipeline`. Returns a JSON-ready dict (see the module docstring); ``progress``
    receives one line per segment.
    """
    if not prompts:
        raise ValueError("need at least one prompt")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    pipe = pipeline or load_pipeline(name, device=device, dtype=dtype, warm_start=warm_start,
                                     first_steps=first_steps)
    fps = pipe.preset.video.fps
    n_frames = round(seconds * fps)
    if n_frames < 1:
        raise ValueError(f"--seconds {seconds:g} is less than one frame at {fps} fps")
    n_chunks = pipe.chunks_for_seconds(seconds)
    meter, per_prompt, t0 = _Meter(), [], time.perf_counter()
    planned = video_seeds(len(prompts), seed, repeats)
    try:
        for i, j, s in planned:
            prompt, segs = prompts[i], []
            frames = meter.frames_of(pipe.stream(prompt, n_chunks, seed=s))
            for m in evaluate_stream(frames, prompt, fps, n_frames, segment_s, s):
                segs.append(m.as_dict())
                if progress:
                    span = f"{format_time(m.start_s)}–{format_time(m.end_s)}"
                    which = f"prompt {i + 1}/{len(prompts)}" + (f" seed {s}" if repeats > 1 else "")
                    progress(f"{name}  {which}  {span}  adherence {_fmt(m.adherence)}  "
                             f"quality {m.quality:.0f}  ({meter.frames / max(meter.generation_s, 1e-9):.1f} fps)")
            frames.close()
            per_prompt.append({"prompt": prompt, "seed": s, "repeat": j, "segments": segs})
    except KeyboardInterrupt:
        # An hour-long eval stopped by Ctrl-C keeps the videos it finished: the report covers them
        # (and says so); the one in progress is dropped, a part of a video is not comparable.
        if not per_prompt:
            raise
        raise EvalInterrupted(_model_report(name, pipe, repeats, seconds, n_frames, segment_s, meter, per_prompt,
                                            t0, planned=len(planned))) from None
    return _model_report(name, pipe, repeats, seconds, n_frames, segment_s, meter, per_prompt, t0)


class EvalInterrupted(KeyboardInterrupt):
    """Ctrl-C during an evaluation, carrying the report of the videos finished before it."""

    def __init__(self, partial: dict) -> None:
        super().__init__("evaluation interrupted")
        self.partial = partial


def _model_report(name: str, pipe, repeats: int, seconds: float, n_frames: int, segment_s: float, meter: _Meter,
                  per_prompt: list[dict], t0: float, planned: int | None = None) -> dict:
    """One model's JSON-ready report; ``planned``: the number of videos asked for, when fewer finished."""
    fps = pipe.preset.video.fps
    wall = time.perf_counter() - t0
    mem = meter.memory
    achieved = meter.frames / meter.generation_s if meter.generation_s else None
    return {
        "model": name, "preset": pipe.preset.name, "attn": pipe.model.cfg.attn, "repeats": repeats,
        "sampler": asdict(pipe.preset.sampler),
        "size": [pipe.preset.video.height, pipe.preset.video.width], "fps": fps, "seconds": seconds,
        "frames_per_video": n_frames, "segment_s": segment_s, "wall_s": wall,
        "generation_s": meter.generation_s, "evaluation_s": wall - meter.generation_s,
        "frames_generated": meter.frames, "achieved_fps": achieved,
        "realtime_factor": achieved / fps if achieved else None,
        "peak_rss_bytes": meter.max_rss,  # highest RSS read at a chunk boundary of this model's run
        "process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # since start
        "cuda_peak_bytes": mem.cuda_peak_bytes if mem else None,
        "cache_bytes": mem.cache_bytes if mem else None,
        "dense_equivalent_bytes": mem.dense_equivalent_bytes if mem else None,
        "cache_reduction": mem.reduction if mem else None,
        "prompts": per_prompt, **summarise(per_prompt),
        **({"interrupted": True, "videos_planned": planned} if planned is not None else {})}


def rank_pair(models: Sequence[str]) -> tuple[str, str] | None:
    """(MLA model, dense model) among ``models`` (the first of each kind), or None."""
    kinds = {m: get_preset(get_entry(m).preset).model.attn for m in models}
    mla = next((m for m in models if kinds[m] == "mla"), None)
    dense = next((m for m in models if kinds[m] == "mha"), None)
    return (mla, dense) if mla and dense else None


def ranks_for(mla: str, dense: str) -> dict:
    """:func:`rank_analysis` of two registered models (weights loaded in float32 on the CPU: a few
    SVDs of small matrices)."""
    mla_model = load_pipeline(mla, device="cpu", dtype="float32").model
    dense_model = load_pipeline(dense, device="cpu", dtype="float32").model
    out = rank_analysis(dense_model, mla_model, mla_model.cfg)
    return {"mla_model": mla, "dense_model": dense, **out}


def evaluate_models(models: Sequence[str], prompts: Sequence[str] = PROMPTS, seconds: float = 120.0,
                    seed: int = 0, *, segment_s: float = SEGMENT_S, device: str = "auto", dtype: str = "auto",
                    ranks: bool = False, progress: Callable[[str], None] | None = None, repeats: int = 1,
                    warm_start: float | None = None, first_steps: int | None = None) -> dict:
    """The full report: every model on every prompt (one pipeline loaded at a time), the
    settings, and with ``ranks`` the rank analysis of the MLA model against its dense twin."""
    t0 = time.perf_counter()
    report: dict = {"version": __version__, "models": list(models), "prompts": list(prompts),
                    "repeats": repeats, "seeds": [s for _, _, s in video_seeds(len(prompts), seed, repeats)],
                    "seconds": seconds,
                    "segment_s": segment_s, "window_s": WINDOW_S, "definitions": DEFINITIONS, "results": {}}
    if ranks:
        pair = rank_pair(models)
        if pair is None:
            raise ValueError("the rank analysis needs an MLA model and its dense twin (e.g. tiny,tiny-mha)")
        report["ranks"] = ranks_for(*pair)
    for name in models:
        if prompts:
            try:
                report["results"][name] = evaluate_model(name, prompts, seconds, seed, segment_s=segment_s,
                                                         device=device, dtype=dtype, progress=progress,
                                                         repeats=repeats, warm_start=warm_start,
                                                         first_steps=first_steps)
            except KeyboardInterrupt as e:  # the models after it are not started
                if isinstance(e, EvalInterrupted):
                    report["results"][name] = e.partial
                if not report["results"]:  # not one video finished
                    raise
                report["interrupted"] = True
                break
    pair = rank_pair(models) or (tuple(models[:2]) if len(models) == 2 else None)
    complete = [m for m, r in report["results"].items() if not r.get("interrupted")]
    if pair is not None and all(m in complete for m in pair):
        a, b = (report["results"][m]["prompt_means"] for m in pair)
        report["comparison"] = {"a": pair[0], "b": pair[1], "metrics": paired_difference(a, b, SCORES)}
    report["wall_s"] = time.perf_counter() - t0
    return report


def write_json(report: dict, path: Path | str) -> None:
    """Atomically: a report is written once, at the end of a long run, and must not be half there."""
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------
# Tables

_ROWS = [("colour", "colour %"), ("count", "count %"), ("motion", "motion %"), ("scene", "scene %"),
         ("adherence", "adherence %"), ("count_stability", "count stable %"), ("no_flicker", "no flicker"),
         ("dynamics", "dynamics %"), ("quality", "quality")]
_RAW_ROWS = [("flicker", "flicker", 1), ("displacement", "displacement", 2), ("colour_emd", "colour EMD", 1),
             ("sharpness", "sharpness", 2)]


def _fmt(v: float | None, digits: int = 0) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _fmt_diff(v: float | None) -> str:
    return "–" if v is None else f"{v:+.0f}"


def _model_table(r: dict) -> Table:
    """One model's block, compact enough for 2 minutes (8 segments) in an 80-column terminal."""
    segs = r["segments"]
    title = (f"[b]{r['model']}[/b] ({r['attn'].upper()}, {r['size'][0]}x{r['size'][1]} @ {r['fps']} fps): "
             f"{len(r['prompts'])} videos x {r['seconds']:g} s")
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 0), show_edge=False)
    t.add_column("metric", no_wrap=True)
    for s in segs:
        t.add_column(s["label"].replace("–", "–\n"), justify="right", min_width=5)
    t.add_column("mean", justify="right", style="bold")
    t.add_column("±", justify="right", style="dim")
    t.add_column("end/\nstart", justify="right")
    sem = r.get("sem", {})
    for key, label in _ROWS:
        t.add_row(label, *(_fmt(s[key]) for s in segs), _fmt(r["mean"][key]), _fmt(sem.get(key)),
                  _fmt(r["ratio"][key], 2), end_section=key == "quality")
    for key, label, digits in _RAW_ROWS:
        t.add_row(label, *(_fmt(s[key], digits) for s in segs), _fmt(r["mean"][key], digits), "",
                  _fmt(r["ratio"][key], 2), style="dim")
    fps = _fmt(r["achieved_fps"], 1)
    cache = ("–" if r["cache_bytes"] is None else
             f"{fmt_bytes(r['cache_bytes'])} vs dense {fmt_bytes(r['dense_equivalent_bytes'])} "
             f"(-{100 * r['cache_reduction']:.1f} %)")
    t.caption = (f"scores 0-100, higher is better; ±: standard error over videos; dim rows: raw values "
                 f"(definitions in --json)\n"
                 f"generation {fps} fps (real time: {r['fps']}); wall {r['wall_s']:.0f} s; "
                 f"KV cache {cache}; peak RSS {fmt_bytes(r['peak_rss_bytes'])}")
    t.caption_justify = "left"
    return t


def _comparison_table(report: dict) -> Table:
    """Paired difference of two models on the same prompts and seeds, with its standard error."""
    c = report["comparison"]
    ra, rb = report["results"][c["a"]], report["results"][c["b"]]
    t = Table(title=f"[b]{c['a']} - {c['b']}[/b], paired by prompt and seed", title_justify="left",
              box=box.SIMPLE_HEAD, padding=(0, 1), show_edge=False)
    for col in ("metric", c["a"], c["b"], "difference", "±"):
        t.add_column(col, justify="left" if col == "metric" else "right", no_wrap=True)
    for key, label in _ROWS:
        d = c["metrics"][key]
        t.add_row(label, _fmt(ra["mean"][key]), _fmt(rb["mean"][key]), _fmt_diff(d["mean"]), _fmt(d["sem"]))
    t.caption = "±: standard error of the per-video difference (under about 2 ±, not resolved)"
    t.caption_justify = "left"
    return t


def format_table(results: dict) -> Group:
    """Rich renderable: one block per model (rows: metrics; columns: segments, mean, end/start),
    then the rank table if present. Accepts a report from :func:`evaluate_models` or one result
    of :func:`evaluate_model`."""
    if "results" not in results:
        results = {"results": {results["model"]: results}}
    parts: list = []
    for r in results["results"].values():
        parts += [_model_table(r), Text("")]
    if "comparison" in results:
        parts += [_comparison_table(results), Text("")]
    if "ranks" in results:
        rk = results["ranks"]
        parts.append(format_ranks(rk, f"{rk['dense_model']} -> {rk['mla_model']} rank analysis"))
    return Group(*parts)
