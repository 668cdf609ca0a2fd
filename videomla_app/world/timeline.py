"""Prompt timelines: a clip whose spec changes at given frames ("at 10 s the ball turns blue").

A `Timeline` is only data (start frame -> spec). How a change is animated, continuing every object
from where it is, lives in `states.py`, so that a timeline can be built, compared and hashed cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass

from .spec import WorldSpec


@dataclass(frozen=True)
class Timeline:
    """Segments `(start_frame, spec)`, the first starting at frame 0, starts strictly increasing."""

    segments: tuple[tuple[int, WorldSpec], ...]

    def __post_init__(self) -> None:
        segs = tuple((int(s), spec) for s, spec in self.segments)
        object.__setattr__(self, "segments", segs)
        if not segs:
            raise ValueError("a Timeline needs at least one segment")
        if segs[0][0] != 0:
            raise ValueError("the first segment must start at frame 0")
        for (a, _), (b, _) in zip(segs, segs[1:]):
            if b <= a:
                raise ValueError(f"segment starts must increase strictly, got {a} then {b}")
        for _, spec in segs:
            if not isinstance(spec, WorldSpec):
                raise TypeError(f"segments hold WorldSpec values, got {type(spec).__name__}")

    @classmethod
    def single(cls, spec: WorldSpec) -> Timeline:
        return cls(((0, spec),))

    def then(self, frame: int, **changes: object) -> Timeline:
        """This timeline plus a change at `frame` of the named attributes of the last segment."""
        last = self.segments[-1][1]
        return Timeline(self.segments + ((int(frame), last.with_(**changes)),))

    def segment_index(self, frame: int) -> int:
        idx = 0
        for i, (start, _) in enumerate(self.segments):
            if start <= frame:
                idx = i
        return idx

    def spec_at(self, frame: int) -> WorldSpec:
        return self.segments[self.segment_index(frame)][1]

    @property
    def starts(self) -> tuple[int, ...]:
        return tuple(s for s, _ in self.segments)

    @property
    def max_count(self) -> int:
        return max(spec.count for _, spec in self.segments)


def as_timeline(world: WorldSpec | Timeline) -> Timeline:
    """Accept either a plain spec (one segment) or a timeline."""
    if isinstance(world, Timeline):
        return world
    if isinstance(world, WorldSpec):
        return Timeline.single(world)
    raise TypeError(f"expected WorldSpec or Timeline, got {type(world).__name__}")
