"""Captions in several phrasings, and the reverse: free-text prompts -> spec attributes.

Training captions vary wording (templates x synonyms) so the text encoder learns meanings, not
one sentence pattern. Captions always name shape, colour, count, motion and scene; size and speed
are named when they differ from the defaults ("medium", "normal") and sometimes anyway, so a
prompt that leaves them out means the default, exactly as in training.

`parse_prompt` scans the lowercased words left to right, matching the longest known phrase first
("under the stars" is a scene, not a shape; "jumping up and down" is bouncing, not up). When two
phrases name the same attribute, an explicit one beats a vague one ("floating up" -> up, while
"floating" alone -> hovering), otherwise the first wins. Unknown words are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from .spec import ATTRIBUTES, COLOURS, DEFAULTS, MOTIONS, SCENES, SHAPES, SIZES, SPEEDS, WorldSpec
from .timeline import Timeline

SHAPE_NOUNS = {"ball": ["ball", "sphere", "orb"], "square": ["square", "cube", "box", "block"],
               "triangle": ["triangle"], "star": ["star"], "diamond": ["diamond", "gem"], "heart": ["heart"]}
COLOUR_WORDS = {"red": ["red", "crimson", "scarlet"], "orange": ["orange", "tangerine"],
                "yellow": ["yellow", "golden"], "green": ["green", "emerald"],
                "blue": ["blue", "cobalt", "sapphire"], "purple": ["purple", "violet"],
                "pink": ["pink", "magenta"]}
SIZE_WORDS = {"small": ["small", "tiny", "little"], "medium": ["medium-sized", "mid-sized"],
              "large": ["large", "big", "huge"]}
COUNT_PHRASES = {1: ["a", "one", "a single", "a lone"], 2: ["two", "a pair of", "a couple of"],
                 3: ["three", "a trio of"], 4: ["four", "a group of four"]}
SPEED_WORDS = {"slow": ["slowly", "gently", "lazily"], "normal": ["steadily"],
               "fast": ["quickly", "fast", "rapidly", "swiftly"]}


# Per motion: (present participle, 3rd person singular, plural) phrasings.
MOTION_PHRASES: dict[str, list[tuple[str, str, str]]] = {
    "left": [("drifting left", "drifts left", "drift left"),
             ("moving to the left", "moves to the left", "move to the left"),
             ("gliding leftward", "glides leftward", "glide leftward"),
             ("sliding to the left", "slides to the left", "slide to the left")],
    "right": [("drifting right", "drifts right", "drift right"),
              ("moving to the right", "moves to the right", "move to the right"),
              ("gliding rightward", "glides rightward", "glide rightward"),
              ("sliding to the right", "slides to the right", "slide to the right")],
    "up": [("rising", "rises", "rise"), ("floating upward", "floats upward", "float upward"),
           ("drifting up", "drifts up", "drift up"), ("ascending", "ascends", "ascend")],
    "down": [("falling", "falls", "fall"), ("sinking", "sinks", "sink"),
             ("drifting down", "drifts down", "drift down"), ("descending", "descends", "descend")],
    "circling": [("circling around", "circles around", "circle around"),
                 ("orbiting in a circle", "orbits in a circle", "orbit in a circle"),
                 ("going round in circles", "goes round in circles", "go round in circles"),
                 ("moving in a circle", "moves in a circle", "move in a circle")],
    "bouncing": [("bouncing", "bounces", "bounce"), ("hopping", "hops", "hop"),
                 ("bouncing up and down", "bounces up and down", "bounce up and down"),
                 ("jumping", "jumps", "jump")],
    "hovering": [("hovering", "hovers", "hover"), ("bobbing in place", "bobs in place", "bob in place"),
                 ("floating in place", "floats in place", "float in place"),
                 ("hanging in the air", "hangs in the air", "hang in the air")],
}

# Prepositional phrases ("... on a beach") and noun phrases ("a sandy beach with ...").
SCENE_ADVERBIALS = {
    "day": ["in a blue sky", "across a sunny sky", "on a clear day", "in bright daylight"],
    "sunset": ["at sunset", "against a sunset sky", "at dusk", "in the evening twilight"],
    "night": ["in the night sky", "under the stars", "on a starry night", "at night"],
    "beach": ["on a beach", "by the seaside", "over a sandy beach", "at the shore"],
    "meadow": ["over a grassy meadow", "in a meadow", "above a green field", "over the countryside"],
    "underwater": ["under the sea", "underwater", "deep in the ocean", "near a coral reef"],
    "space": ["in outer space", "among the planets", "in deep space", "in the cosmos"],
    "studio": ["in a studio", "against a plain grey backdrop", "in a photo studio"],
    "snow": ["in a snowy landscape", "over fresh snow", "in a winter landscape"],
    "desert": ["over desert dunes", "in the desert", "above sand dunes"],
}
SCENE_NOUNS = {
    "day": ["a bright blue sky", "a clear daytime sky"], "sunset": ["a sunset sky", "a glowing sunset"],
    "night": ["a starry night sky", "a moonlit night"], "beach": ["a sandy beach", "a quiet beach"],
    "meadow": ["a grassy meadow", "a green meadow"], "underwater": ["an underwater scene", "the ocean floor"],
    "space": ["outer space", "the cosmos"], "studio": ["a photo studio", "a plain studio backdrop"],
    "snow": ["a snowy landscape", "a winter landscape"], "desert": ["a sandy desert", "desert dunes"],
}

TEMPLATES = (
    "{subject} {ving}{speed} {where}",
    "{subject} {verb}{speed} {where}",
    "{Where}, {subject} {verb}{speed}",
    "{scene} with {subject} {ving}{speed}",
    "a video of {subject} {ving}{speed} {where}",
    "{count} {size}{noun} in {colour}, {ving}{speed} {where}",
)


def caption_words() -> set[str]:
    """Every word (and punctuation mark) a :func:`caption` can contain, lowercased: what a text
    encoder must know to encode any training caption (``scripts/pack_minilm.py`` keeps only these)."""
    phrases = [*TEMPLATES, *(p for d in (SHAPE_NOUNS, COLOUR_WORDS, SIZE_WORDS, COUNT_PHRASES, SPEED_WORDS,
                                         SCENE_ADVERBIALS, SCENE_NOUNS) for ps in d.values() for p in ps),
               *(p for ps in MOTION_PHRASES.values() for trio in ps for p in trio),
               *(plural(n) for ns in SHAPE_NOUNS.values() for n in ns), "an"]
    text = re.sub(r"\{\w+\}", " ", " ".join(phrases)).lower()
    return set(re.findall(r"[\w-]+|[^\w\s]", text))


# Grammar words a prompt may add that carry nothing the world could draw; not worth a warning.
FUNCTION_WORDS = frozenset(
    "is are be being it its they their them there this that these those and or but as very some from into "
    "onto through while which who all".split())


def unseen_words(text: str) -> list[str]:
    """The words of ``text`` that no training caption contains (lowercased, in order, once each),
    grammar words aside: what the embedded models never learned and so cannot follow ("dragon",
    "flying", "2"). Synonyms the prompt *parser* knows are included when captions never use them:
    the parser serves the evaluation, the model only knows the captions' words."""
    known = caption_words() | FUNCTION_WORDS
    words = re.findall(r"[\w'-]+", text.lower().replace("\u2019", "'"))  # "don't" stays one word
    words = (w.strip("'").removesuffix("'s") for w in words)  # "it's" -> "it", "'quoted'" -> "quoted"
    return list(dict.fromkeys(w for w in words if w and w not in known))


