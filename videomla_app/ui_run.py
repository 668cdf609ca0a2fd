"""The web UI's event handlers: generate, extend, stop (FramePack's pattern, without its thread).

Each run handler is a generator that sets up a :class:`~videomla_app.recorder.Recording` exactly
as the CLI does (``runs.py``), iterates ``rec.chunks`` and yields one tuple of ``gr.update``s per
finished chunk. The pipeline loop stays in the library; nothing here generates.

Why no worker thread: Gradio runs each step of a sync generator in its thread pool and *closes*
the generator when the job is cancelled or the tab disconnects. Iterating the Recording inside
``closing(...)`` in the handler itself therefore finalises the MP4 (every finished chunk, at its
final path) on every way out: done, Stop, error, closed tab. Stop does not cancel the job (that
would lose the result on screen): it sets a per-tab flag that the Recording checks between chunks.
"""

import functools
import html
import logging
import threading
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from .errors import InputError, RunError
from .recorder import Recording, file_sha256
from .runs import (check_output, default_output, duration_seconds, estimate_bytes, open_pipeline, plan_extension,
                   prompt_warnings, run_settings)
from .timeline import PromptSegment, Timeline, format_time, parse_time, parse_timeline
from .ui_views import RunView, clock, layer_table, memory_text, note, results_table, status_html
from .video_io import partial_path

log = logging.getLogger(__name__)

MAX_UI_SECONDS = 600  # the duration control's range; longer runs belong to the CLI


@dataclass
class Tab:
    """What a running job of one browser tab shares with that tab's Stop button."""

    stop: threading.Event = field(default_factory=threading.Event)
    running: bool = False
    waiting: int = 0  # runs armed by the page and still in the queue


class Tabs:
    """Per-tab state that must be shared between concurrent events (``gr.State`` is per event)."""

    def __init__(self) -> None:
        self._tabs: dict[str, Tab] = {}
        self._lock = threading.Lock()

    def get(self, request: gr.Request | None) -> Tab:
        key = getattr(request, "session_hash", None) or ""
        with self._lock:
            return self._tabs.setdefault(key, Tab())

    def prune(self) -> None:
        """Forget tabs with nothing running or queued (an idle tab's entry is recreated on use)."""
        with self._lock:
            self._tabs = {k: t for k, t in self._tabs.items() if t.running or t.waiting}


def readable(handler):
    """Errors reach the page as one readable message (a toast, ``AppError`` for API clients), never
    as a stack trace; unexpected ones are logged in full on the server."""

    @functools.wraps(handler)
    def wrapper(*args, **kwargs):
        try:
            yield from handler(*args, **kwargs)
        except gr.Error:
            raise
        except (InputError, RunError) as e:
            raise gr.Error(str(e), print_exception=False) from None
        except Exception as e:
            log.exception("UI run failed")
            raise gr.Error(f"{type(e).__name__}: {e}", print_exception=False) from None

    return wrapper


def _cell(x) -> str:
    return "" if x is None or x != x else str(x).strip()  # x != x: a NaN from an empty table cell


def build_timeline(prompt: str, rows) -> Timeline:
    """The prompt box (a prompt, or the inline ``0:00 ...; 0:30 ...`` syntax) plus the table rows
    (start, prompt), merged and ordered by time."""
    segs = []
    if prompt and prompt.strip():
        try:
            segs += parse_timeline(prompt).segments
        except ValueError as e:
            raise InputError(str(e)) from None
    for i, row in enumerate(rows or [], 1):
        start, text = (_cell(c) for c in (list(row) + ["", ""])[:2])
        if not start and not text:
            continue
        if not start or not text:
            raise InputError(f"timeline row {i}: give both a start time (M:SS) and a prompt")
        try:
            segs.append(PromptSegment(parse_time(start), " ".join(text.split())))
        except ValueError as e:
            raise InputError(f"timeline row {i}: {e}") from None
    if not segs:
        raise InputError("write a prompt first (or pick an example)")
    segs.sort(key=lambda s: s.start_s)
    for a, b in zip(segs, segs[1:]):
        if a.start_s == b.start_s:
            raise InputError(f"two prompts start at {format_time(a.start_s)}: keep one")
    if segs[0].start_s != 0:
        raise InputError(f"nothing starts at 0:00 (the first prompt starts at "
                         f"{format_time(segs[0].start_s)}): write the opening prompt in the prompt box")
    return Timeline(tuple(segs))


