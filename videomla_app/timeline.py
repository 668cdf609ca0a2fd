"""Prompt timelines: which prompt is in force at each moment of the video, and their syntax.

Inline: ``"0:00 a red ball bouncing; 0:30 the ball turns blue"`` (segments separated by ``;`` or
new lines, each ``TIME PROMPT``); a file holds the same, one segment per line (``#`` comments).
TIME is ``M:SS``, ``H:MM:SS`` or ``12.5s`` (a bare number belongs to the prompt). A text with no leading time is one prompt for
the whole video. Switches take effect at the first chunk boundary at or after their time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

@dataclass(frozen=True)
class PromptSegment:
    start_s: float
    prompt: str


@dataclass(frozen=True)
class Timeline:
    """Prompts switched over time. A plain prompt is a one-segment timeline starting at 0 s."""

    segments: tuple[PromptSegment, ...]

    def __post_init__(self) -> None:
        if not self.segments:
            raise ValueError("a timeline needs at least one prompt")
        if self.segments[0].start_s != 0:
            raise ValueError("the first prompt of a timeline must start at 0:00")
        for a, b in zip(self.segments, self.segments[1:]):
            if b.start_s <= a.start_s:
                raise ValueError(f"timeline times must increase: {a.start_s:g}s then {b.start_s:g}s")
        for s in self.segments:
            if not s.prompt.strip():
                raise ValueError("empty prompt in timeline")

    @classmethod
    def single(cls, prompt: str) -> "Timeline":
        return cls((PromptSegment(0.0, prompt),))

    def index_at(self, t_s: float) -> int:
        """Segment in force at time ``t_s`` (switches land on chunk boundaries at or after it)."""
        return max(i for i, s in enumerate(self.segments) if s.start_s <= t_s + 1e-9)


# A timed entry starts with M:SS, H:MM:SS or 12.5s; a bare number is part of the prompt
# ("2 red balls bouncing" is a prompt, not a switch at 2 s).
_TIME = re.compile(r"^\s*(\d+:\d+(?::\d+)?(?:\.\d+)?|\d+(?:\.\d+)?s)(?:\s+(.*))?$", re.S)


def parse_time(text: str) -> float:
    """'90', '1:30', '0:01:30', '90s', '12.5s' -> seconds."""
    t = text.strip().rstrip("s")
    parts = t.split(":")
    if not t or len(parts) > 3 or not all(re.fullmatch(r"\d+(\.\d+)?", p) for p in parts):
        raise ValueError(f"bad time {text!r}: use SS, M:SS, H:MM:SS or 12.5s")
    if any(float(p) >= 60 for p in parts[1:]):
        raise ValueError(f"bad time {text!r}: minutes and seconds must be below 60")
    secs = 0.0
    for p in parts:
        secs = secs * 60 + float(p)
    return secs


def parse_timeline(text: str) -> Timeline:
    """Parse a prompt or an inline timeline (see module docstring); raises ValueError with the reason."""
    pieces = [p.strip() for p in re.split(r"[;\n]", text) if p.strip() and not p.strip().startswith("#")]
    if not pieces:
        raise ValueError("the prompt is empty")
    timed = [_TIME.match(p) for p in pieces]
    if not any(timed):  # a plain prompt (it may contain ';')
        return Timeline.single(" ".join(text.split()))
    segs = []
    for piece, m in zip(pieces, timed):
        if not m:
            raise ValueError(f"timeline entry {piece!r} has no time; write e.g. '0:30 {piece}'")
        if not (m.group(2) or "").strip():
            raise ValueError(f"timeline entry at {m.group(1)} has no prompt")
        segs.append(PromptSegment(parse_time(m.group(1)), m.group(2).strip()))
    if segs[0].start_s != 0:
        raise ValueError(f"the first timeline entry must start at 0:00, not {pieces[0].split()[0]}")
    return Timeline(tuple(segs))


def read_timeline_file(path: str | Path) -> Timeline:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read timeline file {path}: {e.strerror if isinstance(e, OSError) else e}") from None
    return parse_timeline(text)


def format_time(seconds: float) -> str:
    m, s = divmod(seconds, 60)
    return f"{int(m)}:{s:04.1f}" if s % 1 else f"{int(m)}:{int(s):02d}"