def plural(noun: str) -> str:
    return noun + "es" if noun.endswith(("s", "x", "ch", "sh")) else noun + "s"


def _article(text: str) -> str:
    """'a orange' -> 'an orange' (the only article fix our vocabulary needs)."""
    return re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", text)


def caption(spec: WorldSpec, rng: np.random.Generator | int | None = None) -> str:
    """A caption of `spec`; `rng=None` gives the canonical phrasing, else a random one."""
    if rng is None:
        count = COUNT_PHRASES[spec.count][0]
        size = "" if spec.size == "medium" else spec.size + " "
        noun = SHAPE_NOUNS[spec.shape][0]
        speed = "" if spec.speed == "normal" else " " + SPEED_WORDS[spec.speed][0]
        text = (f"{count} {size}{spec.colour} {noun if spec.count == 1 else plural(noun)} "
                f"{MOTION_PHRASES[spec.motion][0][0]}{speed} {SCENE_ADVERBIALS[spec.scene][0]}")
        return _article(text)
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)

    def pick(options: Sequence[str]) -> str:
        return str(options[int(rng.integers(len(options)))])

    count = pick(COUNT_PHRASES[spec.count])
    show_size = spec.size != "medium" or rng.uniform() < 0.25
    size = pick(SIZE_WORDS[spec.size]) + " " if show_size else ""
    colour = pick(COLOUR_WORDS[spec.colour])
    noun = pick(SHAPE_NOUNS[spec.shape])
    noun = noun if spec.count == 1 else plural(noun)
    ving, third, base = MOTION_PHRASES[spec.motion][int(rng.integers(len(MOTION_PHRASES[spec.motion])))]
    show_speed = spec.speed != "normal" or rng.uniform() < 0.3
    speed = " " + pick(SPEED_WORDS[spec.speed]) if show_speed else ""
    where = pick(SCENE_ADVERBIALS[spec.scene])
    template = pick(TEMPLATES)
    text = template.format(
        subject=f"{count} {size}{colour} {noun}", count=count, size=size, noun=noun, colour=colour,
        ving=ving, verb=third if spec.count == 1 else base, speed=speed, where=where,
        Where=where[0].upper() + where[1:], scene=pick(SCENE_NOUNS[spec.scene]))
    text = _article(text)
    return text[0].upper() + text[1:]


