"""A small causal video autoencoder: the embedded model's ``VideoVAE`` (see ``encoders.py``).

TAESD-shaped (plain 3x3 convs, ReLU, nearest upsampling, residual blocks, no normalisation layers)
so it is cheap enough to decode on two CPU cores in real time, plus the two things a streaming
video decoder needs:

- **causal temporal convolutions** (a 1x1 conv over the last ``k`` frames, residual). Each one
  keeps the last ``k - 1`` input frames as an explicit cache, like Wan's causal-VAE feature cache,
  so decoding chunk by chunk is the same computation as decoding everything at once and the
  cache can be saved with a session and continued exactly;
- an optional **temporal stride** (1, 2 or 4) with Wan's frame mapping: latent frame 0 covers
  pixel frame 0 alone, every later latent frame covers ``s`` pixel frames.

The streaming decoder runs one latent frame at a time. That makes chunked decoding *bitwise*
equal to whole-clip decoding by construction (every conv sees the same shapes either way, so no
kernel picks a different blocking), and on a 2-core CPU it costs nothing measurable.

Latents are normalised per channel (mean/std fitted after training, stored with the weights) so
the diffusion model sees roughly unit-variance inputs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

FORMAT = "videomla-ae/1"


@dataclass(frozen=True)
class AEConfig:
    """Sizes of the autoencoder. Level 0 is full resolution; the last level is the latent grid."""

    name: str = "ae-128-s8"
    frame_size: tuple[int, int] = (128, 128)  # (H, W) it is trained at; the convs accept any multiple
    latent_channels: int = 16
    widths: tuple[int, ...] = (32, 32, 64, 64)  # channels per level; spatial stride = 2 ** (levels - 1)
    blocks: tuple[int, ...] = (1, 1, 1, 2)  # residual blocks per level (encoder and decoder alike)
    temporal_levels: tuple[int, ...] = (2, 3)  # levels with a causal temporal conv (cheap at low res)
    temporal_kernel: int = 3  # frames each temporal conv sees (cache holds kernel - 1)
    temporal_stride: int = 1  # 1, 2 or 4 pixel frames per latent frame (after the first)
    latent_clamp: float = 3.0  # decoder input is soft-clamped to +-this (raw latent units), as TAESD
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        n = len(self.widths)
        if n < 2 or len(self.blocks) != n:
            raise ValueError(f"widths {self.widths} and blocks {self.blocks} need the same length >= 2")
        if self.temporal_stride not in (1, 2, 4):
            raise ValueError(f"temporal_stride must be 1, 2 or 4, got {self.temporal_stride}")
        if self.temporal_kernel < 2:
            raise ValueError(f"temporal_kernel must be >= 2, got {self.temporal_kernel}")
        if any(not 0 <= lv < n for lv in self.temporal_levels):
            raise ValueError(f"temporal_levels {self.temporal_levels} outside 0..{n - 1}")
        if any(s % self.spatial_stride for s in self.frame_size):
            raise ValueError(f"frame_size {self.frame_size} is not a multiple of the spatial stride "
                             f"{self.spatial_stride}")

    @property
    def spatial_stride(self) -> int:
        return 2 ** (len(self.widths) - 1)

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.frame_size[0] // self.spatial_stride, self.frame_size[1] // self.spatial_stride

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "AEConfig":
        d = json.loads(text)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


AE_PRESETS: dict[str, AEConfig] = {
    c.name: c
    for c in (
        AEConfig(description="128x128 RGB -> 16x16x16, one latent frame per pixel frame (default)"),
        AEConfig("ae-128-s8-t2", temporal_stride=2,
                 description="as ae-128-s8, 2 pixel frames per latent frame"),
        AEConfig("ae-128-s8-t4", temporal_stride=4,
                 description="as ae-128-s8, Wan-like 4x temporal stride"),
        AEConfig("ae-128-s8-lite", widths=(16, 32, 64, 64),
                 description="as ae-128-s8 with thinner full-res levels: ~25% faster, less fine detail"),
        AEConfig("ae-64-s8", frame_size=(64, 64), description="64x64 RGB -> 8x8x16 (the 2-hour demo size)"),
        AEConfig("ae-tiny", frame_size=(32, 32), latent_channels=8, widths=(8, 16, 16, 16),
                 blocks=(1, 1, 1, 1), description="~50k parameters, 32x32 frames: for unit tests"),
        AEConfig("ae-tiny-t4", frame_size=(32, 32), latent_channels=8, widths=(8, 16, 16, 16),
                 blocks=(1, 1, 1, 1), temporal_stride=4, description="ae-tiny with a 4x temporal stride"),
    )
}


def get_ae_config(name: str) -> AEConfig:
    """Look an autoencoder preset up by name, with a clear error listing the known ones."""
    try:
        return AE_PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown autoencoder {name!r}; known: {', '.join(sorted(AE_PRESETS))}") from None


# -- building blocks ------------------------------------------------------------------------------

Cache = dict[str, torch.Tensor]


def _per_frame(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Apply a 2-D module to every frame: [B, T, C, H, W] -> [B, T, C', H', W']."""
    y = fn(x.flatten(0, 1))  # [B*T, C', H', W']
    return y.unflatten(0, x.shape[:2])


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)


