"""The causal Wan-style video DiT with MLA or dense self-attention (PAPER §4, §13.1).

Module and parameter names follow Wan2.1 (``patch_embedding``, ``blocks.N.self_attn``,
``cross_attn``, ``norm3``, ``ffn``, ``modulation``, ``head``) so checkpoints map by name; only the
self-attention differs between VideoMLA and the dense Self-Forcing baseline.

Two ways to run it, which must agree (tests check it):

- :meth:`CausalDiT.forward` — inference on one chunk of latent frames against a rolling cache;
- :meth:`CausalDiT.forward_train` — the whole clip in one forward with the chunk-causal +
  sink/window block mask (training form).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import AttnInputs, MHAttention, MLAttention, WanProjections
from .cache import CacheStep, RollingKVCache, TextKVCache
from .config import CacheConfig, ModelConfig
from .rope import grid_positions, rope_angles


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Wan's timestep embedding: [cos | sin] of t * 10000^(-i/half), in fp32. t: [...] -> [..., dim]."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, device=t.device, dtype=torch.float64) / half)
    ang = t.to(torch.float64)[..., None] * freqs
    return torch.cat([torch.cos(ang), torch.sin(ang)], dim=-1).to(torch.float32)


class CrossAttention(WanProjections):
    """Text cross-attention (Wan): q from video tokens, k/v from the prompt; no positions, no mask."""

    def kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-prompt K, V [B, L, H, dh]: computed once per prompt and cached."""
        k = self.norm_k(self.k(context)).unflatten(-1, (self.H, self.dh))
        v = self.v(context).unflatten(-1, (self.H, self.dh))
        return k, v

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        q = self.norm_q(self.q(x)).unflatten(-1, (self.H, self.dh))
        k, v = kv
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.o(o.transpose(1, 2).flatten(2))


