"""The Wan video VAE (diffusers ``AutoencoderKLWan``) behind the ``VideoVAE`` protocol of ``encoders.py``.

The network, its weights and its causal feature cache are diffusers'; this file only adapts it:

- **latent layout and normalisation** — the pipeline's latents are ``[B, f, C, h, w]`` and
  normalised per channel with the ``latents_mean`` / ``latents_std`` of the VAE config, as the
  Wan pipelines do (``(z - mean) / std``);
- **streaming decode** — diffusers' own ``decode`` already runs the decoder one latent frame at a
  time with a list of cached inputs per causal conv (``feat_cache``: the last two input frames,
  ``"Rep"`` for the temporal upsampler's first frame, which yields one pixel frame instead of
  four). :class:`WanStreamDecoder` keeps that list between calls, so decoding latents chunk by
  chunk runs exactly the calls of one whole-clip decode (tests check both agree), and exposes it
  as a state dict so a session can continue the decode exactly;
- **chunked encode** — the same per-chunk loop as diffusers' ``_encode`` (first pixel frame alone,
  then 4 at a time), moving only one chunk at a time to the device.

Latent frame 0 decodes to 1 pixel frame, every later one to ``temporal_stride`` (4) pixel frames:
a clip of ``n`` latent frames is ``1 + 4 (n - 1)`` pixel frames (``encoders.pixel_frames``).

Needs the optional extra: ``pip install -e '.[wan]'`` (diffusers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .autoencoder import frames_to_tensor, tensor_to_frames


def _diffusers_wan():
    try:
        from diffusers import AutoencoderKLWan
        from diffusers.models.autoencoders import autoencoder_kl_wan as impl
    except ImportError:
        raise RuntimeError("the Wan VAE needs diffusers: pip install -e '.[wan]'") from None
    return AutoencoderKLWan, impl


class WanVAE:
    """``AutoencoderKLWan`` with the pipeline's latent layout, normalisation and streaming decode."""

    def __init__(self, vae: Any, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.bfloat16) -> None:
        _, self._impl = _diffusers_wan()
        # nn.Module.to: diffusers' ModelMixin.to warns on every dtype cast (even with no fp32 modules)
        self.vae = torch.nn.Module.to(vae, device=device, dtype=dtype).eval().requires_grad_(False)
        self.device, self.dtype = torch.device(device), dtype
        cfg = vae.config
        self.patch = cfg.patch_size or 1
        self.latent_channels = int(cfg.z_dim)
        self.temporal_stride = 2 ** sum(bool(t) for t in cfg.temperal_downsample)
        self.spatial_stride = 2 ** (len(cfg.dim_mult) - 1) * self.patch
        self.latents_mean = torch.tensor(cfg.latents_mean, dtype=torch.float32)  # [C]
        self.latents_std = torch.tensor(cfg.latents_std, dtype=torch.float32)  # [C]
        if not self.latents_mean.numel() == self.latents_std.numel() == self.latent_channels:
            raise ValueError(f"VAE config: latents_mean/std need {self.latent_channels} values")

    @classmethod
    def from_pretrained(cls, path: str | Path, *, subfolder: str | None = "vae",
                        device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16,
                        local_files_only: bool = True) -> "WanVAE":
        """Load from a diffusers folder (e.g. a Wan2.1-T2V-1.3B-Diffusers snapshot: ``vae/``)."""
        AutoencoderKLWan, _ = _diffusers_wan()
        vae = AutoencoderKLWan.from_pretrained(str(path), subfolder=subfolder, torch_dtype=torch.float32,
                                               local_files_only=local_files_only)
        return cls(vae, device=device, dtype=dtype)

    @classmethod
    def from_config(cls, config: dict | None = None, *, seed: int = 0, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.bfloat16) -> "WanVAE":
        """Random weights (seeded) from a config dict (``None``: Wan2.1's VAE, 127 M parameters)."""
        AutoencoderKLWan, _ = _diffusers_wan()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = AutoencoderKLWan(**(config or {}))
        return cls(vae, device=device, dtype=dtype)

    # -- normalisation ------------------------------------------------------------------------
    def _stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1, 1)  # per channel of [B, C, f, h, w]
        return self.latents_mean.to(device).view(shape), self.latents_std.to(device).view(shape)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw VAE latents [B, C, f, h, w] -> normalised latents [B, f, C, h, w] (fp32)."""
        m, s = self._stats(z.device)
        return ((z.float() - m) / s).transpose(1, 2)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, f, C, h, w] -> raw VAE latents [B, C, f, h, w] (fp32)."""
        z = z.float().transpose(1, 2)
        m, s = self._stats(z.device)
        return z * s + m

    # -- encode ---------------------------------------------------------------------------------
    def _check_frames(self, n: int) -> None:
        s = self.temporal_stride
        if n == 0 or (n - 1) % s:
            raise ValueError(f"the Wan VAE needs 1 + {s}k pixel frames, got {n}")

    @torch.no_grad()
    def encode(self, frames: np.ndarray, chunk_frames: int = 16) -> torch.Tensor:
        """uint8 frames [F, H, W, 3] (F = 1 + 4k) -> normalised latents [1, f, C, h, w] (CPU fp32).

        The posterior mean (``latent_dist.mode()``), as the Wan pipelines use for conditioning.
        Runs diffusers' causal encoder loop (frame 0 alone, then 4 frames per call) with a private
        feature cache, ``chunk_frames`` pixel frames on the device at a time.
        """
        s = self.temporal_stride
        self._check_frames(len(frames))
        enc, feat = self.vae.encoder, [None] * self.n_causal_convs(self.vae.encoder)
        step = max(s, chunk_frames // s * s)
        bounds = [0, 1]
        while bounds[-1] < len(frames):
            bounds.append(min(bounds[-1] + step, len(frames)))
        out = []
        for a, b in zip(bounds, bounds[1:], strict=False):
            x = frames_to_tensor(frames[a:b]).transpose(1, 2).to(self.device, self.dtype)  # [1, 3, n, H, W]
            if self.patch > 1:
                x = self._impl.patchify(x, patch_size=self.patch)
            for i in range(0, x.shape[2], 1 if a == 0 else s):
                h = enc(x[:, :, i:i + (1 if a == 0 else s)], feat_cache=feat, feat_idx=[0])
                mu = self.vae.quant_conv(h)[:, : self.latent_channels]  # [1, C, 1, h, w]
                out.append(self.normalize(mu).cpu())
        return torch.cat(out, dim=1)

    def n_causal_convs(self, module: torch.nn.Module) -> int:
        """Slots of diffusers' feature cache: one per causal conv of the encoder or decoder."""
        return sum(isinstance(m, self._impl.WanCausalConv3d) for m in module.modules())

    def decoder(self) -> "WanStreamDecoder":
        return WanStreamDecoder(self)


class WanStreamDecoder:
    """Decodes normalised latents chunk by chunk with diffusers' causal feature cache kept between calls.

    ``state_dict`` holds that cache (one tensor per causal conv that has seen a frame, the indices
    of the ``"Rep"`` markers) and the number of latent frames decoded, which decides whether the
    next frame is the video's first.
    """

    def __init__(self, wan: WanVAE) -> None:
        self.wan = wan
        self.n_convs = wan.n_causal_convs(wan.vae.decoder)
        self.feat: list[Any] = [None] * self.n_convs
        self.frames = 0

    @torch.no_grad()
    def decode_tensor(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [1, n, C, h, w] -> pixels [1, 3, n_pix, H, W] in [-1, 1] (VAE dtype)."""
        w, vae = self.wan, self.wan.vae
        z = w.denormalize(latents.to(w.device)).to(w.dtype)  # [1, C, n, h, w]
        x = vae.post_quant_conv(z)
        out = []
        for i in range(x.shape[2]):
            out.append(vae.decoder(x[:, :, i:i + 1], feat_cache=self.feat, feat_idx=[0],
                                   first_chunk=self.frames == 0))
            self.frames += 1
        if not out:
            H, W = (d * w.spatial_stride for d in latents.shape[-2:])
            return torch.zeros(1, 3, 0, H, W, device=w.device, dtype=w.dtype)
        y = torch.cat(out, dim=2)
        if w.patch > 1:
            y = w._impl.unpatchify(y, patch_size=w.patch)
        return y.clamp(-1.0, 1.0)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Normalised latents [1, n, C, h, w] -> uint8 frames [n_pix, H, W, 3]."""
        return tensor_to_frames(self.decode_tensor(latents)[0].transpose(0, 1))

    def state_dict(self) -> dict[str, torch.Tensor]:
        feat = list(enumerate(self.feat))
        state = {f"feat.{i}": f.detach().cpu().clone() for i, f in feat if isinstance(f, torch.Tensor)}
        state["rep"] = torch.tensor([i for i, f in feat if isinstance(f, str)], dtype=torch.int64)
        state["frames"] = torch.tensor([self.frames], dtype=torch.int64)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        w = self.wan
        feat: list[Any] = [None] * self.n_convs
        for i in state.get("rep", torch.zeros(0, dtype=torch.int64)).tolist():
            feat[i] = "Rep"
        for k, v in state.items():
            if k.startswith("feat."):
                feat[int(k.split(".", 1)[1])] = v.to(w.device, w.dtype).clone()
        self.feat = feat
        self.frames = int(state["frames"].item()) if "frames" in state else 0