# ---------------------------------------------------------------------------------------------
# Parsing


def _phrase_table() -> dict[tuple[str, ...], tuple[str, object, float]]:
    """Word tuple -> (attribute, value, priority). Priority 2 = explicit, 1 = vague.

    Extra synonyms are written as "a|b|c" strings to keep the table compact.
    """
    table: dict[tuple[str, ...], tuple[str, object, float]] = {}

    def add(attr: str, value: object, phrases: Sequence[str] | str, prio: float = 2) -> None:
        for p in phrases.split("|") if isinstance(phrases, str) else phrases:
            table[tuple(re.findall(r"[a-z0-9]+", p.lower()))] = (attr, value, prio)

    for shape, nouns in SHAPE_NOUNS.items():
        add("shape", shape, nouns)
        add("shape+", shape, [plural(n) for n in nouns])
    add("shape", "ball", "circle|disc|disk|bubble", 1)
    add("shape+", "ball", "circles|discs|disks|bubbles", 1)
    add("shape", "square", "rectangle|tile", 1)
    add("shape+", "square", "rectangles|tiles", 1)
    add("shape", "diamond", "rhombus|jewel", 1)
    add("shape+", "diamond", "rhombuses|jewels", 1)
    for colour, words in COLOUR_WORDS.items():
        add("colour", colour, words)
    vague_colours = {"red": "ruby|cherry", "orange": "amber", "yellow": "lemon|gold", "green": "lime|jade",
                     "blue": "navy|azure|indigo", "purple": "lilac|lavender|plum", "pink": "rose|fuchsia"}
    for colour, words in vague_colours.items():
        add("colour", colour, words, 1)
    for size, words in SIZE_WORDS.items():
        add("size", size, words)
    add("size", "small", "mini|miniature|smaller|little")
    add("size", "medium", "medium|average|normal sized|regular")
    add("size", "large", "giant|enormous|larger|bigger|massive")
    for count, words in COUNT_PHRASES.items():
        add("count", count, [w for w in words if w != "a"])  # "a" alone: see the singular-noun rule
    add("count", 1, "1|single|lone|solitary")
    add("count", 2, "2|pair|couple|twin|twins")
    add("count", 3, "3|trio")
    add("count", 4, "4|quartet")
    for speed, words in SPEED_WORDS.items():
        add("speed", speed, words)
    add("speed", "slow", "slow|leisurely|unhurried|calmly|at a leisurely pace")
    add("speed", "normal", "at a steady pace|normal speed|medium speed|moderate speed|moderately")
    add("speed", "fast", "quick|speedy|speedily|briskly|at high speed|high speed")
    for motion, forms in MOTION_PHRASES.items():
        add("motion", motion, [f for triple in forms for f in triple])
    for d in ("left", "right"):
        add("motion", d, [d, d + "ward", d + "wards", "to the " + d, "towards the " + d])
    add("motion", "up", "up|upward|upwards|rise|rises|rising|climb|climbs|climbing|float up|floats up|"
                        "floating up|fly up|flies up|flying up")
    add("motion", "down", "down|downward|downwards|drop|drops|dropping|fall down|falls down|falling down|"
                          "float down|floats down|floating down")
    add("motion", "circling", "circling|circles around|circle around|orbit|orbits|orbiting|in a circle|"
                              "in circles|round and round|revolve|revolves|revolving|spin around|"
                              "spins around|spinning around|go around|goes around|going around|"
                              "around in circles")
    add("motion", "circling", "spinning|spin|spins|swirling|swirl", 1)
    add("motion", "bouncing", "bounce|bounces|bouncing|bouncy|hop|hops|hopping|jump|jumps|jumping|"
                              "up and down")
    add("motion", "hovering", "hover|hovers|hovering|bob|bobs|bobbing|in place|still|static|stationary|"
                              "motionless|resting|idle|staying put")
    add("motion", "hovering", "float|floats|floating|drift|drifts|drifting", 1)
    # "drifting across" says it moves but not where to: read as rightward, unless a direction is named.
    add("motion", "right", [f"{v} across" for v in "drift drifts drifting move moves moving float floats "
                            "floating glide glides gliding".split()], 1.5)
    for scene, phrases in SCENE_ADVERBIALS.items():
        add("scene", scene, phrases)
    for scene, phrases in SCENE_NOUNS.items():
        add("scene", scene, phrases)
    add("scene", "day", "day|daytime|sunny|blue sky|clear sky|sunny sky|daylight|sunny day|bright sky|noon")
    add("scene", "day", "sky|clouds|cloudy", 1)
    add("scene", "sunset", "sunset|dusk|evening|sundown|twilight|golden hour|sunset sky|sunrise|dawn")
    add("scene", "night", "night|nighttime|night sky|starry|starry night|starry sky|moonlit|midnight|"
                          "under the stars|moonlight")
    add("scene", "night", "moon", 1)
    add("scene", "beach", "beach|seaside|shore|coast|sandy beach|seashore|by the sea|beside the sea|"
                          "ocean shore")
    add("scene", "beach", "sea|sand|waves", 1)
    add("scene", "meadow", "meadow|grass|grassy|field|lawn|green field|green meadow|green grass|green hills|"
                           "countryside|pasture|grassland")
    add("scene", "meadow", "hills|park", 1)
    add("scene", "underwater", "underwater|under water|under the sea|ocean|deep sea|reef|coral reef|seabed|"
                               "sea floor|ocean floor|aquarium|in the sea|in the ocean")
    add("scene", "underwater", "water", 1)
    add("scene", "space", "space|outer space|deep space|cosmos|galaxy|planets|among the planets|saturn|"
                          "universe")
    add("scene", "studio", "studio|photo studio|backdrop|grey background|gray background|plain background|"
                           "neutral background|grey backdrop|gray backdrop")
    add("scene", "snow", "snow|snowy|winter|snowfield|snow field|winter day|snowy landscape|winter landscape|"
                         "ice|icy|frozen")
    add("scene", "snow", "mountains", 1)
    add("scene", "desert", "desert|dunes|sand dunes|desert dunes|sahara|sandy desert")
    return table