class GELUTanh(nn.Module):
    """Wan's FFN activation, GELU with the tanh approximation, computed the fast way when that is free.

    In bf16 inference on the CPU, PyTorch's vectorised tanh makes the tanh form 3.4x slower than
    the erf form (200 vs 58 us on the embedded model's [192, 1024] FFN activations, 2-core EPYC),
    about 3 % of a chunk. At bf16 the two are the same function: against the fp64 tanh form the erf
    form is off by at most 0.0082 (mean 0.00095), the bf16 tanh form itself by 0.0078 (0.00090).
    Training (grad enabled), fp32 and GPUs keep the exact tanh form.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.bfloat16 and x.device.type == "cpu" and not torch.is_grad_enabled():
            return F.gelu(x)
        return F.gelu(x, approximate="tanh")


class Block(nn.Module):
    """Wan block: AdaLN-modulated self-attention, text cross-attention, GELU-tanh FFN."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.norm1 = nn.LayerNorm(d, cfg.eps, elementwise_affine=False)
        self.self_attn = MLAttention(cfg) if cfg.attn == "mla" else MHAttention(cfg)
        self.norm3 = nn.LayerNorm(d, cfg.eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(cfg)
        self.norm2 = nn.LayerNorm(d, cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_dim), GELUTanh(), nn.Linear(cfg.ffn_dim, d))
        self.modulation = nn.Parameter(torch.randn(1, 6, d) / d**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor, a: AttnInputs,
                text_kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x [B, F, P, D] (frames x tokens), e [B, F, 6, D] fp32 per-frame modulation."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self._modulation(e)
        y = self.self_attn(self._attn_input(x, shift1, scale1), a).view_as(x)
        x = (x.float() + y.float() * gate1).to(x.dtype)
        x = x + self.cross_attn(self.norm3(x).flatten(1, 2), text_kv).view_as(x)
        h = (self.norm2(x).float() * (1 + scale2) + shift2).to(x.dtype)
        return (x.float() + self.ffn(h).float() * gate2).to(x.dtype)

    def _modulation(self, e: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """shift1, scale1, gate1, shift2, scale2, gate2, each [B, F, 1, D] fp32."""
        return tuple(m[:, :, None] for m in (self.modulation.float() + e).unbind(2))

    def _attn_input(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """AdaLN-modulated self-attention input, flattened to tokens [B, F*P, D]."""
        return (self.norm1(x).float() * (1 + scale) + shift).to(x.dtype).flatten(1, 2)

    def write_kv(self, x: torch.Tensor, e: torch.Tensor, a: AttnInputs) -> None:
        """Write this block's cache entries for x [B, F, P, D] without computing its output."""
        shift1, scale1 = self._modulation(e)[:2]
        self.self_attn.write_kv(self._attn_input(x, shift1, scale1), a)


class Head(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.norm = nn.LayerNorm(d, cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(d, cfg.latent_channels * math.prod(cfg.patch))
        self.modulation = nn.Parameter(torch.randn(1, 2, d) / d**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x [B, F, P, D], e [B, F, D] (time embedding) -> [B, F, P, C*ph*pw]."""
        shift, scale = (m[:, :, None] for m in (self.modulation.float() + e[:, :, None]).unbind(2))
        return self.head((self.norm(x).float() * (1 + scale) + shift).to(x.dtype))


class CausalDiT(nn.Module):
    """Causal Wan DiT. Latents are [B, F, C, H, W] (frames first: chunks are slices of F)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.latent_channels, d, kernel_size=cfg.patch, stride=cfg.patch)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.head = Head(cfg)
        self.rope = cfg.mla_rope() if cfg.attn == "mla" else cfg.head_rope()

    # -- helpers ------------------------------------------------------------------------------
    def set_attn_backend(self, name: str) -> None:
        for b in self.blocks:
            b.self_attn.backend = name if self.cfg.attn == "mla" else ("reference" if name == "reference" else "sdpa")

    def encode_text(self, context: torch.Tensor, cache: TextKVCache | None = None) -> TextKVCache:
        """Embed the prompt tokens [B, L, text_dim] and cache every layer's cross-attention K/V."""
        cache = cache or TextKVCache()
        ctx = self.text_embedding(context.to(self.patch_embedding.weight.dtype))
        cache.kv = [b.cross_attn.kv(ctx) for b in self.blocks]
        return cache

    def _patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, F, C, H, W] -> tokens [B, F, P, D]."""
        y = self.patch_embedding(x.transpose(1, 2).to(self.patch_embedding.weight.dtype))  # [B, D, F, h, w]
        return y.flatten(3).permute(0, 2, 3, 1)

    def _unpatchify(self, y: torch.Tensor) -> torch.Tensor:
        """[B, F, P, C*ph*pw] -> [B, F, C, H, W]."""
        B, Fn = y.shape[:2]
        (h, w), (_, ph, pw), C = self.cfg.grid_hw, self.cfg.patch, self.cfg.latent_channels
        y = y.view(B, Fn, h, w, C, ph, pw).permute(0, 1, 4, 2, 5, 3, 6)
        return y.reshape(B, Fn, C, h * ph, w * pw)

    def _time(self, t: torch.Tensor, B: int, Fn: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Timesteps (scalar, [B] or [B, F]) -> e [B, F, D] and e0 [B, F, 6, D] in fp32."""
        t = torch.as_tensor(t, dtype=torch.float32, device=self.patch_embedding.weight.device)
        t = t.reshape(-1, 1).expand(B, Fn) if t.dim() < 2 else t
        dt = self.patch_embedding.weight.dtype
        e = self.time_embedding(sinusoidal_embedding(t, self.cfg.freq_dim).to(dt)).float()  # [B, F, D]
        e0 = self.time_projection(e.to(dt)).float().unflatten(-1, (6, self.cfg.dim))  # [B, F, 6, D]
        return e, e0

    def _angles(self, frames: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        pos = grid_positions(torch.tensor(frames), *self.cfg.grid_hw)
        cos, sin = rope_angles(self.rope, pos)
        dev = self.patch_embedding.weight.device
        return cos.to(dev), sin.to(dev)

    def _run(self, x: torch.Tensor, t: torch.Tensor, a: AttnInputs, text: TextKVCache,
             write_only: bool = False) -> torch.Tensor | None:
        B, Fn = x.shape[:2]
        e, e0 = self._time(t, B, Fn)
        h = self._patchify(x)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            a.layer = i
            if write_only and i == last:
                block.write_kv(h, e0, a)
                return None
            h = block(h, e0, a, text.kv[i])
        return self._unpatchify(self.head(h, e))

    # -- inference ----------------------------------------------------------------------------
    def attn_inputs(self, step: CacheStep, cache: RollingKVCache) -> AttnInputs:
        """RoPE tables for one cached forward: window-local for MLA, absolute for dense (§4.8)."""
        if self.cfg.attn == "mla":
            q_cos, q_sin = self._angles(list(step.query_local))
            k_cos, k_sin = self._angles(list(step.key_local))
            return AttnInputs(q_cos, q_sin, k_cos, k_sin, cache=cache, step=step)
        q_cos, q_sin = self._angles(list(range(step.f0, step.f0 + step.n)))
        return AttnInputs(q_cos, q_sin, cache=cache, step=step)

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: TextKVCache, cache: RollingKVCache,
                step: CacheStep, inputs: AttnInputs | None = None) -> torch.Tensor:
        """Predict the flow (noise - x0) of one chunk x [B, n, C, H, W] at timestep(s) t.

        Writes the chunk's keys into ``cache`` at ``step``'s slots (every call: a later call for the
        same chunk overwrites them, the cache-write pass leaves the clean ones).
        """
        return self._run(x, t, inputs or self.attn_inputs(step, cache), text)

    def write_context(self, x: torch.Tensor, t: torch.Tensor | float, text: TextKVCache, cache: RollingKVCache,
                      step: CacheStep, inputs: AttnInputs | None = None) -> None:
        """The cache-write pass: write the chunk's keys at every layer, as :meth:`forward` does,
        but stop there. The flow it would return is never read, and skipping the last block's
        attention, cross-attention, FFN and the head saves ~1/L of the pass."""
        self._run(x, t, inputs or self.attn_inputs(step, cache), text, write_only=True)

    # -- training form ------------------------------------------------------------------------
    def train_inputs(self, n_frames: int, cache_cfg: CacheConfig, teacher_forcing: bool = False) -> AttnInputs:
        """Block mask + key list that reproduce streaming through the cache in one forward.

        Chunk k (frames [f0, f0+n)) sees the sink frames, the frames in its window and itself.
        With ``teacher_forcing`` the sequence is [clean clip | noisy clip] (Self-Forcing's
        teacher-forcing layout): clean frames attend like the cache-write pass (clean context and
        their own chunk), noisy frames attend the *clean* context and their own noisy chunk, which is
        exactly what a denoising step sees when the cache holds clean keys.

        With window re-indexing (MLA), the sink's distance to the chunk depends on the chunk, so once
        the window has slid the sink keys are repeated per chunk with the rotation they get in that
        chunk's window; all other keys keep absolute positions (RoPE is relative, so this equals
        window-local indexing).
        """
        S, C, P = cache_cfg.sink_frames, cache_cfg.chunk_frames, self.cfg.tokens_per_frame
        R = cache_cfg.window_frames + C
        streams = 2 if teacher_forcing else 1
        entries = [(f, s) for s in range(streams) for f in range(n_frames)]  # (frame, stream); stream 0 = context
        key_entries, key_pos = list(range(len(entries))), [f for f, _ in entries]
        vis: list[list[bool]] = []
        copy_owner: list[int] = []  # chunk that owns each sink copy
        for k in range((n_frames + C - 1) // C):
            f0, f_end = k * C, min(k * C + C, n_frames)
            base = max(S, f_end - R)
            if self.cfg.attn == "mla" and base > S:
                key_entries += list(range(S))  # the context stream's sink frames
                key_pos += [base - S + s for s in range(S)]
                copy_owner += [k] * S
        for f, s in entries:
            k = f // C
            f0, f_end = k * C, min(k * C + C, n_frames)
            base = max(S, f_end - R)
            copies = k in copy_owner
            row = [(f0 <= g < f_end and t == s) or
                   (g < f0 and t == 0 and (g >= base or (g < S and not copies))) for g, t in entries]
            vis.append(row + [owner == k for owner in copy_owner])
        dev = self.patch_embedding.weight.device
        frame_mask = torch.tensor(vis, dtype=torch.bool)  # [entries, keys]
        mask = frame_mask.repeat_interleave(P, 0).repeat_interleave(P, 1).to(dev)  # [Nq, Nk]
        q_cos, q_sin = self._angles([f for f, _ in entries])
        k_cos, k_sin = self._angles(key_pos)
        key_index = (torch.tensor(key_entries)[:, None] * P + torch.arange(P)).flatten().to(dev)
        return AttnInputs(q_cos, q_sin, k_cos, k_sin, mask=mask, key_index=key_index)

    def forward_train(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | TextKVCache,
                      cache_cfg: CacheConfig, inputs: AttnInputs | None = None,
                      teacher_forcing: bool = False) -> torch.Tensor:
        """Flow prediction for a whole clip in one forward.

        x [B, F, C, H, W] with per-frame timesteps t [B, F]; with ``teacher_forcing`` x is
        [clean | noisy] ([B, 2F, ...]) and t covers both halves (the clean half at the context noise).
        """
        text = context if isinstance(context, TextKVCache) else self.encode_text(context)
        n = x.shape[1] // 2 if teacher_forcing else x.shape[1]
        return self._run(x, t, inputs or self.train_inputs(n, cache_cfg, teacher_forcing), text)


def build_model(cfg: ModelConfig, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                seed: int | None = None) -> CausalDiT:
    """Instantiate a model (random weights, optionally seeded) on a device and dtype."""
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = CausalDiT(cfg)
    else:
        model = CausalDiT(cfg)
    return model.to(device=device, dtype=dtype).eval()
