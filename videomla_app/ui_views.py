"""What the web UI shows of a run, computed from the pipeline's :class:`ChunkEvent` stream.

No Gradio here: these are plain values (an image array, HTML and Markdown text, pandas tables), so
the handlers stay a thin loop and the rendering can be tested without a server. Memory numbers are the ones
the pipeline measured on its real tensors (``MemoryReadout``), never re-derived here.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from PIL import Image

from .memory import MemoryReadout, fmt_bytes
from .pipeline import ChunkEvent
from .timeline import format_time

PREVIEW_PX = 320  # the models make 32-128 px frames: enlarge them (crisp pixels) to be seen
MLA, DENSE = "MLA latent cache", "dense MHA, same window"
PLOT_POINTS = 240  # the plot keeps at most this many chunks (evenly thinned): the cache is flat anyway


def enlarge(frame: np.ndarray, px: int = PREVIEW_PX) -> np.ndarray:
    """Nearest-neighbour upscale so a 32 px frame is not blurred into mush by the browser."""
    h, w = frame.shape[:2]
    k = max(1, px // max(h, w))
    if k == 1:
        return frame
    return np.asarray(Image.fromarray(frame).resize((w * k, h * k), Image.Resampling.NEAREST))


def clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


@dataclass
class RunView:
    """Everything on screen about the run in progress; fed one event per finished chunk."""

    n_chunks: int  # chunks this run makes
    total_seconds: float  # video length at the end (an extension includes the old part)
    fps: int
    base_frames: int = 0  # frames that were there before (extend)
    action: str = "generating"
    t0: float = field(default_factory=time.perf_counter)
    done: int = 0
    frames: int = 0
    last: ChunkEvent | None = None
    history: list[tuple[int, int, int]] = field(default_factory=list)  # (chunk, cache B, dense B)
    stopping: bool = False

    def update(self, ev: ChunkEvent) -> None:
        self.done += 1
        self.frames += len(ev.frames)
        self.last = ev
        if ev.memory is not None:
            self.history.append((self.done, ev.memory.cache_bytes, ev.memory.dense_equivalent_bytes))

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def eta(self) -> float | None:
        """Seconds left, from the mean time per chunk so far."""
        return self.elapsed / self.done * (self.n_chunks - self.done) if self.done else None

    def progress_text(self) -> str:
        eta = self.eta()
        return f"chunk {self.done}/{self.n_chunks}" + ("" if eta is None else f" · ETA {clock(eta)}")

    def status(self) -> str:
        """HTML: where the run is, how fast, what prompt is in force, and a progress bar."""
        if self.last is None:
            return status_html(f"<b>{self.action.capitalize()}…</b> making the first chunk", 0.0)
        video_s = (self.base_frames + self.frames) / self.fps
        fps = self.frames / max(self.elapsed, 1e-9)
        stop = " · <b>stopping after this chunk</b>" if self.stopping else ""
        return status_html(f"<b>{self.action.capitalize()}:</b> {self.progress_text()} · {video_s:.1f} / "
                           f"{self.total_seconds:.1f} s of video · {fps:.1f} frames/s{stop}<br>"
                           f"prompt: <i>{html.escape(self.last.prompt)}</i>",
                           self.done / max(self.n_chunks, 1))

    def preview(self) -> np.ndarray | None:
        return None if self.last is None else enlarge(self.last.frames[-1])

    def memory_plot(self) -> pd.DataFrame:
        """Long format for ``gr.LinePlot(x="chunk", y="MB", color="cache")``: our cache beside the
        dense-MHA cache the same window would need."""
        rows = self.history[:: max(1, -(-len(self.history) // PLOT_POINTS))]
        long = [r for c, mla, dense in rows for r in ((c, mla / 1e6, MLA), (c, dense / 1e6, DENSE))]
        return pd.DataFrame(long, columns=["chunk", "MB", "cache"])

    def memory(self) -> MemoryReadout | None:
        return None if self.last is None else self.last.memory


def status_html(text: str, fraction: float | None = None) -> str:
    """The status box: ``text`` is HTML (escape user text first), ``fraction`` fills the bar."""
    if fraction is None:
        return f'<div class="vm-status">{text}</div>'
    bar = f'<div class="vm-bar"><div style="width:{100 * fraction:.1f}%"></div></div>'
    return f'<div class="vm-status">{text}{bar}</div>'


def note(text: str) -> str:
    """A plain-text status message."""
    return status_html(html.escape(text))


def memory_text(mem: MemoryReadout | None) -> str:
    """The readout beside the plot: cache vs dense, text K/V, process RSS and (on CUDA) VRAM."""
    if mem is None:
        return "Memory appears with the first chunk."
    vram = ("no CUDA device" if mem.cuda_allocated_bytes is None else
            f"{fmt_bytes(mem.cuda_allocated_bytes)} (peak {fmt_bytes(mem.cuda_peak_bytes)})")
    return (f"**KV cache {fmt_bytes(mem.cache_bytes)}** vs {fmt_bytes(mem.dense_equivalent_bytes)} for dense "
            f"MHA (**{100 * mem.reduction:.1f} % less**) · text K/V {fmt_bytes(mem.text_cache_bytes)} · "
            f"RSS {fmt_bytes(mem.rss_bytes)} · VRAM {vram}")


def layer_table(mem: MemoryReadout | None) -> pd.DataFrame:
    """Per-layer cache bytes (real tensors) beside the dense equivalent of one layer."""
    cols = ["layer", "MLA cache", "dense MHA", "ratio"]
    if mem is None or not mem.per_layer_bytes:
        return pd.DataFrame(columns=cols)
    dense = mem.dense_equivalent_bytes / len(mem.per_layer_bytes)
    return pd.DataFrame([(i, fmt_bytes(b), fmt_bytes(dense), f"{dense / b:.1f}x" if b else "-")
                         for i, b in enumerate(mem.per_layer_bytes)], columns=cols)


RESULT_COLUMNS = ["video", "length", "frames", "model", "seed", "prompt timeline", "made from"]


def result_row(r: dict) -> list:
    timeline = "; ".join(f"{format_time(t)} {p}" for t, p in r["timeline"])
    return [r["name"], f"{r['seconds']:.1f} s", r["frames"], r["model"], r["seed"], timeline,
            r.get("from") or "-"]


def results_table(results: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([result_row(r) for r in reversed(results)], columns=RESULT_COLUMNS)
