"""Teacher-forcing flow matching for the causal DiT (PAPER §6 stage 1, in miniature).

Each training clip of latent frames is split into chunks; every chunk gets its own noise level
(sampled from the shifted 1000-step table the sampler uses), and attends to the *clean* previous
chunks through the sink/window mask — the [clean | noisy] teacher-forcing layout of
:meth:`CausalDiT.train_inputs`, which equals what a denoising step sees at inference. The clean
context gets a small random noise level (augmentation: at inference the context is the model's own
imperfect output). The loss is the MSE between the predicted and the true flow ``eps - x0`` on the
noisy half.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..attention import AttnInputs
from ..config import CacheConfig, SamplerConfig
from ..model import CausalDiT
from ..scheduler import FlowSampler

_INPUTS: dict[tuple, AttnInputs] = {}
# What the chunks read as clean context: (model, x0, text, gen) -> frames like x0 (flow_prediction).
ContextFn = Callable[[CausalDiT, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


def teacher_forcing_inputs(model: CausalDiT, n_frames: int, cache: CacheConfig) -> AttnInputs:
    """Masks and RoPE tables depend only on the model config and the clip geometry: build them once
    per shape. (Keyed by config, not ``id(model)``: a freed model's id is reused by the next one, which
    handed a dense model the MLA model's RoPE tables.)"""
    key = (model.cfg, n_frames, cache, model.patch_embedding.weight.device)
    if key not in _INPUTS:
        _INPUTS[key] = model.train_inputs(n_frames, cache, teacher_forcing=True)
    return _INPUTS[key]


def chunk_timesteps(batch: int, n_frames: int, chunk: int, sampler: FlowSampler, gen: torch.Generator,
                    max_t: float | None = None) -> torch.Tensor:
    """Per-frame timesteps [B, F]: one level per chunk, drawn from the shifted training table
    (or uniformly in [0, max_t] for the context augmentation)."""
    n_chunks = -(-n_frames // chunk)
    if max_t is None:
        idx = torch.randint(0, len(sampler.train_timesteps), (batch, n_chunks), generator=gen)
        t = sampler.train_timesteps.float()[idx]
    else:
        t = torch.rand(batch, n_chunks, generator=gen) * max_t
    return t.repeat_interleave(chunk, dim=1)[:, :n_frames]


def full_context_timesteps(t_ctx: torch.Tensor, fraction: float, chunk: int, sampler: FlowSampler,
                           gen: torch.Generator) -> torch.Tensor:
    """Context levels [B, F] where a random ``fraction`` of the clips instead get one level per
    chunk from the whole training table, as in Diffusion Forcing.

    Why: with the context nearly clean (0-50) a chunk reads which way its objects go from the
    frames before it, so a caption's direction word lowers the loss by nothing: swapping "left" for
    "right" changed the trained models' loss by under 1 % (README, "Which words the models use"),
    and their straight motions go any way. Under a noisy context the direction has to come from
    the text. The draws come after all others, so ``fraction = 0`` keeps every earlier run's
    random stream."""
    B, n = t_ctx.shape
    pick = _some_clips(B, fraction, gen).to(t_ctx.device)  # [B, 1]
    return torch.where(pick, chunk_timesteps(B, n, chunk, sampler, gen).to(t_ctx), t_ctx)


def frame_timesteps(t: torch.Tensor, fraction: float, sampler: FlowSampler, gen: torch.Generator) -> torch.Tensor:
    """Levels [B, F] where a random ``fraction`` of the clips get one level per *frame* instead of
    per chunk (Diffusion Forcing's per-frame noise).

    Why: when a chunk's frames share one level, whichever way its objects go can be read off the
    noisy frames themselves, so a direction word is never needed. With a clean-ish frame before
    noisy ones, only the text says where the object goes next."""
    B, n = t.shape
    pick = _some_clips(B, fraction, gen).to(t.device)  # [B, 1]
    idx = torch.randint(0, len(sampler.train_timesteps), (B, n), generator=gen)
    return torch.where(pick, sampler.train_timesteps.float()[idx].to(t), t)  # [B, F]


def anchored_timesteps(t: torch.Tensor, t_ctx: torch.Tensor, fraction: float, gen: torch.Generator
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Levels [B, F] and which frames were anchored [B, F], where a random ``fraction`` of the clips
    get their first frame at its context level (0 to ``context_noise_max``) while the rest of the
    first chunk keeps the chunk's level: the layout of the sampler's anchored first chunk
    (``SamplerConfig.anchor_first``).

    Why: with the first chunk's frames at one level, the position of an object and where it goes
    are both read off the same noisy frames, so the caption's motion word lowers the loss by
    nothing (README, "Which words the models use"). With the first frame nearly clean and the next
    two still noise, the position is known and only the text says where the object goes next."""
    pick = _some_clips(t.shape[0], fraction, gen).to(t.device)  # [B, 1]
    first = torch.zeros_like(t, dtype=torch.bool)
    first[:, 0] = True
    anchored = pick & first  # [B, F]
    return torch.where(anchored, t_ctx, t), anchored


def _some_clips(batch: int, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """A random ``fraction`` of a batch's clips, as a mask [B, 1] over their frames."""
    return (torch.rand(batch, generator=gen) < fraction)[:, None]


def flow_matching_loss(model: CausalDiT, x0: torch.Tensor, text: torch.Tensor, cache: CacheConfig,
                       sampler_cfg: SamplerConfig, gen: torch.Generator, context_noise_max: float = 50.0,
                       weight: torch.Tensor | None = None, full_context: float = 0.0,
                       frame_noise: float = 0.0, anchor_first: float = 0.0,
                       first_chunk_weight: float = 1.0, pairs: int = 0,
                       context: ContextFn | None = None) -> torch.Tensor:
    """x0: clean latents [B, F, C, h, w]; text: token states [B, L, text_dim]; weight: optional
    per-element loss weight broadcastable to x0 (e.g. [B, F, 1, h, w]), normalised so the loss
    stays a weighted mean; full_context / frame_noise / anchor_first: fractions of clips whose
    context is noised like the noisy chunks (:func:`full_context_timesteps`) / whose frames get a
    level each (:func:`frame_timesteps`) / whose first frame is nearly clean
    (:func:`anchored_timesteps`); first_chunk_weight: see :func:`first_chunk_weights`; pairs: the
    batch's last ``pairs`` clip pairs share their noise (:func:`share_pairs`); context: what the
    chunks read as context instead of ``x0`` (:func:`flow_prediction`). Returns a scalar."""
    pred, target, scored = flow_prediction(model, x0, text, cache, sampler_cfg, gen, context_noise_max,
                                           full_context, frame_noise, anchor_first, pairs, context)
    return weighted_mse(pred, target, frame_weight(weight, scored, cache.chunk_frames, first_chunk_weight))


def frame_weight(weight: torch.Tensor | None, scored: torch.Tensor, chunk: int,
                 first_chunk_weight: float = 1.0) -> torch.Tensor | None:
    """``weight`` with a draw's per-frame factors folded in: 0 on frames not scored ``scored`` [B, F]
    (an anchored first frame is context, not a frame to denoise), ``first_chunk_weight`` on the first
    chunk. Both plain: ``weight`` unchanged (None stays None, so the loss is the plain MSE bit for bit)."""
    if first_chunk_weight == 1.0 and bool(scored.all()):
        return weight
    w = scored[..., None, None, None].float()  # [B, F, 1, 1, 1]
    if first_chunk_weight != 1.0:
        w = w * first_chunk_weights(scored.shape[1], chunk, first_chunk_weight).to(w)
    return w if weight is None else weight * w.to(weight)


def first_chunk_weights(n: int, chunk: int, factor: float) -> torch.Tensor:
    """Per-frame loss weights [1, F, 1, 1, 1]: ``factor`` on the first chunk's frames, 1 after.

    Why: the first chunk is the only one with no context, so it is where the text alone must say
    which way the objects go; in a 3-chunk clip it is a third of the loss, and with the anchored
    first frame unscored less. Weighted 3x for 600 CPU steps (on top of the anchored first chunk)
    the direction word's first-chunk use rose to +17.6 % where the unweighted control reached
    +12.3 (README, "The anchored first chunk")."""
    if factor <= 0:
        raise ValueError(f"first_chunk_weight must be > 0, got {factor:g}")
    w = torch.ones(1, n, 1, 1, 1)
    w[:, :chunk] = factor
    return w


def flow_prediction(model: CausalDiT, x0: torch.Tensor, text: torch.Tensor, cache: CacheConfig,
                    sampler_cfg: SamplerConfig, gen: torch.Generator, context_noise_max: float = 50.0,
                    full_context: float = 0.0, frame_noise: float = 0.0,
                    anchor_first: float = 0.0, pairs: int = 0, context: ContextFn | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The predicted and the true flow [B, F, C, h, w] of one teacher-forcing draw (the loss's
    inputs; the noise levels and noise are drawn from ``gen``, so a seed repeats the draw), and
    which frames are scored [B, F] (all but anchored first frames). ``pairs``: the last ``pairs``
    clip pairs get one draw each (:func:`share_pairs`). ``context(model, x0, text, gen)``: the clean
    frames [B, F, C, h, w] the chunks read as context instead of ``x0`` (the model's own frames,
    ``own_context.OwnContext``), called after every other draw; the targets stay ``x0``'s."""
    sampler = FlowSampler(sampler_cfg)
    B, n = x0.shape[:2]
    dev = x0.device
    t = chunk_timesteps(B, n, cache.chunk_frames, sampler, gen).to(dev)  # [B, F]
    t_ctx = chunk_timesteps(B, n, cache.chunk_frames, sampler, gen, context_noise_max).to(dev)
    eps = torch.randn(x0.shape, generator=gen).to(dev, x0.dtype)
    eps_ctx = torch.randn(x0.shape, generator=gen).to(dev, x0.dtype)
    if full_context:
        t_ctx = full_context_timesteps(t_ctx, full_context, cache.chunk_frames, sampler, gen)
    if frame_noise:
        t = frame_timesteps(t, frame_noise, sampler, gen)
    anchored = torch.zeros_like(t, dtype=torch.bool)
    if anchor_first:
        t, anchored = anchored_timesteps(t, t_ctx, anchor_first, gen)
    if pairs:
        t, t_ctx, anchored, eps, eps_ctx = (share_pairs(v, pairs) for v in (t, t_ctx, anchored, eps, eps_ctx))
    per_frame = (..., None, None, None)
    x_t = sampler.add_noise(x0, eps, t[per_frame])
    seen = x0 if context is None else context(model, x0, text, gen)  # [B, F, C, h, w]
    x_ctx = sampler.add_noise(seen, eps_ctx, t_ctx[per_frame])
    inputs = teacher_forcing_inputs(model, n, cache)
    pred = model.forward_train(torch.cat([x_ctx, x_t], 1), torch.cat([t_ctx, t], 1), text, cache, inputs,
                               teacher_forcing=True)[:, n:]  # the noisy half
    return pred, sampler.flow_target(x0, eps), ~anchored


def share_pairs(x: torch.Tensor, pairs: int) -> torch.Tensor:
    """``x`` [B, ...] with the second clip of each of the last ``pairs`` pairs (clips B - 2P + 2i and
    B - 2P + 2i + 1) given its first clip's draw. Drawn for all B first and then copied, so the other
    clips' draws, and every draw after, are the ones an unpaired batch gets.

    Why: a contrast pair (``data.pair_batch``) is two clips that differ in motion and in the motion
    phrase of their captions; with one noise draw the gap between their losses comes from those
    alone, not from one clip happening to get an easier noise level."""
    B = x.shape[0]
    if pairs < 0 or 2 * pairs > B:
        raise ValueError(f"{pairs} pairs do not fit a batch of {B}")
    first = torch.arange(B - 2 * pairs, B, 2, device=x.device)
    out = x.clone()
    out[first + 1] = x[first]
    return out


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error in fp32; with ``weight`` (broadcastable to pred) a weighted mean."""
    if weight is None:
        return F.mse_loss(pred.float(), target.float())
    err = (pred.float() - target.float()) ** 2  # [B, F, C, h, w]
    w = weight.to(err).expand_as(err)
    return (err * w).sum() / w.sum()