class ResBlock(nn.Module):
    """relu(x + conv(relu(conv(x)))) on single frames."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = _conv(c, c), _conv(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, c, H, W]
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


class CausalTemporalConv(nn.Module):
    """y_t = x_t + W [x_{t-k+1} | ... | x_t] (a 1x1 conv over the last k frames), causal.

    Frames before the first are zeros. ``cache`` holds the last k - 1 *input* frames of the
    previous call; it is returned updated, so a caller that threads it through gets exactly the
    result of one call on the concatenated input.
    """

    def __init__(self, c: int, k: int) -> None:
        super().__init__()
        self.k = k
        self.mix = nn.Conv2d(k * c, c, 1)

    def forward(self, x: torch.Tensor, cache: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, c, H, W = x.shape
        if cache is None:
            cache = x.new_zeros(B, self.k - 1, c, H, W)
        xp = torch.cat([cache, x], dim=1)  # [B, T + k - 1, c, H, W]
        window = torch.cat([xp[:, i:i + T] for i in range(self.k)], dim=2)  # [B, T, k*c, H, W]
        y = x + _per_frame(self.mix, window)  # [B, T, c, H, W]
        return y, xp[:, T:].clone()  # new cache: the last k - 1 input frames [B, k-1, c, H, W]


class TimeDown(nn.Module):
    """Fuse s pixel frames into one latent frame: [B, 1 + s (f - 1), c, ...] -> [B, f, c, ...].

    The first frame of the video forms a group of its own (repeated s times), as in Wan.
    """

    def __init__(self, c: int, s: int) -> None:
        super().__init__()
        self.s = s
        self.fuse = nn.Conv2d(s * c, c, 1)

    def forward(self, x: torch.Tensor, first: bool) -> torch.Tensor:
        B, T, c, H, W = x.shape
        s = self.s
        rest = x[:, 1:] if first else x  # frames that form whole groups of s
        if rest.shape[1] % s:
            raise ValueError(f"temporal stride {s}: got {T} frames, which do not form whole groups")
        groups = rest.reshape(B, rest.shape[1] // s, s * c, H, W)  # [B, f', s*c, H, W]
        if first:
            head = x[:, :1].expand(B, s, c, H, W).reshape(B, 1, s * c, H, W)  # frame 0 repeated s times
            groups = torch.cat([head, groups], dim=1)  # [B, f, s*c, H, W]
        return _per_frame(self.fuse, groups)  # [B, f, c, H, W]


class TimeUp(nn.Module):
    """Expand each latent frame to s pixel frames; the video's first latent frame keeps only one."""

    def __init__(self, c: int, s: int) -> None:
        super().__init__()
        self.s = s
        self.expand = nn.Conv2d(c, s * c, 1)

    def forward(self, x: torch.Tensor, first: bool) -> torch.Tensor:
        B, n, c, H, W = x.shape
        y = _per_frame(self.expand, x).reshape(B, n * self.s, c, H, W)  # [B, n*s, c, H, W], time-ordered
        return y[:, self.s - 1:] if first else y  # frame 0 -> its group's last (most recent) slot


