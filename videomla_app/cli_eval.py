"""``videomla eval``: score models on the fixed prompt set, per 15-s segment (``evaluate.py``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from .cli import RuntimeFailure, UsageError, app, err, friendly, out
from .eval_follows import HOVERING, PER_MOTION


@app.command("eval")
@friendly
def eval_models(
    models: Annotated[str, typer.Option("--models", "-m", help="Comma-separated model names.")] = "tiny,tiny-mha",
    seconds: Annotated[float, typer.Option(help="Video length per prompt, in seconds.")] = 120.0,
    prompt_set: Annotated[str, typer.Option("--prompt-set", help="fixed: the 8 published prompts; motions: "
                                                  f"{PER_MOTION} prompts per motion, to measure which motions "
                                                  f"a model follows; hovering: {HOVERING} hovering prompts "
                                                  "at random speeds (with --seed 1000: the README's), to "
                                                  "measure whether their objects keep bobbing; or a text "
                                                  "file of your own prompts, one per line.")] = "fixed",
    prompts: Annotated[int | None, typer.Option(help="Use the first N prompts of the set (0: none).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the first prompt; prompt i uses seed + i.")] = 0,
    repeats: Annotated[int, typer.Option(help="Videos per prompt, each with its own seed (seed + i + j x "
                                              "prompts): more videos, smaller errors.")] = 1,
    segment: Annotated[float, typer.Option(help="Report segment length, in seconds.")] = 15.0,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write every number to this JSON file.")] = None,
    ranks: Annotated[bool, typer.Option(help="Add the MHA -> MLA rank analysis (needs an MLA model and its "
                                             "dense twin in --models).")] = False,
    warm_start: Annotated[float | None, typer.Option("--warm-start", help="Warm-start timestep for every model "
                                                          "(0 = off; default: each model's own).")] = None,
    first_steps: Annotated[int | None, typer.Option("--first-steps", help="Denoising steps of each video's first "
                                                         "chunk, for every model (default: each model's own).")] = None,
    words: Annotated[int, typer.Option(help="Also measure which caption words each embedded model uses, on N "
                                            "rendered clips (its flow loss with one word swapped).")] = 0,
    record: Annotated[bool, typer.Option(help="With --prompt-set motions: write each embedded model's "
                                              "per-motion adherence into its model.json, which is what "
                                              "generate warns from, and its dynamics per motion and "
                                              "the objects it draws per count asked (for the model "
                                              "card).")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
) -> None:
    """Generate a fixed set of prompts and report adherence, temporal consistency, dynamics and frame
    quality per segment (higher is better), plus speed, memory and KV-cache size.

    [b]Examples[/b]
      videomla eval                                   # tiny vs tiny-mha, 8 prompts x 2 minutes
      videomla eval --seconds 30 --prompts 2 --json eval.json
      videomla eval --ranks --prompts 0               # only the rank analysis (seconds)
      videomla eval --seconds 30 --repeats 4          # 32 videos: half the error at the same cost
      videomla eval --prompt-set motions --seconds 8 --record   # which motions each model follows
      videomla eval --prompt-set my_prompts.txt --seconds 60      # your own prompts, one per line
      videomla eval --words 64 --prompts 0            # which caption words each model uses (minutes)
    """
    from .eval_metrics import WINDOW_S
    from .eval_follows import hovering_prompts, motion_prompts
    from .evaluate import PROMPTS, evaluate_models, format_table, rank_pair, write_json
    from .models import ModelUnavailable, check_timestep, get_entry, resolve_device, resolve_dtype, step_list

    names = [m.strip() for m in models.split(",") if m.strip()]
    if not names:
        raise UsageError("--models is empty: name at least one model (see 'videomla models')")
    for name in names:
        try:
            get_entry(name)
        except ValueError as e:
            raise UsageError(str(e)) from None
    sets = {"fixed": PROMPTS, "motions": motion_prompts(), "hovering": hovering_prompts()}
    if prompt_set not in sets:
        sets[prompt_set] = _prompts_file(prompt_set, tuple(sets))
    if record and prompt_set != "motions":
        raise UsageError("--record writes what --prompt-set motions measures: add --prompt-set motions")
    if record and prompts is not None:  # a part of the set would leave out whole motions
        raise UsageError("--record needs the whole motion set: drop --prompts")
    chosen = sets[prompt_set]
    n = len(chosen) if prompts is None else prompts
    if not 0 <= n <= len(chosen):
        raise UsageError(f"--prompts must be between 0 and {len(chosen)}, got {n}")
    if not seconds > 0 or seconds > 3600:
        raise UsageError(f"--seconds must be more than 0 and at most 3600, got {seconds:g}")
    if not WINDOW_S <= segment <= 3600:
        raise UsageError(f"--segment must be at least {WINDOW_S:g} s (one reader window), got {segment:g}")
    if ranks and rank_pair(names) is None:
        raise UsageError("--ranks needs an MLA model and its dense twin in --models (e.g. tiny,tiny-mha)")
    if not 0 <= words <= 1000:
        raise UsageError(f"--words must be between 0 and 1000 clips, got {words}")
    if words and (other := [m for m in names if get_entry(m).tier != "embedded"]):
        raise UsageError(f"--words measures models trained on the built-in world; not {', '.join(other)}")
    if not 1 <= repeats <= 100:
        raise UsageError(f"--repeats must be between 1 and 100, got {repeats}")
    if warm_start is not None:
        try:
            check_timestep(warm_start)
        except ValueError as e:
            raise UsageError(str(e)) from None
    if first_steps is not None:
        try:
            step_list(first_steps, "--first-steps")
        except ValueError as e:
            raise UsageError(str(e)) from None
    if json_path is not None and json_path.is_dir():
        raise UsageError(f"--json {json_path} is a folder: name the report file, e.g. {json_path / 'eval.json'}")
    if json_path is not None and not (json_path.parent.is_dir() and os.access(json_path.parent, os.W_OK)):
        # checked before the eval, which can take an hour, and not after it
        raise UsageError(f"--json {json_path}: cannot write into {json_path.parent} (no such folder, or not writable)")
    try:  # before any model loads: an unknown --device or --dtype is a usage error, not a crash
        resolve_dtype(dtype, resolve_device(device))
    except (ValueError, ModelUnavailable) as e:  # ModelUnavailable: --device cuda without a GPU
        raise UsageError(str(e)) from None
    if record:  # checked before the eval, which takes a quarter of an hour, and not after it
        _check_record_targets(names)
    if n == 0 and not ranks and not words:
        raise UsageError("--prompts 0 without --ranks or --words leaves nothing to do")
    try:
        report = {} if n == 0 and not ranks else evaluate_models(
            names, chosen[:n], seconds, seed, segment_s=segment, device=device, dtype=dtype, ranks=ranks,
            progress=lambda line: err.print(line, highlight=False), repeats=repeats, warm_start=warm_start,
            first_steps=first_steps)
    except ModelUnavailable as e:
        raise RuntimeFailure(str(e)) from None
    except KeyboardInterrupt:
        err.print("interrupted before any video was finished: nothing to report")
        raise typer.Exit(130) from None
    if report:
        out.print(format_table(report))
    words_cut = False
    if words and not report.get("interrupted"):
        from .eval_words import format_words

        report["words"], words_cut = _word_use(names, words, seed, device, dtype)
        if report["words"]:
            out.print(format_words(report["words"]), highlight=False, soft_wrap=True)
    if json_path is not None:
        try:
            write_json(report, json_path)
        except OSError as e:
            raise RuntimeFailure(f"cannot write {json_path}: {e}") from None
        out.print(f"wrote {json_path}", highlight=False)
    if record and not report.get("interrupted"):
        _record_follows(report)
    if words_cut:  # after the report is written and recorded: the videos evaluated before are kept
        raise typer.Exit(130)
    if report.get("interrupted"):
        done = ", ".join([f"{m} {len(r['prompts'])} of {r.get('videos_planned', len(r['prompts']))} videos"
                          for m, r in report["results"].items()]
                         + [f"{m} not started" for m in names if m not in report["results"]])
        err.print(f"interrupted: the report covers what finished ({done})", highlight=False)
        raise typer.Exit(130)


def _prompts_file(path: str, named: tuple[str, ...]) -> tuple[str, ...]:
    """--prompt-set FILE: its prompts, one per line (blank lines and lines starting with # skipped).

    Why: a gap on one published prompt is found by varying it one attribute at a time (colour,
    scene, size, ...), which the built-in sets cannot do."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--prompt-set must be one of {', '.join(named)} or a text file of prompts, one per "
                         f"line; got {path!r}, which is neither")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--prompt-set {path}: cannot read it as UTF-8 text ({e.__class__.__name__})") from None
    prompts = tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    if not prompts:
        raise UsageError(f"--prompt-set {path} holds no prompts: write one per line (# starts a comment)")
    return prompts


