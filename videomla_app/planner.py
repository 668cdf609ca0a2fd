"""Peak-memory plan of a run, made before anything is allocated, and a clear refusal when it won't fit.

A run holds, for its whole length: the DiT weights, the text encoder (unless it is offloaded to
the CPU after encoding), the VAE weights and its causal decoder state, the KV cache of the chosen
window and the current prompt's cross-attention K/V. On top of that comes the largest transient:
one DiT forward (inference, no grad: one block's working set at a time) or one VAE decode call,
which never overlap. Encoding a prompt is a separate, earlier phase: DiT + VAE + text encoder
weights + its activations. The peak is the larger phase plus a margin for the allocator's
fragmentation and caching.

Where each number comes from:

- DiT parameters: the model built on the ``meta`` device (true shapes, no memory);
- KV cache: :func:`budget.cache_budget` (the cache classes' own tensors on ``meta``);
- umT5-XXL encoder: closed form of its config (5,680,910,336 parameters; a test builds
  ``UMT5EncoderModel`` on ``meta`` and checks the count);
- Wan2.1 VAE: 126,892,531 parameters (``AutoencoderKLWan()`` on ``meta``; checked by a test when
  diffusers is installed); decoder state and decode working set per output pixel measured with a
  live-tensor tracker on the CPU (both are convolutional, so they scale with H x W);
- DiT activations: one block's working set from token counts (query chunk N, valid keys T):
  the FFN phase holds ~2 N ffn_dim values in the model dtype plus fp32 residual temporaries, the
  attention phase the rebuilt per-head K/V of the window (MLA ``naive``, the CUDA path) or the
  chunk's q/k/v (dense, whose cache is read in place); FlashAttention never materialises scores.
  A CPU tracker measured the FFN phase at 6.1 bytes per N x ffn_dim (bf16) against the formula's
  6.7 (the formula rounds up). Not yet checked on a GPU: ``scripts/gpu_check.py`` prints the
  measured peak beside this estimate.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field, replace

import torch

from .budget import cache_budget
from .config import PRESETS, ModelConfig, Preset
from .errors import RunError

# google/umt5-xxl, the encoder Wan2.1 uses (diffusers' text_encoder/config.json)
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                relative_attention_num_buckets=32, gated=True)
MINILM_PARAMS = 22_713_216  # all-MiniLM-L6-v2 (the embedded model's text encoder)
WAN21_VAE_PARAMS = 126_892_531  # AutoencoderKLWan() (Wan2.1 VAE): encoder, decoder and both 1x1 convs
# Wan2.1 VAE decode, per output pixel, in scalars of the VAE dtype (measured at 64x96, fp32):
WAN_VAE_STATE_SCALARS_PER_PIXEL = 2365  # causal feature cache kept between chunks (2 frames per conv)
WAN_VAE_DECODE_SCALARS_PER_PIXEL = 4508  # peak of new tensors during one latent frame's decode call
MARGIN_FRACTION = 0.08  # allocator fragmentation and cached blocks
MARGIN_MIN_BYTES = 256 * 2**20
TEXT_PLACEMENTS = ("gpu", "offload", "cpu")


def umt5_encoder_params(vocab_size: int, d_model: int, d_kv: int, d_ff: int, num_layers: int, num_heads: int,
                        relative_attention_num_buckets: int, gated: bool = True) -> int:
    """Parameters of a (U)MT5 encoder: embedding, per layer q/k/v/o + FFN + 2 norms + its own
    relative-position bias (umT5 has one per layer), final norm."""
    inner = num_heads * d_kv
    ffn = (3 if gated else 2) * d_model * d_ff
    layer = 4 * d_model * inner + ffn + 2 * d_model + relative_attention_num_buckets * num_heads
    return vocab_size * d_model + num_layers * layer + d_model


@functools.lru_cache(maxsize=32)
def dit_params(cfg: ModelConfig) -> int:
    """Parameters of the causal DiT, counted on the ``meta`` device (no memory, no init cost)."""
    from .model import CausalDiT

    with torch.device("meta"):
        model = CausalDiT(cfg)
    return sum(p.numel() for p in model.parameters())


def _elem(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


@dataclass(frozen=True)
class Plan:
    """Estimated peak device memory of a run, term by term (bytes)."""

    model: str
    device: str
    dtype: str
    batch: int
    text_encoder: str  # "umt5-xxl" | "minilm" | "toy"
    text_placement: str  # "gpu" (resident) | "offload" (on the device only to encode) | "cpu"
    vae: str  # "wan2.1" | "toy"
    window_frames: int
    sink_frames: int
    dit_params: int
    text_encoder_params: int
    vae_params: int
    dit_weights: int
    text_encoder_weights: int  # resident during generation (0 when offloaded or on the CPU)
    vae_weights: int
    vae_state: int  # causal decoder cache, kept between chunks
    kv_cache: int  # == budget.cache_budget(...).total_bytes
    dense_kv_cache: int  # a dense per-head K/V cache of the same window
    text_kv_cache: int  # cross-attention K/V of one prompt, all layers
    dit_activations: int  # one forward: max(FFN phase, attention phase) over a block
    attention_workspace: int  # the attention phase alone (informative; inside dit_activations)
    vae_decode: int  # one decode call's new tensors (never overlaps a DiT forward)
    encode_phase: int  # peak while encoding a prompt
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def transient(self) -> int:
        return max(self.dit_activations, self.vae_decode)

    def breakdown(self) -> dict[str, int]:
        """Terms of the generation phase; they add up to :attr:`generate_phase`."""
        return {"dit_weights": self.dit_weights, "text_encoder_weights": self.text_encoder_weights,
                "vae_weights": self.vae_weights, "vae_state": self.vae_state, "kv_cache": self.kv_cache,
                "text_kv_cache": self.text_kv_cache, "activations": self.transient}

    @property
    def generate_phase(self) -> int:
        return sum(self.breakdown().values())

    @property
    def margin(self) -> int:
        return max(MARGIN_MIN_BYTES, int(MARGIN_FRACTION * max(self.generate_phase, self.encode_phase)))

    @property
    def peak(self) -> int:
        return max(self.generate_phase, self.encode_phase) + self.margin

    def as_dict(self) -> dict:
        d = asdict(self)
        d["notes"] = list(self.notes)
        d.update(breakdown=self.breakdown(), generate_phase=self.generate_phase, margin=self.margin,
                 peak_bytes=self.peak)
        return d


def _dit_activations(m: ModelConfig, n_query: int, n_keys: int, elem: int) -> tuple[int, int]:
    """(one block's peak working set, its attention phase) for one sample, in bytes."""
    D, F, H = m.dim, m.ffn_dim, m.n_heads
    base = n_query * D * (2 * elem + 3 * 4)  # x, normed x, fp32 modulation/residual temporaries
    ffn = n_query * F * 2 * elem  # linear output + GELU output
    if m.attn == "mla":
        assert m.mla is not None
        rebuilt = n_keys * (2 * D + H * m.mla.d_nope) * elem  # per-head K, V and the K-NoPE temp
        attn = rebuilt + n_query * (6 * D + m.mla.d_q + m.mla.d_c + m.mla.d_rope) * elem
    else:
        attn = n_query * 8 * D * elem  # q, k, v (+ rotated copies), SDPA output, projection
    return base + max(ffn, attn), attn


def _text_encoder(preset: Preset, name: str) -> tuple[str, int]:
    if name == "auto":
        name = {4096: "umt5-xxl", 384: "minilm"}.get(preset.model.text_dim, "toy")
    params = {"umt5-xxl": umt5_encoder_params(**UMT5_XXL), "minilm": MINILM_PARAMS, "toy": 0}
    if name not in params:
        raise ValueError(f"unknown text encoder {name!r}; known: {', '.join(params)}")
    return name, params[name]


def _umt5_activations(text_len: int, elem: int) -> int:
    c = UMT5_XXL
    per_token = (3 * c["d_ff"] + 6 * c["d_model"]) * elem
    return text_len * per_token + 2 * c["num_heads"] * text_len**2 * 4  # scores + position bias, fp32


def plan_memory(preset: Preset, *, batch: int = 1, dtype: torch.dtype = torch.bfloat16, device: str = "cuda",
                text_encoder: str = "auto", text_placement: str = "gpu", vae: str = "auto") -> Plan:
    """Estimate the peak memory of generating with ``preset`` (window, sink, chunk as configured)."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if text_placement not in TEXT_PLACEMENTS:
        raise ValueError(f"text_placement must be one of {TEXT_PLACEMENTS}, got {text_placement!r}")
    m, e = preset.model, _elem(dtype)
    b = cache_budget(preset, dtype, batch=batch)
    te_name, te_params = _text_encoder(preset, text_encoder)
    if vae == "auto":
        vae = "wan2.1" if (m.latent_channels, preset.video.temporal_stride) == (16, 4) else "toy"
    if vae not in ("wan2.1", "toy"):
        raise ValueError(f"unknown VAE {vae!r}; known: wan2.1, toy")
    vae_params = WAN21_VAE_PARAMS if vae == "wan2.1" else 0
    pixels = preset.video.height * preset.video.width
    vae_state = WAN_VAE_STATE_SCALARS_PER_PIXEL * pixels * e if vae == "wan2.1" else 0
    vae_decode = WAN_VAE_DECODE_SCALARS_PER_PIXEL * pixels * e if vae == "wan2.1" else 0
    te_elem = _elem(torch.float32) if te_name == "minilm" else e  # MiniLM runs in fp32
    te_weights = te_params * te_elem
    n_query = preset.cache.chunk_frames * m.tokens_per_frame
    act, attn = _dit_activations(m, n_query, b.cache_tokens, e)
    dit_w, vae_w = dit_params(m) * e, vae_params * e
    te_act = _umt5_activations(preset.text_len, e) if te_name == "umt5-xxl" else 0
    encode = 0 if text_placement == "cpu" else dit_w + vae_w + te_weights + te_act
    notes = []
    if te_name == "toy" or vae == "toy":
        notes.append("toy encoders (dev models) are not counted")
    return Plan(
        model=preset.name, device=device, dtype=str(dtype).replace("torch.", ""), batch=batch,
        text_encoder=te_name, text_placement=text_placement, vae=vae,
        window_frames=preset.cache.window_frames, sink_frames=preset.cache.sink_frames,
        dit_params=dit_params(m), text_encoder_params=te_params, vae_params=vae_params,
        dit_weights=dit_w, text_encoder_weights=te_weights if text_placement == "gpu" else 0,
        vae_weights=vae_w, vae_state=vae_state, kv_cache=b.total_bytes, dense_kv_cache=b.dense_total_bytes,
        text_kv_cache=2 * m.n_layers * batch * preset.text_len * m.dim * e,
        dit_activations=batch * act, attention_workspace=batch * attn, vae_decode=vae_decode,
        encode_phase=encode, notes=tuple(notes))


def replan(plan: Plan, preset: Preset, **changes) -> Plan:
    """The same plan with some of its choices changed (batch, text_placement, window...)."""
    window = changes.pop("window", None)
    if window is not None:
        preset = replace(preset, cache=replace(preset.cache, window_frames=window))
    kw = dict(batch=plan.batch, dtype=getattr(torch, plan.dtype), device=plan.device,
              text_encoder=plan.text_encoder, text_placement=plan.text_placement, vae=plan.vae)
    kw.update(changes)
    return plan_memory(preset, **kw)


def free_bytes(device: torch.device | str) -> int:
    """Memory a run could still take on ``device``: the CUDA driver's free memory, or available RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def suggestions(plan: Plan, preset: Preset, free: int) -> list[str]:
    """What would make the run fit, most specific first."""
    from .memory import fmt_bytes

    out = []
    if plan.text_placement != "cpu" and plan.text_encoder_params:
        off = replan(plan, preset, text_placement="offload")
        cpu = replan(plan, preset, text_placement="cpu")
        if plan.text_placement == "gpu" and off.peak <= free:
            out.append(f"offload the text encoder to the CPU after encoding (needs {fmt_bytes(off.peak)})")
        elif cpu.peak < plan.peak:
            out.append(f"run the text encoder on the CPU (needs {fmt_bytes(cpu.peak)})")
    for w in range(preset.cache.window_frames - 1, -1, -1):
        if replan(plan, preset, window=w).peak <= free:
            small = replan(plan, preset, window=w).kv_cache
            out.append(f"a smaller window: --window {w} (cache {fmt_bytes(small)} instead of "
                       f"{fmt_bytes(plan.kv_cache)})")
            break
    if preset.model.attn == "mha":
        twin = next((p for p in PRESETS.values() if p.model.attn == "mla" and p.model.dim == preset.model.dim
                     and p.model.n_layers == preset.model.n_layers), None)
        if twin is not None:
            mla = replan(plan, twin)
            out.append(f"the MLA model --model {twin.name} (cache {fmt_bytes(mla.kv_cache)} instead of "
                       f"{fmt_bytes(plan.kv_cache)}, needs {fmt_bytes(mla.peak)})")
    if plan.batch > 1:
        fits = [b for b in range(plan.batch - 1, 0, -1) if replan(plan, preset, batch=b).peak <= free]
        if fits:
            out.append(f"a smaller batch: {fits[0]}")
    if plan.device != "cpu":
        out.append("--device cpu (slow)")
    return out


def check_fits(plan: Plan, free: int, preset: Preset | None = None) -> None:
    """Raise :class:`RunError` with the estimate and suggestions when ``plan.peak`` exceeds ``free``."""
    if plan.peak <= free:
        return
    from .memory import fmt_bytes

    preset = preset or PRESETS.get(plan.model)
    terms = ", ".join(f"{k.replace('_', ' ')} {fmt_bytes(v)}" for k, v in plan.breakdown().items() if v)
    if plan.encode_phase > plan.generate_phase:
        terms += f"; encoding the prompt takes {fmt_bytes(plan.encode_phase)}"
    tips = suggestions(plan, preset, free) if preset is not None else []
    raise RunError(f"{plan.model} needs about {fmt_bytes(plan.peak)} on {plan.device} ({terms}, margin "
                   f"{fmt_bytes(plan.margin)}) but only {fmt_bytes(free)} is free"
                   + (f". Try: {'; '.join(tips)}" if tips else ""))


def preflight(preset: Preset, device: torch.device | str, dtype: torch.dtype, *, batch: int = 1,
              text_placement: str = "gpu") -> Plan:
    """Plan a run and refuse it (``RunError``) when it will not fit in the device's free memory.

    Only CUDA devices are checked: the CPU has swap and an OOM there is the OS's call.
    """
    device = torch.device(device)
    plan = plan_memory(preset, batch=batch, dtype=dtype, device=str(device), text_placement=text_placement)
    if device.type == "cuda":
        check_fits(plan, free_bytes(device), preset)
    return plan


def max_batch(preset: Preset, free: int, **kw) -> int:
    """Largest batch whose plan fits in ``free`` bytes (0 if even one does not)."""
    lo, hi = 0, 1
    while plan_memory(preset, batch=hi, **kw).peak <= free and hi < 1 << 16:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if plan_memory(preset, batch=mid, **kw).peak <= free else (lo, mid)
    return lo


def info_summary(preset: Preset, dtype: torch.dtype = torch.bfloat16) -> tuple[dict, list[tuple[str, str]]]:
    """What ``videomla info`` shows: the GPU plan at batch 1 as JSON, and (label, value) table rows."""
    from .memory import fmt_bytes

    plan = plan_memory(preset, dtype=dtype)
    off = replan(plan, preset, text_placement="offload")
    d = plan.as_dict()
    d["peak_bytes_text_offloaded"] = off.peak
    def params(n: int) -> str:
        return f"{n / 1e9:.2f} B" if n >= 10**8 else f"{n / 1e6:.2f} M"

    rows = [(f"DiT weights ({params(plan.dit_params)} params, {plan.dtype})",
             fmt_bytes(plan.dit_weights)),
            (f"text encoder {plan.text_encoder} ({params(plan.text_encoder_params)} params)",
             fmt_bytes(plan.text_encoder_weights)),
            (f"VAE {plan.vae}: weights + decoder state", fmt_bytes(plan.vae_weights + plan.vae_state)),
            ("KV cache (window above) + prompt K/V", fmt_bytes(plan.kv_cache + plan.text_kv_cache)),
            ("activations: max(one DiT forward, one VAE decode)", fmt_bytes(plan.transient)),
            ("allocator margin", fmt_bytes(plan.margin)),
            ("peak, text encoder kept on the GPU", fmt_bytes(plan.peak)),
            ("peak, text encoder offloaded after encoding", fmt_bytes(off.peak))]
    return d, rows


__all__ = ["Plan", "check_fits", "dit_params", "free_bytes", "info_summary", "max_batch", "plan_memory",
           "preflight", "replan", "suggestions", "umt5_encoder_params"]
