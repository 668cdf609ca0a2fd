"""What a clip of the procedural world shows: the attribute vocabulary and the `WorldSpec` record.

Every attribute is a small closed set so that a prompt can name it, the renderer can draw it and a
reader can recover it from pixels. The canonical words below are the values stored in a spec; the
synonyms that prompts may use live in `captions.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

SHAPES: tuple[str, ...] = ("ball", "square", "triangle", "star", "diamond", "heart")
COLOURS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "pink")
SIZES: tuple[str, ...] = ("small", "medium", "large")
COUNTS: tuple[int, ...] = (1, 2, 3, 4)
COUNT_WORDS: tuple[str, ...] = ("one", "two", "three", "four")
# Linear motions wrap around the frame edges (a torus), so they can last forever.
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "circling", "bouncing", "hovering")
SCENES: tuple[str, ...] = ("day", "sunset", "night", "beach", "meadow", "underwater", "space",
                           "studio", "snow", "desert")
SPEEDS: tuple[str, ...] = ("slow", "normal", "fast")

# Attribute -> canonical words (the count attribute is stored as an int, named by its word here).
VOCAB: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": COLOURS,
    "size": SIZES,
    "count": COUNT_WORDS,
    "motion": MOTIONS,
    "scene": SCENES,
    "speed": SPEEDS,
}

# Values a prompt that does not name the attribute gets: what captions leave unsaid.
DEFAULTS: dict[str, object] = {"size": "medium", "speed": "normal"}


@dataclass(frozen=True)
class WorldSpec:
    """One shot of the world: `count` identical objects moving the same way over one scene.

    All objects share shape, colour and size so that a one-line caption describes the shot fully.
    """

    shape: str
    colour: str
    size: str
    count: int
    motion: str
    scene: str
    speed: str = "normal"

    def __post_init__(self) -> None:
        allowed = {"shape": SHAPES, "colour": COLOURS, "size": SIZES, "count": COUNTS,
                   "motion": MOTIONS, "scene": SCENES, "speed": SPEEDS}
        for name, values in allowed.items():
            if getattr(self, name) not in values:
                raise ValueError(f"WorldSpec.{name}={getattr(self, name)!r} is not one of {values}")

    def with_(self, **changes: object) -> WorldSpec:
        """A copy with some attributes replaced (validated)."""
        return replace(self, **changes)

    def as_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


ATTRIBUTES: tuple[str, ...] = tuple(f.name for f in fields(WorldSpec))


def sample_spec(rng: np.random.Generator | int) -> WorldSpec:
    """A uniformly random spec; `rng` may be a Generator or an int seed."""
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    return WorldSpec(
        shape=str(rng.choice(SHAPES)),
        colour=str(rng.choice(COLOURS)),
        size=str(rng.choice(SIZES)),
        count=int(rng.choice(COUNTS)),
        motion=str(rng.choice(MOTIONS)),
        scene=str(rng.choice(SCENES)),
        speed=str(rng.choice(SPEEDS)),
    )