class _Level(nn.Module):
    """One resolution level: [resample conv] -> relu -> [causal temporal conv] -> residual blocks."""

    def __init__(self, c_in: int, c: int, n_blocks: int, temporal_k: int | None, down: bool) -> None:
        super().__init__()
        self.conv = _conv(c_in, c, stride=2 if down else 1)
        self.temporal = CausalTemporalConv(c, temporal_k) if temporal_k else None
        self.blocks = nn.Sequential(*(ResBlock(c) for _ in range(n_blocks)))

    def forward(self, x: torch.Tensor, cache: Cache, new: Cache, key: str) -> torch.Tensor:
        x = F.relu(_per_frame(self.conv, x))  # [B, T, c, H', W']
        if self.temporal is not None:
            x, new[key] = self.temporal(x, cache.get(key))
        return _per_frame(self.blocks, x)


class Encoder(nn.Module):
    """Pixels [B, F, 3, H, W] in [-1, 1] -> raw latents [B, f, C, H/8, W/8]."""

    def __init__(self, cfg: AEConfig) -> None:
        super().__init__()
        w, k = cfg.widths, cfg.temporal_kernel
        self.levels = nn.ModuleList(
            _Level(3 if i == 0 else w[i - 1], w[i], cfg.blocks[i], k if i in cfg.temporal_levels else None,
                   down=i > 0) for i in range(len(w)))
        s = cfg.temporal_stride
        self.time_down = TimeDown(w[-1], s) if s > 1 else None
        self.head = _conv(w[-1], cfg.latent_channels)

    def forward(self, x: torch.Tensor, cache: Cache | None = None,
                first: bool = True) -> tuple[torch.Tensor, Cache]:
        """``first``: x starts at the video's first frame. Returns the latents and the new caches."""
        cache, new = cache or {}, {}
        for i, level in enumerate(self.levels):
            x = level(x, cache, new, f"enc.{i}")
        if self.time_down is not None:
            x = self.time_down(x, first)
        return _per_frame(self.head, x), new


class Decoder(nn.Module):
    """Raw latents [B, n, C, h, w] -> pixels [B, pixel_frames, 3, 8h, 8w] (unclamped, ~[-1, 1])."""

    def __init__(self, cfg: AEConfig) -> None:
        super().__init__()
        w, k, L = cfg.widths, cfg.temporal_kernel, len(cfg.widths) - 1
        self.clamp = cfg.latent_clamp
        self.levels = nn.ModuleList(
            _Level(cfg.latent_channels if i == L else w[i + 1], w[i], cfg.blocks[i],
                   k if i in cfg.temporal_levels else None, down=False) for i in range(L, -1, -1))
        s = cfg.temporal_stride
        self.time_up = TimeUp(w[-1], s) if s > 1 else None
        self.head = _conv(w[0], 3)

    def forward(self, z: torch.Tensor, cache: Cache | None = None,
                first: bool = True) -> tuple[torch.Tensor, Cache]:
        """``first``: z starts at the video's first latent frame. Returns pixels and the new caches."""
        cache, new = cache or {}, {}
        x = self.clamp * torch.tanh(z / self.clamp)  # [B, n, C, h, w]
        for j, level in enumerate(self.levels):
            if j > 0:
                x = _per_frame(lambda t: F.interpolate(t, scale_factor=2.0, mode="nearest"), x)
            x = level(x, cache, new, f"dec.{j}")
            if j == 0 and self.time_up is not None:
                x = self.time_up(x, first)  # [B, n_pix, c, h, w]
        return _per_frame(self.head, x), new  # [B, n_pix, 3, H, W]


# -- the VideoVAE ---------------------------------------------------------------------------------


