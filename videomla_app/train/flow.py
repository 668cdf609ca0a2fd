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

import torch
import torch.nn.functional as F

from ..attention import AttnInputs
from ..config import CacheConfig, SamplerConfig
from ..model import CausalDiT
from ..scheduler import FlowSampler

_INPUTS: dict[tuple, AttnInputs] = {}


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


def flow_matching_loss(model: CausalDiT, x0: torch.Tensor, text: torch.Tensor, cache: CacheConfig,
                       sampler_cfg: SamplerConfig, gen: torch.Generator, context_noise_max: float = 50.0,
                       weight: torch.Tensor | None = None) -> torch.Tensor:
    """x0: clean latents [B, F, C, h, w]; text: token states [B, L, text_dim]; weight: optional
    per-element loss weight broadcastable to x0 (e.g. [B, F, 1, h, w]), normalised so the loss
    stays a weighted mean. Returns a scalar."""
    sampler = FlowSampler(sampler_cfg)
    B, n = x0.shape[:2]
    dev = x0.device
    t = chunk_timesteps(B, n, cache.chunk_frames, sampler, gen).to(dev)  # [B, F]
    t_ctx = chunk_timesteps(B, n, cache.chunk_frames, sampler, gen, context_noise_max).to(dev)
    eps = torch.randn(x0.shape, generator=gen).to(dev, x0.dtype)
    eps_ctx = torch.randn(x0.shape, generator=gen).to(dev, x0.dtype)
    per_frame = (..., None, None, None)
    x_t = sampler.add_noise(x0, eps, t[per_frame])
    x_ctx = sampler.add_noise(x0, eps_ctx, t_ctx[per_frame])
    inputs = teacher_forcing_inputs(model, n, cache)
    pred = model.forward_train(torch.cat([x_ctx, x_t], 1), torch.cat([t_ctx, t], 1), text, cache, inputs,
                               teacher_forcing=True)[:, n:]  # the noisy half
    return weighted_mse(pred, sampler.flow_target(x0, eps), weight)


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error in fp32; with ``weight`` (broadcastable to pred) a weighted mean."""
    if weight is None:
        return F.mse_loss(pred.float(), target.float())
    err = (pred.float() - target.float()) ** 2  # [B, F, C, h, w]
    w = weight.to(err).expand_as(err)
    return (err * w).sum() / w.sum()
