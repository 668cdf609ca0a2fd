"""The model's own frames as teacher-forcing context: a long-horizon signal from 9-frame clips.

Teacher forcing shows every chunk the *true* previous frames (lightly noised), while a long video
shows it the model's own: a little blurrier, a little slower, a colour off. The last fine-tune on
true context made the shipped `tiny` better over 8 seconds and worse over 2 minutes (553 more steps:
motion +2.7 on 8-second prompts, -4.0 over 2 minutes, dynamics sliding 98 -> 88; README, "More
steps over every motion"): the mark of exposure bias, a model trusting context it never gets.

Here a fraction of each batch's clips read, as context, each chunk redrawn by the model itself: the
true chunk noised to ``start`` and denoised by the sampler's own Euler steps below it, with guidance,
each chunk reading the true chunks before it from a rolling cache as in generation
(:func:`guidance.guided_flow`). The chunk to denoise and its target stay the true clip. So the model
is taught to go on from frames that look like its own towards what the prompt's world really does,
instead of copying its context's slips. Redrawing from a partly noised true chunk (not from pure
noise, as Self-Forcing rolls out) keeps the objects near their true places, so the true next chunk
is still a continuation of the context and the regression target stays consistent.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..config import Preset
from ..model import CausalDiT
from ..scheduler import FlowSampler
from .flow import share_pairs
from .guidance import cfg_flow, guided_flow, rolling_chunks


def own_frames(model: CausalDiT, x0: torch.Tensor, text: torch.Tensor, empty: torch.Tensor,
               noise: torch.Tensor, preset: Preset, guidance: float, start: float, chain: bool = False,
               ) -> torch.Tensor:
    """Each chunk of ``x0`` [B, F, C, h, w] as the model redraws it: noised with ``noise`` to the
    sampler step ``start`` (the first step at or below it) and taken to 0 by the sampler's steps
    below, each chunk reading the true chunks before it (``chain``: the redrawn ones, see
    :func:`_chained`). text / empty: prompt and empty-prompt token states [B, L, D]. Returns
    [B, F, C, h, w] in x0's dtype."""
    # Euler steps whatever the preset's solver: the embedded presets sample with them, and the redraw
    # then depends on ``noise`` alone (re-noising would draw more noise at every step)
    sampler = FlowSampler(replace(preset.sampler, solver="euler"))
    steps = [t for t in sampler.timesteps if t <= start]
    if not steps:
        raise ValueError(f"own-context start {start:g} is below every sampler step {sampler.timesteps}")
    # guided_flow writes the true chunks into its cache clean and refuses a preset that says otherwise
    clean = replace(preset, sampler=replace(preset.sampler, context_noise=0.0))
    if chain:
        return _chained(model, x0, text, empty, noise, clean, sampler, steps, guidance)
    x = sampler.add_noise(x0.float(), noise.float(), steps[0])  # [B, F, C, h, w]
    with torch.no_grad():
        for t, t_next in zip(steps, [*steps[1:], 0.0]):
            tt = torch.full(x0.shape[:2], t, device=x0.device)  # [B, F]
            flow = guided_flow(model, x0, x, tt, text, empty, clean, guidance)  # [B, F, C, h, w] fp32
            x = sampler.step(x, flow, t, t_next, noise=lambda: None)
    return x.to(x0.dtype)


@torch.no_grad()
def _chained(model: CausalDiT, x0: torch.Tensor, text: torch.Tensor, empty: torch.Tensor, noise: torch.Tensor,
             preset: Preset, sampler: FlowSampler, steps: list[float], guidance: float) -> torch.Tensor:
    """:func:`own_frames` with each chunk reading the chunks redrawn before it, as a video reads its
    own. Why: a slip compounds over a long video (a hovering object's bob shrinks chunk by chunk to
    a standstill), and context redrawn from true chunks never shows a slip carried over from a
    redraw before; here the second chunk of a clip reads one generation of slips, the third two."""
    dt = model.patch_embedding.weight.dtype
    prompt, blank = model.encode_text(text.to(dt)), model.encode_text(empty.to(dt))
    out = []
    for part, step, inputs, cache in rolling_chunks(model, preset, x0.shape[0], x0.shape[1], x0.device):
        x = sampler.add_noise(x0[:, part].float(), noise[:, part].float(), steps[0])  # [B, c, C, h, w]
        for t, t_next in zip(steps, [*steps[1:], 0.0]):
            tt = torch.full(x.shape[:2], t, device=x0.device)  # [B, c]
            flow = cfg_flow(model, x.to(dt), tt, prompt, blank, cache, step, inputs, guidance)
            x = sampler.step(x, flow, t, t_next, noise=lambda: None)
        model.write_context(x.to(dt), torch.zeros(x.shape[:2], device=x0.device), prompt, cache, step, inputs)
        out.append(x)
    return torch.cat(out, 1).to(x0.dtype)


class OwnContext:
    """Swaps a random ``fraction`` of a batch's clips for :func:`own_frames` as teacher-forcing
    context (``flow.flow_prediction``'s ``context``). Its draws come from the step's generator
    after all of the flow loss's own, so a run without it keeps its random stream; the last
    ``pairs`` contrast pairs share one draw, as their noise does (``flow.share_pairs``)."""

    def __init__(self, preset: Preset, empty: torch.Tensor, fraction: float, start: float, guidance: float,
                 pairs: int = 0, chain: bool = False) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"own-context fraction must be in (0, 1], got {fraction:g}")
        self.preset, self.empty, self.fraction = preset, empty, fraction  # empty: [1, L, D]
        self.start, self.guidance, self.pairs, self.chain = start, guidance, pairs, chain

    def __call__(self, model: CausalDiT, x0: torch.Tensor, text: torch.Tensor, gen: torch.Generator
                 ) -> torch.Tensor:
        B = x0.shape[0]
        pick = torch.rand(B, generator=gen) < self.fraction  # [B]
        noise = torch.randn(x0.shape, generator=gen)  # [B, F, C, h, w]
        if self.pairs:
            pick, noise = share_pairs(pick, self.pairs), share_pairs(noise, self.pairs)
        if not bool(pick.any()):
            return x0
        rows = pick.nonzero()[:, 0].to(x0.device)  # [b]
        empty = self.empty.to(text).expand(len(rows), -1, -1)  # [b, L, D]
        own = own_frames(model, x0[rows], text[rows], empty, noise.to(x0)[rows], self.preset, self.guidance,
                         self.start, self.chain)
        out = x0.clone()
        out[rows] = own
        return out