def frames_to_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [F, H, W, 3] or [B, F, H, W, 3] -> float32 [B, F, 3, H, W] in [-1, 1].

    A floating-point tensor is taken to be that layout and range already (a trainer may prepare
    batches itself, e.g. on the GPU) and is returned unchanged.
    """
    if isinstance(frames, torch.Tensor) and frames.is_floating_point():
        return frames
    x = torch.as_tensor(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if x.dtype != torch.uint8 or x.shape[-1] != 3 or x.dim() not in (4, 5):
        raise ValueError(f"expected uint8 frames [F, H, W, 3] or [B, F, H, W, 3], "
                         f"got {tuple(x.shape)} {x.dtype}")
    x = x if x.dim() == 5 else x[None]
    return x.permute(0, 1, 4, 2, 3).float().div(127.5).sub(1.0)  # [B, F, 3, H, W]


def tensor_to_frames(x: torch.Tensor) -> np.ndarray:
    """float [N, 3, H, W] in ~[-1, 1] -> uint8 [N, H, W, 3]."""
    x = x.float().clamp(-1.0, 1.0).add(1.0).mul(127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


class CausalVideoAE(nn.Module):
    """The embedded model's video autoencoder, behind the ``VideoVAE`` protocol.

    ``forward`` is the batched training path; ``encode`` / ``decoder()`` are the pipeline's.
    The latent statistics are plain fp32 tensors, not buffers, so casting the network to bf16
    does not round them; :meth:`save` stores them with the weights.
    """

    def __init__(self, cfg: AEConfig = AEConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.enc, self.dec = Encoder(cfg), Decoder(cfg)
        self._init_weights()
        self.latent_mean = torch.zeros(cfg.latent_channels)  # [C] fp32
        self.latent_std = torch.ones(cfg.latent_channels)  # [C] fp32

    def _init_weights(self) -> None:
        """He init for the ReLU convs (PyTorch's default shrinks the signal ~1.7x per layer, which
        over ~20 layers leaves the untrained decoder outputting a near-constant and slows the start
        of training); residual and temporal branches start small so each block is near identity."""
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
                nn.init.zeros_(mod.bias)
        for mod in self.modules():
            if isinstance(mod, ResBlock):
                mod.conv2.weight.data.mul_(0.25)
            elif isinstance(mod, CausalTemporalConv):
                mod.mix.weight.data.mul_(0.25)
        for head in (self.enc.head, self.dec.head):
            head.weight.data.mul_(0.5 ** 0.5)  # linear outputs: gain 1, not sqrt(2)

    # VideoVAE protocol attributes
    @property
    def latent_channels(self) -> int:
        return self.cfg.latent_channels

    @property
    def spatial_stride(self) -> int:
        return self.cfg.spatial_stride

    @property
    def temporal_stride(self) -> int:
        return self.cfg.temporal_stride

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training path: pixels [B, F, 3, H, W] -> (reconstruction [B, F, 3, H, W], raw latents)."""
        z, _ = self.enc(x)  # [B, f, C, h, w]
        y, _ = self.dec(z)
        return y, z

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents [..., C, h, w] -> unit-variance latents (fp32)."""
        m, s = self.latent_mean.to(z.device), self.latent_std.to(z.device)
        return (z.float() - m[:, None, None]) / s[:, None, None]

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        m, s = self.latent_mean.to(z.device), self.latent_std.to(z.device)
        return z.float() * s[:, None, None] + m[:, None, None]

    @torch.no_grad()
    def encode(self, frames: np.ndarray, chunk_frames: int = 16) -> torch.Tensor:
        """uint8 frames [F, H, W, 3] -> normalised latents [1, f, C, h, w] (CPU fp32).

        Runs causally in chunks of about ``chunk_frames`` so a minute of video fits in memory. With a
        temporal stride s, F must be 1 + s k (Wan's mapping).
        """
        s, F_ = self.temporal_stride, len(frames)
        self._check_frames(F_)
        step = max(s, chunk_frames // s * s)
        bounds = [0, 1 if s > 1 else min(step, F_)]
        while bounds[-1] < F_:
            bounds.append(min(bounds[-1] + step, F_))
        cache: Cache = {}
        out = []
        for a, b in zip(bounds, bounds[1:]):
            x = frames_to_tensor(frames[a:b]).to(self.device, self.dtype)  # [1, b-a, 3, H, W]
            z, cache = self.enc(x, cache, first=a == 0)
            out.append(self.normalize(z).cpu())
        return torch.cat(out, dim=1)  # [1, f, C, h, w]

    @torch.no_grad()
    def encode_clips(self, clips: np.ndarray) -> torch.Tensor:
        """uint8 clips [B, F, H, W, 3] -> normalised latents [B, f, C, h, w] fp32 on the model's device.

        The training path: one batched call instead of ``B`` calls of :meth:`encode`, which on a
        GPU would otherwise wait on many small launches and host copies. For clips no longer than
        one streaming chunk (training clips are) it is exactly :meth:`encode` of each (tested).
        """
        self._check_frames(clips.shape[1])
        z, _ = self.enc(frames_to_tensor(clips).to(self.device, self.dtype), {}, first=True)  # [B, f, C, h, w]
        return self.normalize(z)

    def _check_frames(self, n: int) -> None:
        """With a temporal stride s a clip needs 1 + s k frames (Wan's mapping)."""
        s = self.temporal_stride
        if n == 0 or (s > 1 and (n - 1) % s):
            raise ValueError(f"temporal stride {s} needs 1 + {s}k frames, got {n}")

    def decoder(self) -> "AEStreamDecoder":
        return AEStreamDecoder(self)

    @torch.no_grad()
    def fit_latent_stats(self, clips: Iterable[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Set the per-channel latent mean/std from raw latents of ``clips`` (uint8 [F, H, W, 3] each)."""
        total = torch.zeros(self.latent_channels, dtype=torch.float64)
        sq, n = torch.zeros_like(total), 0
        for clip in clips:
            x = frames_to_tensor(clip).to(self.device, self.dtype)
            z = self.enc(x)[0].double().cpu()  # [1, f, C, h, w]
            total += z.sum(dim=(0, 1, 3, 4))
            sq += z.pow(2).sum(dim=(0, 1, 3, 4))
            n += z.numel() // self.latent_channels
        if n == 0:
            raise ValueError("fit_latent_stats needs at least one clip")
        mean = total / n
        std = (sq / n - mean.pow(2)).clamp_min(1e-8).sqrt()
        self.latent_mean, self.latent_std = mean.float(), std.float()
        return self.latent_mean, self.latent_std

    def save(self, path: str | Path) -> None:
        """Weights (fp32) + latent stats in one safetensors file, the config JSON in its metadata."""
        from safetensors.torch import save_file

        tensors = {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}
        tensors["latent_mean"], tensors["latent_std"] = self.latent_mean.clone(), self.latent_std.clone()
        save_file(tensors, str(path), metadata={"format": FORMAT, "config": self.cfg.to_json()})

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32) -> "CausalVideoAE":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: not a VideoMLA autoencoder file")
        tensors = load_file(str(path))
        model = cls(AEConfig.from_json(meta["config"]))
        model.latent_mean = tensors.pop("latent_mean").float()
        model.latent_std = tensors.pop("latent_std").float()
        model.load_state_dict(tensors)
        return model.to(device, dtype).eval()


def restride(ae: CausalVideoAE, cfg: AEConfig | str) -> CausalVideoAE:
    """``ae`` (temporal stride 1) as an autoencoder of ``cfg``'s temporal stride s that starts out as
    ``ae`` sampled every s frames: its encoder gives exactly ``ae``'s latents of pixel frames
    0, s, 2s, ... (each group's fuse keeps the group's last, most recent frame) and its decoder
    starts by repeating each latent frame's features s times (its temporal convs after that still
    mix neighbouring frames; the video's first frame decodes as at stride 1).

    Why: the temporal stride then trains as a decoder-only stage (``Recipe.ae_frozen_encoder``), so
    the latent space -- and with it every DiT trained on ``ae`` -- carries over unchanged, and the
    DiT sees s times the motion per latent frame.

    ``cfg`` must equal ``ae.cfg`` but for its name, description and temporal stride."""
    cfg = get_ae_config(cfg) if isinstance(cfg, str) else cfg
    if ae.temporal_stride != 1:
        raise ValueError(f"restride starts from a temporal stride of 1, got {ae.temporal_stride}")
    if replace(cfg, name=ae.cfg.name, temporal_stride=1, description="") != replace(ae.cfg, description=""):
        raise ValueError(f"autoencoder {ae.cfg.name} differs from {cfg.name} in more than the temporal stride")
    new = CausalVideoAE(cfg).to(ae.device)
    missing, unexpected = new.load_state_dict(ae.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("enc.time_down.", "dec.time_up.")) for k in missing), missing
    s, c = cfg.temporal_stride, cfg.widths[-1]
    eye = torch.eye(c, device=ae.device)[:, :, None, None]  # [c, c, 1, 1]
    with torch.no_grad():
        if s > 1:
            fuse, expand = new.enc.time_down.fuse, new.dec.time_up.expand
            fuse.weight.zero_()  # [c, s*c, 1, 1]: input block j is the group's frame j
            fuse.weight[:, (s - 1) * c:] = eye
            fuse.bias.zero_()
            expand.weight.copy_(eye.repeat(s, 1, 1, 1))  # [s*c, c, 1, 1]: output block j is pixel frame j
            expand.bias.zero_()
    new.latent_mean, new.latent_std = ae.latent_mean.clone(), ae.latent_std.clone()
    return new.to(ae.dtype).eval()


def build_autoencoder(cfg: AEConfig | str = "ae-128-s8", *, seed: int = 0, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> CausalVideoAE:
    """An untrained autoencoder with seeded weights (same seed -> same weights on every machine)."""
    cfg = get_ae_config(cfg) if isinstance(cfg, str) else cfg
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CausalVideoAE(cfg)
    return model.to(device, dtype).eval()


class AEStreamDecoder:
    """Decodes latents chunk by chunk, keeping the temporal-conv caches between calls.

    One latent frame per network call, so any chunking gives bitwise the same pixels (see the
    module docstring). ``state_dict`` holds the caches (in the model's dtype) and the number of
    latent frames decoded so far, which decides whether the next frame is the video's first.
    """

    def __init__(self, model: CausalVideoAE) -> None:
        self.model = model
        self.cache: Cache = {}
        self.frames = 0

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        m = self.model
        z = m.denormalize(latents[0].to(m.device)).to(m.dtype)  # [n, C, h, w] raw
        out = []
        for j in range(z.shape[0]):
            x, self.cache = m.dec(z[None, j:j + 1], self.cache, first=self.frames == 0)  # [1, 1|s, 3, H, W]
            self.frames += 1
            out.append(x[0])
        if not out:
            H, W = (d * m.spatial_stride for d in latents.shape[-2:])
            return np.zeros((0, H, W, 3), np.uint8)
        return tensor_to_frames(torch.cat(out))  # [n_pix, H, W, 3]

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {k: v.detach().cpu().clone() for k, v in self.cache.items()}
        state["frames"] = torch.tensor([self.frames], dtype=torch.int64)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        m = self.model
        self.frames = int(state["frames"].item()) if "frames" in state else 0
        self.cache = {k: v.to(m.device, m.dtype).clone() for k, v in state.items() if k != "frames"}


# -- training objective ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LossWeights:
    """Pixel L1 carries the loss; the edge terms sharpen outlines L1 alone blurs; the latent term
    keeps raw latents near unit scale (inside the decoder's soft clamp) without a KL.

    The difference terms are kept small on purpose: at 0.5 / 0.25 they fight the pixel term early
    on (measured on moving squares: pixel L1 0.39 after 150 Adam steps, against 0.20 at these
    defaults and 0.18 with pure L1).
    """

    edge: float = 0.1  # L1 of horizontal/vertical finite differences
    temporal: float = 0.05  # L1 of frame-to-frame differences (flicker)
    latent: float = 1e-3  # mean squared raw latent


def loss_terms(model: CausalVideoAE, frames_batch: np.ndarray | torch.Tensor,
               weights: LossWeights = LossWeights()) -> dict[str, torch.Tensor]:
    """The weighted terms of :func:`reconstruction_loss` by name (for logging), plus ``total``."""
    x = frames_to_tensor(frames_batch).to(model.device)  # [B, F, 3, H, W] fp32 target
    y, z = model(x.to(model.dtype))
    y = y.float()
    terms = {"l1": (y - x).abs().mean()}
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
    terms["edge"] = weights.edge * ((dx(y) - dx(x)).abs().mean() + (dy(y) - dy(x)).abs().mean())
    if x.shape[1] > 1:
        terms["temporal"] = weights.temporal * ((y[:, 1:] - y[:, :-1]) - (x[:, 1:] - x[:, :-1])).abs().mean()
    terms["latent"] = weights.latent * z.float().pow(2).mean()
    terms["total"] = sum(terms.values())
    return terms


def reconstruction_loss(model: CausalVideoAE, frames_batch: np.ndarray | torch.Tensor,
                        weights: LossWeights = LossWeights()) -> torch.Tensor:
    """Scalar training loss for a batch of clips.

    ``frames_batch``: uint8 [B, F, H, W, 3], or float [B, F, 3, H, W] in [-1, 1]. With a temporal
    stride s, F must be 1 + s k. Works under bf16 autocast; the loss itself is computed in fp32.
    """
    return loss_terms(model, frames_batch, weights)["total"]


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "AEConfig", "AE_PRESETS", "AEStreamDecoder", "CausalVideoAE", "LossWeights", "build_autoencoder",
    "frames_to_tensor", "get_ae_config", "loss_terms", "param_count", "reconstruction_loss",
    "tensor_to_frames",
]
