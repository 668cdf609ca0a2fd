"""Terminal rendering of a generation: Rich live view (progress, half-block preview, memory) when
stdout is a terminal, one plain line per chunk otherwise. Only renders events; never generates."""

from __future__ import annotations

import time

import numpy as np
from PIL import Image
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .memory import fmt_bytes
from .pipeline import ChunkEvent


def half_block(frame: np.ndarray, width: int = 48) -> Text:
    """A colour preview: each character cell shows two vertically stacked pixels ('▀', fg = top)."""
    h, w = frame.shape[:2]
    rows = max(2, round(width * h / w / 2) * 2)
    img = np.asarray(Image.fromarray(frame).resize((width, rows), Image.Resampling.BILINEAR))
    text = Text()
    for y in range(0, rows, 2):
        for x in range(width):
            t, b = img[y, x], img[y + 1, x]
            text.append("▀", style=f"rgb({t[0]},{t[1]},{t[2]}) on rgb({b[0]},{b[1]},{b[2]})")
        text.append("\n")
    return text


class LiveView:
    """Collects events and renders the live panel (or plain lines)."""

    def __init__(self, console: Console, total_chunks: int, total_seconds: float, fps: int,
                 preview: bool = True, base_frames: int = 0) -> None:
        """``total_seconds`` is the video's length at the end; ``base_frames`` were there before."""
        self.console, self.total, self.total_s, self.fps = console, total_chunks, total_seconds, fps
        self.preview, self.t0, self.frames, self.last = preview, time.perf_counter(), 0, None
        self.base_frames = base_frames
        self.done_before = -1  # chunk index of the run's first event, set on the first update
        self.stopping = False

    def update(self, ev: ChunkEvent) -> None:
        if self.done_before < 0:
            self.done_before = ev.index
        self.frames += len(ev.frames)
        self.last = ev

    def rate(self) -> float:
        return self.frames / max(time.perf_counter() - self.t0, 1e-9)

    def line(self) -> str:
        ev, fps = self.last, self.rate()
        remaining = max(self.total_s * self.fps - self.base_frames - self.frames, 0) / fps if fps else 0
        mem = ev.memory
        video_s = (self.base_frames + self.frames) / self.fps
        return (f"chunk {ev.index + 1 - self.done_before}/{self.total}  {video_s:6.1f}/{self.total_s:.1f} s  "
                f"{fps:5.1f} fps  ETA {remaining:5.0f} s  cache {fmt_bytes(mem.cache_bytes)} "
                f"(dense {fmt_bytes(mem.dense_equivalent_bytes)})  RSS {fmt_bytes(mem.rss_bytes)}"
                + ("  [stopping after this chunk]" if self.stopping else ""))

    def render(self) -> Group:
        ev = self.last
        if ev is None:
            return Group(Text("starting…"))
        mem = ev.memory
        t = Table.grid(padding=(0, 2))
        t.add_row("KV cache", f"{fmt_bytes(mem.cache_bytes)}  (dense MHA, same window: "
                              f"{fmt_bytes(mem.dense_equivalent_bytes)}, {100 * mem.reduction:.1f} % less)")
        t.add_row("text K/V", fmt_bytes(mem.text_cache_bytes))
        t.add_row("process RSS", fmt_bytes(mem.rss_bytes))
        if mem.cuda_allocated_bytes is not None:
            t.add_row("CUDA", f"{fmt_bytes(mem.cuda_allocated_bytes)} allocated, peak {fmt_bytes(mem.cuda_peak_bytes)}")
        t.add_row("prompt", ev.prompt)
        parts = [Text(self.line())]
        if self.preview:
            parts.append(half_block(ev.frames[-1]))
        parts.append(Panel(t, title="memory", expand=False))
        return Group(*parts)
