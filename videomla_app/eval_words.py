"""Which caption words a model uses: its flow loss with one attribute of the caption swapped.

The readers measure what generated videos show; this measures what training taught, word by word,
and so says *why* a prompt is not followed. For rendered clips of the world, the teacher-forcing
flow loss on the objects' latent pixels is computed with the true caption and again with one
attribute swapped for another value (same clip, same noise, same phrasing). The relative increase
is how much the model relies on that word; 0 means it ignores it. "direction" swaps a straight
motion for its opposite (left <-> right, up <-> down), on clips that move straight.

Reported for the first chunk (no context: everything must come from the text) and for the later
chunks (their context shows the frames before), because the two differ: the shipped models use
the motion word in later chunks (+38 to +48 % when another motion is named) but not which way a
straight motion goes (under 1 %), since the noisy frames and the context already show the way
(README, "Which words the models use"). Next to each swap: how far the text encoder's token states
move with it, and how much of that move sits in one token, so a word the model ignores can be
told from one the encoder barely tells apart: a direction moves MiniLM's states least (about a
quarter, most of it in its own token), but shape and count move them more than colour does and
are not used either.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from . import world
from .encoders import pixel_frames
from .eval_stats import standard_error
# clips start anywhere in a world's first two minutes and weight objects as in training
from .train.data import START_RANGE, coverage_map, latent_cover
from .world.spec import COLOURS, COUNTS, MOTIONS, SCENES, SHAPES

SWAPS: dict[str, tuple] = {"colour": COLOURS, "shape": SHAPES, "count": COUNTS, "motion": MOTIONS,
                           "direction": (), "scene": SCENES}
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
PARTS = ("first", "later")


def _swapped(spec: world.WorldSpec, attr: str, rng: np.random.Generator) -> world.WorldSpec | None:
    """``spec`` with ``attr`` set to another value (None: the swap does not apply to this clip)."""
    if attr == "direction":
        return replace(spec, motion=OPPOSITE[spec.motion]) if spec.motion in OPPOSITE else None
    other = [v for v in SWAPS[attr] if v != getattr(spec, attr)]
    return replace(spec, **{attr: other[int(rng.integers(len(other)))]})


def _object_weights(frames: np.ndarray, scene: str, spatial: int, temporal: int, chunk: int
                    ) -> dict[str, torch.Tensor] | None:
    """Per-latent-pixel object cover [1, F, 1, h, w] of the first chunk and of the later ones
    (None when either has no object pixels)."""
    cover = latent_cover(coverage_map(frames[None], [scene], spatial), temporal)  # [1, F, h, w]
    cover = torch.from_numpy(cover)[:, :, None]  # [1, F, 1, h, w]
    first, later = cover.clone(), cover.clone()
    first[:, chunk:] = 0
    later[:, :chunk] = 0
    if not (first.sum() > 0 and later.sum() > 0):
        return None
    return {"first": first, "later": later}


@torch.no_grad()
def word_use(pipe, clips: int = 64, seed: int = 0, latent_frames: int = 9, anchored: bool | None = None) -> dict:
    """Relative loss increase (%) per swapped attribute and part, for a loaded embedded pipeline.

    ``anchored``: measure the first chunk as an anchored sampler makes it (its first frame nearly
    clean, not scored; ``SamplerConfig.anchor_first``); None: as the model's own sampler does.
    Returns ``{"swaps": {attr: {part: {"mean", "sem", "n"}}}, "loss": {part: mean true-caption
    loss}, "clips": used}``. Each clip uses its own noise seed, the same for every caption."""
    from .train.flow import flow_prediction

    model, preset, vae = pipe.model, pipe.preset, pipe.vae
    ts, C = vae.temporal_stride, preset.cache.chunk_frames
    size = preset.video.height
    n_pix = pixel_frames(latent_frames, ts)
    if anchored is None:
        anchored = preset.sampler.anchor_first
    rng = np.random.default_rng([seed, 0x30D5])
    rel: dict[str, dict[str, list[float]]] = {a: {p: [] for p in PARTS} for a in SWAPS}
    base: dict[str, list[float]] = {p: [] for p in PARTS}
    text_rel: dict[str, dict[str, list[float]]] = {a: {"change": [], "one_token": []} for a in SWAPS}
    used = 0
    for i in range(clips):
        spec = world.sample_spec(rng)
        start = int(rng.integers(0, START_RANGE))
        frames = world.render(spec, start, start + n_pix, size=size, seed=int(rng.integers(1 << 30)))
        weights = _object_weights(frames, spec.scene, vae.spatial_stride, ts, C)
        swaps = {a: _swapped(spec, a, rng) for a in SWAPS}
        if weights is None:
            continue
        used += 1
        x0 = vae.encode(frames).to(pipe.device, pipe.dtype)  # [1, F, C, h, w]
        captions = {"true": world.caption(spec), **{a: world.caption(s) for a, s in swaps.items() if s}}
        err, states = {}, {}
        for key, cap in captions.items():
            text = pipe.text_encoder.encode([cap]).to(pipe.device, pipe.dtype)  # [1, L, D]
            states[key] = text[0].float().cpu()  # [L, D]
            gen = torch.Generator().manual_seed(seed * 100_003 + i)
            pred, target, scored = flow_prediction(model, x0, text, preset.cache, preset.sampler, gen,
                                                   anchor_first=1.0 if anchored else 0.0)
            err[key] = (pred.float() - target.float()).pow(2).cpu()  # [1, F, C, h, w]
        for a in captions.keys() - {"true"}:
            for k, v in _text_change(states["true"], states[a]).items():
                text_rel[a][k].append(v)
        for part, w in weights.items():
            w = w * scored[..., None, None, None].cpu()  # an anchored first frame is not scored
            if not w.sum() > 0:
                continue
            loss = {k: float((e * w).sum() / (w.sum() * e.shape[2])) for k, e in err.items()}
            base[part].append(loss["true"])
            for a in captions.keys() - {"true"}:
                rel[a][part].append(100.0 * (loss[a] / loss["true"] - 1.0))
    return {"clips": used, "latent_frames": latent_frames, "anchored": bool(anchored),
            "loss": {p: float(np.mean(v)) if v else None for p, v in base.items()},
            "swaps": {a: {p: _mean_sem(v) for p, v in parts.items()} for a, parts in rel.items()},
            "text": {a: {k: _mean_sem(v) for k, v in parts.items()} for a, parts in text_rel.items()}}


def _text_change(true: torch.Tensor, swapped: torch.Tensor) -> dict[str, float]:
    """How much the text encoder's token states [L, D] move when the word is swapped: the relative
    change (%) over the whole caption, and the share (%) of that change on its most-changed token
    (100: only the word's own state moved; lower: the encoder carried it into its neighbours)."""
    diff = (swapped - true).pow(2).sum(-1)  # [L]
    total = float(diff.sum())
    return {"change": 100.0 * total ** 0.5 / max(float(true.pow(2).sum()) ** 0.5, 1e-12),
            "one_token": 100.0 * float(diff.max()) / total if total > 0 else 0.0}


def _mean_sem(values: list[float]) -> dict:
    mean = float(np.mean(values)) if values else None
    return {"mean": mean, "sem": standard_error(values), "n": len(values)}


def format_words(results: dict[str, dict]) -> str:
    """A plain-text table: one row per swapped word, first and later chunks per model."""
    names = list(results)
    text = results[names[0]].get("text") if names else None  # the encoder's, the same for every model
    head = "word swapped".ljust(14) + "".join(f"{n + ' first':>18}{n + ' later':>18}" for n in names)
    if text:
        head += f"{'text change':>14}{'in 1 token':>12}"
    lines = [head, "-" * len(head)]

    def cell(s: dict) -> str:
        if s["mean"] is None:
            return "–".rjust(18)
        err = f" ± {s['sem']:.1f}" if s["sem"] is not None else ""
        return f"{s['mean']:+.1f}{err} %".rjust(18)

    for a in SWAPS:
        row = a.ljust(14) + "".join(cell(results[n]["swaps"][a][p]) for n in names for p in PARTS)
        if text:
            change, one = text[a]["change"]["mean"], text[a]["one_token"]["mean"]
            row += f"{change:>12.0f} %{one:>10.0f} %" if change is not None else f"{'–':>14}{'–':>12}"
        lines.append(row)
    used = ", ".join(f"{n} {r['clips']}" for n, r in results.items())
    lines.append(f"loss increase on object pixels when the word is wrong (0: the word is not used); clips: {used}")
    if text:
        lines.append("text change: how far the text encoder's token states move with the word (relative, whole "
                     "caption); in 1 token: the share of that move on the most-changed token")
    return "\n".join(lines)
