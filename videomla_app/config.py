"""Model, cache and sampler configuration: frozen dataclasses and named presets.

Every number of the paper's model lives in ``PRESETS["videomla-1.3b"]`` (PAPER Table 4); the dense
baseline ``self-forcing-1.3b`` is the same backbone with per-head K/V (PAPER §13.2). Small presets
run the same classes on a CPU in tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from .rope import RopeSpec

AttnKind = Literal["mla", "mha"]


@dataclass(frozen=True)
class MLAConfig:
    """Latent attention sizes (PAPER §4.1). Cache per token per layer = d_c + d_rope scalars."""

    d_c: int = 192  # shared KV content latent, the only per-token content that is cached
    d_q: int = 768  # query latent (recomputed every step, never cached)
    d_nope: int = 96  # per-head key channels without position
    d_rope: int = 32  # shared positional key channels (one per token, all heads)
    rope_pairs: tuple[int, int, int] = (6, 5, 5)  # highest-frequency t/h/w pairs of Wan's tables

    def __post_init__(self) -> None:
        if 2 * sum(self.rope_pairs) != self.d_rope:
            raise ValueError(f"rope_pairs {self.rope_pairs} give {2 * sum(self.rope_pairs)} channels, "
                             f"not d_rope={self.d_rope}")


@dataclass(frozen=True)
class ModelConfig:
    """The causal Wan-style DiT (PAPER §13.1)."""

    dim: int = 1536
    n_heads: int = 12
    n_layers: int = 30
    ffn_dim: int = 8960
    freq_dim: int = 256  # sinusoidal timestep embedding width
    text_dim: int = 4096  # text encoder width (umT5-XXL)
    latent_channels: int = 16
    patch: tuple[int, int, int] = (1, 2, 2)
    latent_hw: tuple[int, int] = (60, 104)  # latent frame size (480x832 pixels / VAE stride 8)
    attn: AttnKind = "mla"
    mla: MLAConfig | None = field(default_factory=MLAConfig)
    eps: float = 1e-6
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.attn == "mla":
            if self.mla is None:
                raise ValueError("attn='mla' needs an MLAConfig")
            if self.mla.d_nope + self.mla.d_rope != self.head_dim:
                raise ValueError(f"d_nope + d_rope = {self.mla.d_nope + self.mla.d_rope} != head_dim "
                                 f"{self.head_dim}")
        h, w = self.latent_hw
        if h % self.patch[1] or w % self.patch[2] or self.patch[0] != 1:
            raise ValueError(f"latent {self.latent_hw} does not tile into patches {self.patch} "
                             "(temporal patch must be 1 for chunk-causal generation)")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def grid_hw(self) -> tuple[int, int]:
        """Token grid of one latent frame."""
        return self.latent_hw[0] // self.patch[1], self.latent_hw[1] // self.patch[2]

    @property
    def tokens_per_frame(self) -> int:
        h, w = self.grid_hw
        return h * w

    def head_rope(self) -> RopeSpec:
        """RoPE of a full dense head (Wan: 22/21/21 pairs for d_h = 128)."""
        return RopeSpec.full(self.head_dim, self.rope_theta)

    def mla_rope(self) -> RopeSpec:
        """RoPE of the decoupled, head-shared positional key (6/5/5 pairs of Wan's tables)."""
        assert self.mla is not None
        return RopeSpec.decoupled(self.head_dim, self.mla.rope_pairs, self.rope_theta)

    def cache_scalars_per_token(self) -> int:
        """Cached scalars per token per layer: d_c + d_rope (MLA) or 2 * n_heads * head_dim (MHA)."""
        if self.attn == "mla":
            assert self.mla is not None
            return self.mla.d_c + self.mla.d_rope
        return 2 * self.dim

    def dense_scalars_per_token(self) -> int:
        return 2 * self.dim


@dataclass(frozen=True)
class CacheConfig:
    """Rolling KV cache geometry, in latent frames.

    The chunk being generated attends to the sink frames, the ``window_frames`` most recently
    committed frames, and itself. The cache holds all three (sink + window + one chunk of slots),
    so the chunk's keys are written in place before attention and nothing is ever concatenated.
    Self-Forcing's 21-frame cache is ``sink 0 + window 18 + chunk 3``; VideoMLA's "1 sink + 6"
    context is ``sink 1 + window 6 + chunk 3`` (PAPER §4.8).
    """

    sink_frames: int = 1
    window_frames: int = 6
    chunk_frames: int = 3

    def __post_init__(self) -> None:
        if self.chunk_frames < 1 or self.sink_frames < 0 or self.window_frames < 0:
            raise ValueError(f"bad cache geometry: {self}")

    @property
    def capacity_frames(self) -> int:
        return self.sink_frames + self.window_frames + self.chunk_frames


@dataclass(frozen=True)
class SamplerConfig:
    """Few-step rectified-flow sampler (PAPER §7, Self-Forcing's FlowMatchScheduler)."""

    steps: tuple[int, ...] = (1000, 750, 500, 250)
    shift: float = 5.0
    warp: bool = True  # map the step list through the shifted 1000-step table (Self-Forcing)
    context_noise: float = 0.0  # timestep of the cache-write pass
    # Classifier-free guidance on the flow: v_empty + g * (v_prompt - v_empty). 1 = off (one model call
    # per step); > 1 runs both prompts as one forward of twice the batch (guided.py; 1.2x the time of
    # an unguided chunk on the 2-core CPU) and needs a model trained with caption dropout.
    guidance: float = 1.0
    # How one step moves to the next timestep. "renoise": predict x0, then re-noise it with fresh
    # noise (Self-Forcing's sampler, right for few-step *distilled* students). "euler": a
    # deterministic Euler step along the flow ODE, x += (sigma' - sigma) * flow, which keeps what
    # the noise already decided (where objects are) instead of redrawing it at every step -- the
    # right solver for an undistilled flow model, whose x0 guess at high noise is a blurred mean.
    solver: str = "renoise"
    # Warm start (0 = off): every chunk after the first starts at this timestep from the previous
    # clean latent frame plus the chunk's noise, and runs only the steps below it. An undertrained
    # model's x0 guess at high noise is a blurred mean, in which a moving object fades within a
    # second; starting from the last frame keeps it in the input, with fewer model calls.
    warm_start: float = 0.0
    # Anchored first chunk: after the first chunk of a video is denoised, denoise its later frames
    # again from fresh noise with its first frame held at the cache-write level (``context_noise``).
    # Why: when all of a chunk's frames share one level, where an object starts and where it goes
    # are settled together by the noise, and a motion word is never needed; with the object's
    # position fixed, only the text says where it goes next. Needs a model trained for it
    # (``Recipe.anchor_first``); costs the first chunk's model calls once more.
    anchor_first: bool = False
    # The first chunk's steps (empty = ``steps``). It has no context: the text and the noise alone
    # decide where each object is and what it looks like, and four coarse Euler steps from pure
    # noise can leave a faint object that the next chunks, copying the context, never bring back.
    # More steps here cost the first chunk once, nothing after.
    first_steps: tuple[int, ...] = ()
    num_train_timesteps: int = 1000


@dataclass(frozen=True)
class VideoConfig:
    """Pixel geometry of the VAE the model was trained with."""

    height: int = 480
    width: int = 832
    fps: int = 16
    temporal_stride: int = 4  # Wan VAE: latent frame 0 -> 1 pixel frame, each later one -> 4
    spatial_stride: int = 8


@dataclass(frozen=True)
class Preset:
    """Everything that defines a model variant; looked up by name."""

    name: str
    model: ModelConfig
    cache: CacheConfig
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    text_len: int = 512
    description: str = ""

    def __post_init__(self) -> None:
        for name, cls in (("model", ModelConfig), ("cache", CacheConfig), ("sampler", SamplerConfig),
                          ("video", VideoConfig)):
            if not isinstance(getattr(self, name), cls):
                raise TypeError(f"preset {self.name}: {name} must be a {cls.__name__}")

    def with_(self, **changes) -> "Preset":
        return replace(self, **changes)


_WAN_13B = ModelConfig()

PRESETS: dict[str, Preset] = {
    "videomla-1.3b": Preset(
        "videomla-1.3b", _WAN_13B, CacheConfig(sink_frames=1, window_frames=6, chunk_frames=3),
        description="VideoMLA (Wan2.1-T2V-1.3B backbone, d_c 192, 1 sink + 6 window latent frames)"),
    "self-forcing-1.3b": Preset(
        "self-forcing-1.3b", replace(_WAN_13B, attn="mha", mla=None),
        CacheConfig(sink_frames=0, window_frames=18, chunk_frames=3),
        description="Self-Forcing dense baseline (per-head K/V, 21-latent-frame cache)"),
}


def _dense_twin(p: Preset, name: str, description: str) -> Preset:
    """The same backbone and geometry with dense per-head K/V instead of MLA."""
    return replace(p, name=name, model=replace(p.model, attn="mha", mla=None), description=description)


# Small configs that run the same classes on a CPU in tests and benchmarks.
_TEST = Preset(
    "test-mla",
    ModelConfig(dim=64, n_heads=2, n_layers=2, ffn_dim=128, freq_dim=32, text_dim=32, latent_channels=4,
                latent_hw=(4, 4), mla=MLAConfig(d_c=24, d_q=32, d_nope=16, d_rope=16, rope_pairs=(4, 2, 2))),
    CacheConfig(sink_frames=1, window_frames=2, chunk_frames=2),
    SamplerConfig(steps=(1000, 500)), VideoConfig(height=32, width=32, fps=8, temporal_stride=1),
    text_len=8, description="tiny MLA config for tests")
# Size class of the embedded CPU model (final size settled by the embedded-model issue).
_SMALL = Preset(
    "small-mla",
    ModelConfig(dim=256, n_heads=4, n_layers=6, ffn_dim=1024, freq_dim=64, text_dim=384, latent_channels=16,
                latent_hw=(16, 16), mla=MLAConfig(d_c=64, d_q=128, d_nope=48, d_rope=16, rope_pairs=(4, 2, 2))),
    CacheConfig(sink_frames=1, window_frames=6, chunk_frames=3),
    # Undistilled flow model on 16x16 latents: shift 2 trains more low-noise levels than Wan's 5
    # (which is tuned for 60x104 latents), and the steps are not warped, so the last x0 prediction
    # is made from sigma 0.25 instead of 0.625 -- the difference between drawing objects or blur.
    # Euler steps (not re-noising) for the same reason: colour adherence 25 -> 59 % on 8 prompts.
    SamplerConfig(steps=(1000, 750, 500, 250), shift=2.0, warp=False, solver="euler"),
    video=VideoConfig(height=128, width=128, fps=16, temporal_stride=1),
    text_len=16, description="embedded-size MLA config")
for _p in (_TEST, _SMALL):
    PRESETS[_p.name] = _p
PRESETS["test-mha"] = _dense_twin(_TEST, "test-mha", "tiny dense twin of test-mla")
PRESETS["small-mha"] = _dense_twin(_SMALL, "small-mha", "embedded-size dense twin")


def get_preset(name: str) -> Preset:
    """Look a preset up by name, with a clear error listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(PRESETS))}") from None
