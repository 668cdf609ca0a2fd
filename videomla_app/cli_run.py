"""``videomla generate`` and ``videomla extend``: option parsing and rendering around one
:class:`~videomla_app.recorder.Recording` (which wraps the pipeline's streaming generator)."""

from __future__ import annotations

import json
import resource
import signal
import time
from contextlib import closing
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live

from .cli import RuntimeFailure, UsageError, app, err, friendly, out
from .hub import ensure_downloaded
from .live import LiveView
from .recorder import Recording
from .runs import (check_output, default_output, duration_seconds, estimate_bytes, open_pipeline, plan_extension,
                   prompt_warnings, run_settings)
from .timeline import format_time, parse_timeline, read_timeline_file


def _record(rec: Recording, n_chunks: int, *, as_json: bool, preview: bool) -> dict:
    """Run a recording with the live view; Ctrl-C stops after the current chunk (twice: at once)."""
    console = out if not as_json else Console(stderr=True)
    view = LiveView(console, n_chunks, rec.planned_seconds(n_chunks), rec.pipe.preset.video.fps, preview,
                    base_frames=rec.base_frames)
    stop = {"flag": False}

    def on_sigint(signum, frame):
        if stop["flag"]:
            raise KeyboardInterrupt
        stop["flag"] = view.stopping = True

    old = signal.signal(signal.SIGINT, on_sigint)
    t0, hard = time.perf_counter(), False
    try:
        with closing(rec.chunks(n_chunks, stop=lambda: stop["flag"])) as chunks:
            if console.is_terminal and not as_json:
                with Live(view.render(), console=console, refresh_per_second=4) as live:
                    for ev in chunks:
                        view.update(ev)
                        live.update(view.render())
            else:
                for ev in chunks:
                    view.update(ev)
                    console.print(view.line(), highlight=False, soft_wrap=True)
    except KeyboardInterrupt:
        hard = True
    except OSError as e:  # the recording kept the finished part and usually says where
        rec.failure = rec.failure or f"{e}; the finished part is kept in {rec.out.parent}"
    finally:
        signal.signal(signal.SIGINT, old)
    if rec.failure:
        raise RuntimeFailure(rec.failure)
    wall = time.perf_counter() - t0
    mem = view.last.memory if view.last else None
    return {
        "output": str(rec.out) if rec.finished else None,
        "session": str(rec.session_path) if rec.finished and rec.session_ok else None,
        "model": rec.settings["model"], "seed": rec.settings["seed"],
        "chunks": rec.chunks_done, "frames": rec.frames_written, "total_frames": rec.base_frames + rec.frames_written,
        "video_seconds": (rec.base_frames + rec.frames_written) / rec.pipe.preset.video.fps,
        "wall_seconds": round(wall, 3), "fps": round(rec.frames_written / wall, 3) if wall else 0.0,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "cache_bytes": mem.cache_bytes if mem else None,
        "dense_cache_bytes": mem.dense_equivalent_bytes if mem else None,
        "interrupted": stop["flag"] or hard,
    }


def _finish(summary: dict, as_json: bool) -> None:
    """Print the result; an interrupted run exits with 130 (like the shell) after saving its work."""
    _report(summary, as_json)
    if summary["interrupted"]:
        raise typer.Exit(130)


