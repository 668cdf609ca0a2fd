"""The procedural video world VideoMLA trains on: specs, captions, a fast renderer and pixel readers.

No pretrained video model can be installed offline, so the project renders its own data: a few
shaded objects moving forever over a static scene, described by seven attributes (shape, colour,
size, count, motion, scene, speed). Typical use::

    from videomla_app import world

    spec = world.spec_from_prompt("two small blue squares drift left across a night sky", seed=0)
    frames = world.render(spec, 0, 64)                   # uint8 [64, 128, 128, 3], 16 fps
    world.read_all(frames)                               # {'scene': 'night', 'colour': 'blue', ...}
    tl = world.Timeline.single(spec).then(160, colour="red", motion="circling")
    for chunk in world.stream(tl, 16 * 60):              # a minute, chunk by chunk
        ...

Modules, one concept each: `spec` (vocabulary, WorldSpec), `timeline`, `palette`, `scenes`
(backgrounds), `objects` (sprites), `motion` (trajectories), `states` (per-frame states),
`render`, `captions` (captions and prompt parsing), `readers`, `preview` (contact sheet).
"""

from .captions import (caption, in_caption_words, parse_prompt, spec_from_prompt, timeline_from_prompts,
                       unseen_words, vocabulary_words)
from .palette import OBJECT_RGB
from .readers import (analyse, colour_votes, motion_votes, read_all, read_colour, read_count, read_motion,
                      read_scene)
from .render import DEFAULT_FPS, DEFAULT_SIZE, benchmark, render, stream
from .spec import ATTRIBUTES, DEFAULTS, VOCAB, WorldSpec, sample_spec
from .states import FrameStates, frame_states
from .timeline import Timeline, as_timeline

__all__ = [
    "ATTRIBUTES", "DEFAULTS", "DEFAULT_FPS", "DEFAULT_SIZE", "OBJECT_RGB", "VOCAB", "FrameStates",
    "Timeline", "WorldSpec", "analyse", "as_timeline", "benchmark", "caption", "colour_votes",
    "frame_states", "in_caption_words", "motion_votes", "parse_prompt", "read_all", "read_colour",
    "read_count", "read_motion", "read_scene", "render", "sample_spec", "spec_from_prompt", "stream",
    "timeline_from_prompts", "unseen_words", "vocabulary_words",
]