_PHRASES = _phrase_table()
_MAX_WORDS = max(len(k) for k in _PHRASES)


def vocabulary_words() -> set[str]:
    """Every single word the prompt parser knows."""
    return {w for phrase in _PHRASES for w in phrase}


def _scan(text: str) -> tuple[dict[str, object], bool | None]:
    """Named attributes, and whether the first shape noun is plural (None: no shape noun)."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    found: dict[str, tuple[float, object]] = {}
    is_plural: bool | None = None
    i = 0
    while i < len(words):
        for n in range(min(_MAX_WORDS, len(words) - i), 0, -1):
            hit = _PHRASES.get(tuple(words[i:i + n]))
            if hit is not None:
                attr, value, prio = hit
                if attr in ("shape", "shape+"):
                    is_plural = (attr == "shape+") if is_plural is None else is_plural
                    attr = "shape"
                if attr not in found or prio > found[attr][0]:
                    found[attr] = (prio, value)
                i += n
                break
        else:
            i += 1
    return {attr: value for attr, (_, value) in found.items()}, is_plural


def parse_prompt(text: str) -> dict[str, object]:
    """Attributes a free-text prompt names, as canonical values: {"colour": "blue", "count": 2, ...}.

    Attributes the prompt does not mention are absent. A singular shape noun without a number
    means one object ("a red ball"); a plural one without a number leaves the count open.
    """
    out, is_plural = _scan(text)
    if "count" not in out and is_plural is False:
        out["count"] = 1
    return out


def in_caption_words(text: str) -> str | None:
    """``text`` rewritten as the canonical training caption of what it asks for, when it names
    everything a caption names (shape, colour, count, motion, scene; size and speed are kept when
    named); None when something is missing, since filling a gap would put words in the user's
    mouth. "2 red spheres bouncing on the beach at golden hour, cinematic" -> "two red balls
    bouncing on a beach"."""
    named = parse_prompt(text)
    if not set(ATTRIBUTES) - DEFAULTS.keys() <= named.keys():  # what a caption always names
        return None
    return caption(WorldSpec(**{**DEFAULTS, **named}))