def _word_use(names: list[str], clips: int, seed: int, device: str, dtype: str) -> tuple[dict, bool]:
    """--words: each model's loss increase per swapped caption word (``eval_words.py``), and whether
    Ctrl-C cut it short (the models measured before are kept)."""
    from .eval_words import word_use
    from .models import ModelUnavailable, load_pipeline

    results = {}
    for name in names:
        err.print(f"{name}: word use on {clips} clips", highlight=False)
        try:
            pipe = load_pipeline(name, device=device, dtype=dtype)
        except ModelUnavailable as e:
            raise RuntimeFailure(str(e)) from None
        try:
            results[name] = word_use(pipe, clips=clips, seed=seed)
        except KeyboardInterrupt:
            done = ", ".join(results) or "no model"
            err.print(f"interrupted: word use measured for {done}", highlight=False)
            return results, True
    return results, False


def _record_follows(report: dict) -> None:
    """--record: each embedded model's per-motion adherence and dynamics, and the objects it draws
    per count asked, into its shipped model.json."""
    from .eval_follows import count_follows, motion_follows, record_follows
    from .models import assets_dir

    for name, result in report["results"].items():
        target = assets_dir() / name / "model.json"
        if not target.is_file():
            err.print(f"{name}: not an embedded model (no {target}): nothing recorded", highlight=False,
                      soft_wrap=True)
            continue
        follows = motion_follows(result) | count_follows(result)
        if not follows["motion"]:
            err.print(f"{name}: no motion was read (videos shorter than a reader window?): nothing recorded",
                      highlight=False, soft_wrap=True)
            continue
        try:
            record_follows(target, follows)
        except (OSError, ValueError) as e:  # unwritable, or a model.json that is not JSON
            raise RuntimeFailure(f"cannot record into {target}: {e}") from None
        rates = ", ".join(f"{m} {r:.0f} %" for m, r in follows["motion"].items())
        drawn = ", ".join(f"{c}: {n:.1f}" for c, n in follows["objects"].items())
        out.print(f"recorded in {target}: {rates}; objects drawn per count asked: {drawn or 'none read'}",
                  highlight=False, soft_wrap=True)


def _check_record_targets(names: list[str]) -> None:
    """--record: every embedded model's model.json (and its folder, for the atomic rename) writable."""
    from .models import assets_dir

    for name in names:
        target = assets_dir() / name / "model.json"
        if target.is_file() and not (os.access(target, os.W_OK) and os.access(target.parent, os.W_OK)):
            raise UsageError(f"--record: cannot write {target} (read-only)")