def _report(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    if summary["output"] is None:
        err.print("no chunk was finished; nothing was written")
        return
    word = "stopped early" if summary["interrupted"] else "done"
    out.print(f"[green]{word}:[/green] {summary['output']}  ({summary['frames']} new frames, "
              f"{summary['video_seconds']:.1f} s of video, {summary['fps']:.1f} fps)", highlight=False)
    if summary["session"]:
        out.print(f"session: {summary['session']}", highlight=False)
        out.print(f"continue it: videomla extend \"{summary['output']}\" --seconds 10", highlight=False)


@app.command()
@friendly
def generate(
    prompt: Annotated[str, typer.Argument(help="Prompt, or an inline timeline: \"0:00 a red ball; 0:30 a blue ball\".")] = "",
    minutes: Annotated[float | None, typer.Option("--minutes", help="Video length in minutes.")] = None,
    seconds: Annotated[float | None, typer.Option("--seconds", help="Video length in seconds.")] = None,
    out_path: Annotated[Path | None, typer.Option("--out", "-o", help="Output .mp4 (default: your videos folder).")] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="Model name (see 'videomla models').")] = "tiny",
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same video.")] = 0,
    steps: Annotated[int | None, typer.Option(help="Denoising steps per chunk (model default: 4).")] = None,
    first_steps: Annotated[int | None, typer.Option("--first-steps", help="Denoising steps of the first chunk, which has no context to follow (model default: 16 for the embedded models, else --steps).")] = None,
    guidance: Annotated[float | None, typer.Option(help="Prompt guidance scale; 1 = off, one model call per step (model default); else both prompts run as one batch, ~1.2x the time.")] = None,
    warm_start: Annotated[float | None, typer.Option("--warm-start", help="Start each later chunk from the last frame noised to this timestep; 0 = off (model default).")] = None,
    window: Annotated[int | None, typer.Option(help="Window of recent latent frames kept in the cache.")] = None,
    sink: Annotated[int | None, typer.Option(help="Sink latent frames kept from the start.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
    timeline_file: Annotated[Path | None, typer.Option("--timeline", help="Timeline file: one 'M:SS prompt' per line.")] = None,
    recache: Annotated[bool, typer.Option(help="Rebuild the cache under the new prompt at each switch.")] = True,
    preview: Annotated[bool, typer.Option("--preview/--no-preview", help="Show a live preview in the terminal.")] = True,
    force: Annotated[bool, typer.Option(help="Replace the output file if it exists.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON summary at the end.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Download a missing full-size model without asking.")] = False,
    allow_missing: Annotated[bool, typer.Option(help="Full-size models: load a checkpoint that lacks some tensors.")] = False,
    offload_text: Annotated[bool, typer.Option(help="Full-size models: keep the text encoder on the CPU between prompts.")] = False,
) -> None:
    """Generate a video, streaming each chunk to disk as it is made.

    The embedded models first warn about a prompt they will not follow; the run goes on.

    [b]Examples[/b]
      videomla generate "a red ball bouncing on a beach" --minutes 2
      videomla generate "0:00 a red ball bouncing; 0:30 the ball turns blue" --seconds 60
      videomla generate --timeline story.txt --seconds 90 --out story.mp4 --seed 7
    """
    if timeline_file is not None and prompt.strip():
        raise UsageError("give a prompt or --timeline FILE, not both")
    try:
        timeline = read_timeline_file(timeline_file) if timeline_file else parse_timeline(prompt)
    except ValueError as e:
        raise UsageError(str(e)) from None
    total = duration_seconds(minutes, seconds, 10.0)
    if timeline.segments[-1].start_s >= total:
        raise UsageError(f"the timeline switches at {format_time(timeline.segments[-1].start_s)}, "
                         f"after the end of a {total:g} s video")
    ensure_downloaded(model, yes, err)  # a download-tier model's files: ask (terminal), --yes, or say what to run
    pipe = open_pipeline(model, device=device, dtype=dtype, steps=steps, window=window, sink=sink, recache=recache,
                         allow_missing=allow_missing, offload_text=offload_text, guidance=guidance,
                         warm_start=warm_start, first_steps=first_steps)
    default = default_output(timeline.segments[0].prompt)
    if out_path is None:
        out_path = default
    elif out_path.is_dir() or not out_path.suffix:
        out_path = out_path / default.name
    path = check_output(out_path, force, estimate_bytes(pipe, total))
    for warning in prompt_warnings(pipe, timeline):
        err.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    rec = Recording(pipe, timeline, path, pipe.new_state(seed), run_settings(pipe, model, seed), force=force)
    _finish(_record(rec, pipe.chunks_for_seconds(total), as_json=as_json, preview=preview), as_json)


@app.command()
@friendly
def extend(
    clip: Annotated[Path, typer.Argument(help="The video to continue.")],
    prompt: Annotated[str, typer.Argument(help="New prompt from the end of the clip (default: keep the clip's).")] = "",
    minutes: Annotated[float | None, typer.Option("--minutes", help="Minutes to add.")] = None,
    seconds: Annotated[float | None, typer.Option("--seconds", help="Seconds to add.")] = None,
    out_path: Annotated[Path | None, typer.Option("--out", "-o", help="Output .mp4 (default: CLIP-extended.mp4).")] = None,
    in_place: Annotated[bool, typer.Option("--in-place", help="Replace CLIP with the extended video.")] = False,
    model: Annotated[str, typer.Option("--model", "-m", help="Model for clips made elsewhere (ours name theirs).")] = "tiny",
    seed: Annotated[int, typer.Option(help="Seed for clips made elsewhere.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    preview: Annotated[bool, typer.Option("--preview/--no-preview", help="Show a live preview.")] = True,
    force: Annotated[bool, typer.Option(help="Replace the output file if it exists.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON summary at the end.")] = False,
) -> None:
    """Continue a video: exactly from its session if videomla made it, else from its last frames.

    Clips made by videomla continue from their session file, and the result equals a longer run
    frame for frame. Other videos are resampled to the model's size and frame rate, their last
    frames become the context, and the new file holds the old frames followed by the new ones.

    [b]Examples[/b]
      videomla extend beach.mp4 --seconds 20
      videomla extend beach.mp4 "the ball turns green" --seconds 30 --in-place
      videomla extend phone-clip.mov "a red ball bouncing" --seconds 10 --out more.mp4
    """
    if in_place and out_path is not None:
        raise UsageError("give --out or --in-place, not both")
    add = duration_seconds(minutes, seconds, 10.0)
    dest = clip if in_place else (out_path or clip.with_name(clip.stem + "-extended.mp4"))
    rec, n = plan_extension(clip, prompt, model, seed, device, dest, force or in_place, add)
    for warning in prompt_warnings(rec.pipe, prompt):
        err.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    _finish(_record(rec, n, as_json=as_json, preview=preview), as_json)


