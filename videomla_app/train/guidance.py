"""Guidance distillation: bake classifier-free guidance into the model, so one call does the work of two.

With the Euler sampler, guidance g = 2 lifts the embedded model's colour adherence a lot, but it
doubles the model calls per denoising step, and the 2-core CPU then falls well short of real time.
Here a student (initialised from the teacher) learns to output the teacher's *guided* flow
``v_empty + g (v_prompt - v_empty)`` from the prompt alone (Meng et al. 2023, with g fixed).

The teacher's targets come from the inference path itself -- the rolling cache, chunk by chunk,
the empty-prompt call reading context written under the prompt -- because that is exactly what
guided sampling computes; the teacher-forcing layout would write the context under the empty
prompt too. The student learns in the teacher-forcing layout, which equals the inference path
when every token sees the same prompt (tests/test_train.py). Noise levels are the sampler's own
inference steps: those are the only ones the student is ever asked about.
"""

from __future__ import annotations

import torch

from ..cache import make_cache
from ..config import Preset
from ..model import CausalDiT
from ..scheduler import FlowSampler
from .flow import anchored_timesteps, frame_weight, teacher_forcing_inputs, weighted_mse


def rolling_chunks(model: CausalDiT, preset: Preset, batch: int, n: int, device: torch.device):
    """The rolling-cache plan of an ``n``-frame clip, chunk by chunk, as generation makes it: yields
    (the chunk's frame slice, step, attention inputs, cache). The caller writes the chunk's context
    (``model.write_context``) before asking for the next chunk; the chunk is committed then."""
    C = preset.cache.chunk_frames
    cache = make_cache(model.cfg, preset.cache, batch, device, model.patch_embedding.weight.dtype)
    for f0 in range(0, n, C):
        step = cache.plan(f0, min(C, n - f0))
        yield slice(f0, f0 + step.n), step, model.attn_inputs(step, cache), cache
        cache.commit(step)


def cfg_flow(model: CausalDiT, x: torch.Tensor, t: torch.Tensor, prompt, blank, cache, step, inputs,
             guidance: float) -> torch.Tensor:
    """``v_empty + g (v_prompt - v_empty)`` of one chunk x [B, c, C, h, w] at timesteps t [B, c], in
    fp32; ``prompt``/``blank``: the encoded prompt and empty-prompt states (``model.encode_text``)."""
    v = model(x, t, prompt, cache, step, inputs).float()  # [B, c, C, h, w]
    v_empty = model(x, t, blank, cache, step, inputs).float()
    return v_empty + guidance * (v - v_empty)


@torch.no_grad()
def guided_flow(teacher: CausalDiT, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                empty: torch.Tensor, preset: Preset, guidance: float) -> torch.Tensor:
    """The teacher's guided flow for noisy chunks ``x_t`` [B, F, C, h, w] at per-frame timesteps
    ``t`` [B, F], each chunk reading the clean previous chunks of ``x0`` from a rolling cache, as
    in generation. ``text``/``empty``: prompt and empty-prompt token states [B, L, D]."""
    if preset.sampler.context_noise:
        raise ValueError("guidance distillation writes the context clean, as the embedded presets sample; "
                         f"this preset writes it at t = {preset.sampler.context_noise:g}")
    dt = teacher.patch_embedding.weight.dtype
    prompt, blank = teacher.encode_text(text.to(dt)), teacher.encode_text(empty.to(dt))
    out = []
    for part, step, inputs, cache in rolling_chunks(teacher, preset, x0.shape[0], x0.shape[1], x0.device):
        x, tt = x_t[:, part].to(dt), t[:, part]
        out.append(cfg_flow(teacher, x, tt, prompt, blank, cache, step, inputs, guidance))  # [B, c, C, h, w]
        teacher.write_context(x0[:, part].to(dt), torch.zeros_like(tt), prompt, cache, step, inputs)
    return torch.cat(out, 1)


def guidance_distillation_loss(student: CausalDiT, teacher: CausalDiT, x0: torch.Tensor, text: torch.Tensor,
                               empty: torch.Tensor, preset: Preset, guidance: float, gen: torch.Generator,
                               weight: torch.Tensor | None = None, anchor_first: float = 0.0,
                               anchor_max: float = 50.0, first_chunk_weight: float = 1.0) -> torch.Tensor:
    """MSE between the student's flow (prompt only, clean context) and the teacher's guided flow on
    the same noisy clip. x0 [B, F, C, h, w] clean latents; weight as in ``flow_matching_loss``;
    anchor_first: the fraction of clips whose first frame is held at a level in [0, anchor_max]
    (the sampler's anchored first chunk, ``flow.anchored_timesteps``), not scored. Teacher and
    student may differ in attention (a dense teacher for an MLA student); first_chunk_weight: the
    first chunk's frames count that many times (``flow.first_chunk_weights``)."""
    sampler = FlowSampler(preset.sampler)
    B, n = x0.shape[:2]
    C = preset.cache.chunk_frames
    steps = torch.tensor(sampler.timesteps, dtype=torch.float32)
    idx = torch.randint(0, len(steps), (B, -(-n // C)), generator=gen)
    t = steps[idx].repeat_interleave(C, dim=1)[:, :n].to(x0.device)  # [B, F], one level per chunk
    eps = torch.randn(x0.shape, generator=gen).to(x0.device, x0.dtype)
    anchored = torch.zeros_like(t, dtype=torch.bool)  # [B, F]
    if anchor_first:  # drawn after the others: without it the random stream is unchanged
        t_anchor = (torch.rand(B, n, generator=gen) * anchor_max).to(t)  # [B, F]
        t, anchored = anchored_timesteps(t, t_anchor, anchor_first, gen)
    weight = frame_weight(weight, ~anchored, C, first_chunk_weight)
    x_t = sampler.add_noise(x0, eps, t[..., None, None, None])
    target = guided_flow(teacher, x0, x_t, t, text, empty, preset, guidance)  # [B, F, C, h, w] fp32
    inputs = teacher_forcing_inputs(student, n, preset.cache)
    pred = student.forward_train(torch.cat([x0, x_t], 1), torch.cat([torch.zeros_like(t), t], 1), text,
                                 preset.cache, inputs, teacher_forcing=True)[:, n:].float()
    return weighted_mse(pred, target, weight)
