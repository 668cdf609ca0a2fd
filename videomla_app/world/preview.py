"""Contact sheet of the world for the README: `python -m videomla_app.world.preview [out.png]`.

Each tile is one frame with faint "onion skin" copies of earlier frames, so a still image shows
the motion; its caption is a random phrasing from `captions.caption`. The last row plays a prompt
timeline (changes of colour, motion, count, shape and scene) left to right.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .captions import caption, timeline_from_prompts
from .render import render
from .scenes import background
from .spec import WorldSpec
from .timeline import Timeline

SHOWCASE = (
    WorldSpec("ball", "red", "medium", 1, "bouncing", "day"),
    WorldSpec("star", "yellow", "large", 3, "circling", "sunset"),
    WorldSpec("square", "pink", "small", 2, "left", "night"),
    WorldSpec("ball", "orange", "medium", 2, "bouncing", "beach"),
    WorldSpec("heart", "red", "large", 1, "hovering", "meadow"),
    WorldSpec("diamond", "yellow", "medium", 3, "up", "underwater"),
    WorldSpec("triangle", "green", "medium", 2, "circling", "space", "fast"),
    WorldSpec("star", "purple", "large", 1, "hovering", "studio"),
    WorldSpec("heart", "pink", "small", 4, "right", "meadow"),
    WorldSpec("triangle", "blue", "medium", 2, "down", "desert", "slow"),
    WorldSpec("square", "orange", "medium", 3, "hovering", "underwater"),
    WorldSpec("ball", "purple", "large", 1, "right", "snow", "fast"),
)
TIMELINE_PROMPTS = ((0, "a red ball bouncing on a beach"), (24, "it turns blue and circles around"),
                    (64, "three yellow stars drift left at sunset"))
TIMELINE_FRAMES = (8, 22, 34, 56, 70, 96)


def _onion(world: WorldSpec | Timeline, frame: int, scene: str, size: int, seed: int) -> np.ndarray:
    """Frame `frame` with ghosts of frames 8 and 4 earlier where objects were."""
    start = max(0, frame - 8)
    clip = render(world, start, frame + 1, size=size, seed=seed).astype(np.float32)
    bg = background(scene, size)
    out = clip[-1].copy()
    for back, strength in ((8, 0.2), (4, 0.34)):
        if frame - back < start:
            continue
        ghost = clip[frame - back - start]
        ratio = (ghost + 1.0) / (bg + 1.0)
        shadow = (ratio.std(-1, keepdims=True) < 0.05) & (ratio.mean(-1, keepdims=True) < 1.0)
        moved = np.abs(ghost - bg).sum(-1, keepdims=True) > 40
        mask = moved & ~shadow & (np.abs(out - bg).sum(-1, keepdims=True) <= 40)
        out = np.where(mask, out + strength * (ghost - out), out)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _wrap(text: str, width: int, draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font) <= width or not line:
            line = trial
        else:
            lines.append(line)
            line = word
    return lines + [line]


def contact_sheet(size: int = 128, seed: int = 0, cols: int = 6) -> Image.Image:
    """The showcase grid plus a timeline strip, as an RGB image."""
    font = ImageFont.load_default(size=10)
    pad, text_h = 6, 40
    rows = -(-len(SHOWCASE) // cols)
    strip_cols = len(TIMELINE_FRAMES)
    width = max(cols, strip_cols) * (size + pad) + pad
    height = rows * (size + text_h + pad) + (size + text_h + 24) + pad
    sheet = Image.new("RGB", (width, height), (250, 250, 248))
    draw = ImageDraw.Draw(sheet)
    rng = np.random.default_rng(seed)
    for i, spec in enumerate(SHOWCASE):
        x = pad + (i % cols) * (size + pad)
        y = pad + (i // cols) * (size + text_h + pad)
        sheet.paste(Image.fromarray(_onion(spec, 40, spec.scene, size, seed + i)), (x, y))
        for j, line in enumerate(_wrap(caption(spec, rng), size, draw, font)[:3]):
            draw.text((x, y + size + 2 + 12 * j), line, fill=(40, 40, 40), font=font)

    tl = timeline_from_prompts(list(TIMELINE_PROMPTS), seed=seed)
    y0 = pad + rows * (size + text_h + pad)
    title = "prompt timeline: " + "  |  ".join(f"{s / 16:.1f}s: {p}" for s, p in TIMELINE_PROMPTS)
    draw.text((pad, y0), title, fill=(20, 20, 20), font=font)
    for j, f in enumerate(TIMELINE_FRAMES):
        x = pad + j * (size + pad)
        scene = tl.spec_at(f).scene
        sheet.paste(Image.fromarray(_onion(tl, f, scene, size, seed)), (x, y0 + 16))
        draw.text((x, y0 + 18 + size), f"t = {f / 16:.1f}s", fill=(40, 40, 40), font=font)
    return sheet


def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else Path(__file__).resolve().parents[2] / "assets" / "world_preview.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet().save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")
    return out


if __name__ == "__main__":
    main()
