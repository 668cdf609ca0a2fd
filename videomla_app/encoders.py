"""Text-encoder and VAE interfaces of the pipeline, with small deterministic stand-ins.

The pipeline only sees these protocols. Concrete encoders come with the models: the embedded model
brings MiniLM and its own autoencoder, the 1.3B model brings umT5 and the Wan VAE. The ``Toy*``
classes here are real (deterministic, invertible where it matters) but untrained; tests and
benchmarks use them so no download is ever needed.
"""

from __future__ import annotations

import re
import zlib
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F


class TextEncoder(Protocol):
    text_dim: int
    text_len: int

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Token states [B, text_len, text_dim] (zero-padded, as Wan pads umT5 to 512 tokens)."""


class StreamDecoder(Protocol):
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latent frames [1, n, C, h, w] -> uint8 pixel frames [n_pix, H, W, 3], causally.

        Decoding chunk by chunk must equal decoding everything at once; the decoder keeps whatever
        temporal state it needs between calls and exposes it for exact continuation.
        """

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


class VideoVAE(Protocol):
    latent_channels: int
    spatial_stride: int
    temporal_stride: int

    def encode(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 frames [F, H, W, 3] -> latents [1, f, C, h, w]."""

    def decoder(self) -> StreamDecoder: ...


def pixel_frames(n_latent: int, temporal_stride: int) -> int:
    """Pixel frames produced by ``n_latent`` latent frames (Wan: 1 + 4 (n - 1))."""
    if n_latent <= 0:
        return 0
    return 1 + temporal_stride * (n_latent - 1) if temporal_stride > 1 else n_latent


class ToyTextEncoder:
    """Each word maps to a fixed pseudo-random vector (seeded by its CRC32): prompts that share
    words share token states, which is all the pipeline and its tests need."""

    def __init__(self, text_dim: int, text_len: int, seed: int = 0) -> None:
        self.text_dim, self.text_len, self.seed = text_dim, text_len, seed

    def _word(self, word: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(zlib.crc32(word.encode()) ^ self.seed)
        return torch.randn(self.text_dim, generator=g)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(prompts), self.text_len, self.text_dim)
        for i, p in enumerate(prompts):
            for j, w in enumerate(re.findall(r"[a-z0-9]+", p.lower())[: self.text_len]):
                out[i, j] = self._word(w)
        return out


class ToyVAE:
    """A fixed random linear patch decoder with a causal temporal term.

    pre_f = W z_f + 0.25 * pre_{f-1}; pixels = tanh(pre) via pixel shuffle. The recurrent term
    makes the decoder stateful, like a real causal video VAE, so chunked decoding and exact
    continuation are actually exercised. ``encode`` inverts it (least squares), frame by frame.
    """

    temporal_stride = 1

    def __init__(self, latent_channels: int = 4, spatial_stride: int = 8, seed: int = 0) -> None:
        self.latent_channels, self.spatial_stride = latent_channels, spatial_stride
        g = torch.Generator().manual_seed(seed)
        out = 3 * spatial_stride**2
        self.W = torch.randn(out, latent_channels, generator=g) / latent_channels**0.5  # [3*s*s, C]
        self.W_pinv = torch.linalg.pinv(self.W)  # [C, 3*s*s]

    def decoder(self) -> "_ToyDecoder":
        return _ToyDecoder(self)

    def encode(self, frames: np.ndarray) -> torch.Tensor:
        s = self.spatial_stride
        x = torch.from_numpy(np.ascontiguousarray(frames)).float().div(127.5).sub(1).clamp(-0.999, 0.999)
        pre = torch.atanh(x).permute(0, 3, 1, 2)  # [F, 3, H, W]
        pre = F.pixel_unshuffle(pre, s).permute(0, 2, 3, 1)  # [F, h, w, 3*s*s]
        prev = torch.zeros_like(pre[0])
        zs = []
        for f in range(pre.shape[0]):
            zs.append((pre[f] - 0.25 * prev) @ self.W_pinv.T)  # [h, w, C]
            prev = zs[-1] @ self.W.T + 0.25 * prev
        return torch.stack(zs).permute(0, 3, 1, 2)[None]  # [1, F, C, h, w]


class _ToyDecoder:
    def __init__(self, vae: ToyVAE) -> None:
        self.vae = vae
        self.prev: torch.Tensor | None = None  # [h, w, 3*s*s] pre-activation of the last frame

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        z = latents[0].float().cpu().permute(0, 2, 3, 1)  # [n, h, w, C]
        frames = []
        for f in range(z.shape[0]):
            pre = z[f] @ self.vae.W.T + (0.25 * self.prev if self.prev is not None else 0.0)
            self.prev = pre
            frames.append(pre)
        pre = torch.stack(frames).permute(0, 3, 1, 2)  # [n, 3*s*s, h, w]
        img = F.pixel_shuffle(torch.tanh(pre), self.vae.spatial_stride)  # [n, 3, H, W]
        return img.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.prev is None else {"prev": self.prev.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.prev = state["prev"].clone() if "prev" in state else None