def fresh_path(folder: Path, name: str) -> Path:
    """``name`` in ``folder``, numbered if taken: runs never replace each other's files."""
    p, stem, k = folder / name, Path(name).stem, 2
    while p.exists() or partial_path(p).exists():
        p, k = folder / f"{stem}-{k}.mp4", k + 1
    return p


def _int_or_none(x) -> int | None:
    return None if x is None or x == "" else int(x)


def _float_or_none(x) -> float | None:
    return None if x is None or x == "" else float(x)


class Handlers:
    """The events of one app: all runs write into ``folder``, the only folder the app serves."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.tabs = folder, Tabs()

    # -- run control ---------------------------------------------------------------------------
    def arm(self, request: gr.Request):
        """Called by the page before it queues a run: Stop may now cancel it even while queued."""
        tab = self.tabs.get(request)
        tab.stop.clear()
        tab.waiting += 1
        return (gr.update(interactive=False), gr.update(interactive=False), gr.update(interactive=True),
                note("Starting… if another run is using the device, this one waits in the queue."))

    def idle(self):
        return gr.update(interactive=True), gr.update(interactive=True), gr.update(interactive=False)

    def stop(self, request: gr.Request) -> None:
        """Finish the current chunk, then end the run and keep what is made (a playable video)."""
        tab = self.tabs.get(request)
        if tab.running or tab.waiting:
            tab.stop.set()

    def forget(self) -> None:
        """A tab closed (Gradio's unload passes no request): drop the idle tabs' entries."""
        self.tabs.prune()

    # -- runs ----------------------------------------------------------------------------------
    @readable
    def generate(self, prompt: str, rows, seconds: float, seed: float, model: str, steps, first_steps,
                 guidance, warm_start, window, sink, device: str, recache: bool, results: list,
                 request: gr.Request):
        """Make a new video from a prompt or timeline; streams a preview and memory per chunk."""
        with self._job(request) as tab:
            if tab.stop.is_set():
                yield self._outputs(status=note("Stopped before it started: nothing was written."))
                return
            timeline = build_timeline(prompt, rows)
            total = self._duration(seconds)
            if timeline.segments[-1].start_s >= total:
                raise InputError(f"the timeline switches at {format_time(timeline.segments[-1].start_s)}, "
                                 f"after the end of a {total:g} s video")
            seed = int(seed or 0)
            pipe = open_pipeline(model, device=device, steps=_int_or_none(steps), window=_int_or_none(window),
                                 sink=_int_or_none(sink), recache=bool(recache),
                                 guidance=_float_or_none(guidance), warm_start=_float_or_none(warm_start),
                                 first_steps=_int_or_none(first_steps))
            path = fresh_path(self.folder, default_output(timeline.segments[0].prompt).name)
            check_output(path, False, estimate_bytes(pipe, total))
            for warning in prompt_warnings(pipe, timeline):
                gr.Warning(warning)
            rec = Recording(pipe, timeline, path, pipe.new_state(seed), run_settings(pipe, model, seed))
            yield from self._record(rec, pipe.chunks_for_seconds(total), results, tab, "generating")

    @readable
    def extend(self, source: str | None, upload: str | None, seconds: float, prompt: str, model: str,
               seed: float, device: str, results: list, request: gr.Request):
        """Continue the chosen result (exactly, from its session) or an uploaded clip (from its frames)."""
        with self._job(request) as tab:
            if tab.stop.is_set():
                yield self._outputs(status=note("Stopped before it started: nothing was written."))
                return
            add = self._duration(seconds)
            clip, origin = self._clip(source, upload, results)
            dest = fresh_path(self.folder, Path(origin).stem + "-extended.mp4")
            rec, n = plan_extension(clip, prompt or "", model, int(seed or 0), device, dest, False, add,
                                    label=origin)
            for warning in prompt_warnings(rec.pipe, prompt or ""):
                gr.Warning(warning)
            yield from self._record(rec, n, results, tab, "extending", origin)

    # -- helpers -------------------------------------------------------------------------------
    @staticmethod
    def _duration(seconds) -> float:
        s = duration_seconds(None, None if seconds is None else float(seconds), None)
        if s > MAX_UI_SECONDS:
            raise InputError(f"{s:g} s is longer than the UI's {MAX_UI_SECONDS // 60} min limit; "
                             "use 'videomla generate --minutes N' for longer videos")
        return s

    def _clip(self, source: str | None, upload: str | None, results: list) -> tuple[Path, str]:
        """The clip to extend and the name to show for it. An upload that is byte for byte one of
        this tab's results continues from that result, so its session (exact continuation) is used."""
        if upload:
            up = Path(upload)
            for r in results:
                p = Path(r["path"])
                if p.exists() and p.stat().st_size == up.stat().st_size and file_sha256(p) == file_sha256(up):
                    return p, p.name
            return up, up.name
        chosen = [r for r in results if r["name"] == source] or results[-1:]
        if not chosen:
            raise InputError("nothing to extend yet: generate a video first, or upload a clip")
        p = Path(chosen[0]["path"])
        if not p.exists():
            raise RunError(f"{p.name} is no longer in {self.folder}")
        return p, p.name

    @contextmanager
    def _job(self, request: gr.Request):
        """The tab's bookkeeping around one run, whatever way it ends."""
        tab = self.tabs.get(request)
        tab.waiting = max(0, tab.waiting - 1)
        tab.running = True
        try:
            yield tab
        finally:
            tab.running = False
            tab.stop.clear()

    def _record(self, rec: Recording, n: int, results: list, tab: Tab, action: str,
                origin: str | None = None):
        """Run the recording, yielding the page's outputs after every chunk, then the result."""
        view = RunView(n, rec.planned_seconds(n), rec.pipe.preset.video.fps, rec.base_frames, action)
        yield self._outputs(status=view.status(), video="")  # clear the last result: a new one is coming
        try:
            with closing(rec.chunks(n, stop=tab.stop.is_set)) as chunks:
                for ev in chunks:
                    view.update(ev)
                    view.stopping = tab.stop.is_set() and view.done < n
                    yield self._outputs(view)
        except OSError as e:  # the recording kept the finished part; say where
            rec.failure = rec.failure or f"{e}; the finished part is kept in {self.folder}"
        if rec.failure:
            raise RunError(rec.failure)
        if not rec.finished:
            yield self._outputs(view, status=note("Stopped before the first chunk: nothing was written."))
            return
        results = results + [self._result(rec, origin)]
        frames = rec.base_frames + rec.frames_written
        word = "Stopped early" if view.done < n else "Done"
        rate = view.frames / max(view.elapsed, 1e-9)
        status = status_html(f"<b>{word}:</b> {html.escape(rec.out.name)} · {frames} frames, "
                             f"{frames / view.fps:.1f} s of video · {rate:.1f} frames/s "
                             f"in {clock(view.elapsed)}", view.done / n)
        yield self._outputs(view, status=status, video=str(rec.out), results=results)

    def _result(self, rec: Recording, origin: str | None) -> dict:
        frames = rec.base_frames + rec.frames_written
        return {"name": rec.out.name, "path": str(rec.out), "frames": frames,
                "seconds": frames / rec.pipe.preset.video.fps, "model": rec.settings["model"],
                "seed": rec.settings["seed"],
                "timeline": [[s.start_s, s.prompt] for s in rec.timeline.segments],
                "from": origin, "session": rec.session_ok}

    @staticmethod
    def _outputs(view: RunView | None = None, status: str | None = None, video=None,
                 results: list | None = None):
        """One value per output component, in ``ui_app.RUN_OUTPUTS`` order (unchanged ones skipped)."""
        keep = gr.update()
        live = view is not None and view.last is not None
        mem = view.memory() if live else None
        if results is None:
            table = files = source = state = keep
        else:
            names = [r["name"] for r in reversed(results)]
            state, table = results, results_table(results)
            files = [r["path"] for r in results]
            source = gr.update(choices=names, value=names[0])
        video = keep if video is None else gr.update(value=video or None)
        return (view.preview() if live else keep, video,
                status if status is not None else view.status(),
                view.memory_plot() if live else keep, memory_text(mem) if live else keep,
                layer_table(mem) if live else keep, state, table, files, source)