def spec_from_prompt(text: str, seed: int = 0) -> WorldSpec:
    """The spec a prompt asks for. Unnamed size and speed take their defaults (captions leave them
    out only when they are the default); other gaps are filled at random (seeded); a plural noun
    without a number gets 2 to 4 objects."""
    named, is_plural = _scan(text)
    rng = np.random.default_rng([int(seed), 0xCAFE])
    choices = {"shape": SHAPES, "colour": COLOURS, "size": SIZES, "motion": MOTIONS, "scene": SCENES,
               "speed": SPEEDS}
    filled: dict[str, object] = {}
    for attr, options in choices.items():
        pick = str(options[int(rng.integers(len(options)))])
        filled[attr] = named.get(attr, DEFAULTS.get(attr, pick))
    random_count = int(rng.integers(2, 5)) if is_plural else int(rng.integers(1, 5))
    filled["count"] = named.get("count", 1 if is_plural is False else random_count)
    return WorldSpec(**filled)


def timeline_from_prompts(prompts: Sequence[tuple[int, str]], seed: int = 0) -> Timeline:
    """[(start_frame, prompt), ...] -> Timeline. The first prompt sets the whole spec; each later
    prompt changes only what it names ("at frame 160: they turn blue" -> colour only)."""
    if not prompts:
        raise ValueError("need at least one prompt")
    (first, text), rest = prompts[0], prompts[1:]
    if first != 0:
        raise ValueError("the first prompt must start at frame 0")
    tl = Timeline.single(spec_from_prompt(text, seed))
    for start, text in rest:
        tl = tl.then(start, **parse_prompt(text))
    return tl
