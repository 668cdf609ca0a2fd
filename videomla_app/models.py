"""Model registry: names users type, what they are, and how to build a pipeline for one.

Tiers: ``embedded`` models ship in ``assets/`` (trained by this project; added by the embedded-model
work), ``download`` models come from the Hugging Face hub (the full-model work), ``dev`` models are
the small presets with seeded random weights and toy encoders: untrained, for testing the app and
its tests without any download.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .config import CacheConfig, Preset, get_preset
from .encoders import ToyTextEncoder, ToyVAE
from .model import build_model
from .pipeline import StreamingPipeline

ASSETS = Path(__file__).resolve().parent.parent / "assets"


MANIFEST = ASSETS / "models.json"
ROLES = ("dit", "text_encoder", "tokenizer", "vae")


@dataclass(frozen=True)
class HubFile:
    """One file of a downloadable model on the Hugging Face hub; ``size``/``sha256`` None = unknown."""

    role: str  # one of ROLES
    repo: str
    filename: str  # path inside the repo
    revision: str = "main"
    size: int | None = None
    sha256: str | None = None
    approx_size: int | None = None  # display only
    component: str | None = None  # shared file group (the Wan pieces), None = the model's own file


@dataclass(frozen=True)
class ModelEntry:
    name: str
    preset: str
    tier: str  # "embedded" | "download" | "dev"
    description: str
    files: tuple[HubFile, ...] = ()  # download tier: own files first, then those of its components
    licence: str = ""
    min_gpu_gb: float | None = None
    components: tuple[str, ...] = ()


def load_manifest(path: Path | str | None = None) -> dict[str, ModelEntry]:
    """Read the model manifest: ``assets/models.json``, or the file ``VIDEOMLA_MANIFEST`` names (tests)."""
    path = Path(path or os.environ.get("VIDEOMLA_MANIFEST") or MANIFEST)
    data = json.loads(path.read_text())
    groups = data.get("components", {})
    entries: dict[str, ModelEntry] = {}
    for m in data["models"]:
        name = m["name"]
        if m["tier"] not in ("embedded", "download", "dev"):
            raise ValueError(f"{path}: {name}: unknown tier {m['tier']!r}")
        unknown = [c for c in m.get("components", []) if c not in groups]
        if unknown:
            raise ValueError(f"{path}: {name}: unknown component {unknown[0]!r}")
        files = [_hub_file(path, name, f, None) for f in m.get("files", [])]
        for c in m.get("components", []):
            files += [_hub_file(path, name, f, c) for f in groups[c]["files"]]
        for role in {f.role for f in files}:  # a role is one file, or one folder of one repo
            group = [f for f in files if f.role == role]
            if len({(f.repo, f.revision, f.filename.rpartition("/")[0]) for f in group}) > 1:
                raise ValueError(f"{path}: {name}: the files of role {role!r} must share one repo folder")
        entries[name] = ModelEntry(name, m["preset"], m["tier"], m["description"], tuple(files),
                                   m.get("licence", ""), m.get("min_gpu_gb"), tuple(m.get("components", [])))
    return entries


def _hub_file(path: Path, model: str, f: dict, component: str | None) -> HubFile:
    sha = f.get("sha256")
    if f["role"] not in ROLES or (sha is not None and not re.fullmatch(r"[0-9a-f]{64}", sha)):
        raise ValueError(f"{path}: {model}: bad file entry {f.get('filename')!r} (role or sha256)")
    return HubFile(f["role"], f["repo"], f["filename"], f.get("revision") or "main", f.get("size"), sha,
                   f.get("approx_size"), component)


REGISTRY: dict[str, ModelEntry] = load_manifest()


class ModelUnavailable(RuntimeError):
    """The model is known but cannot run here (weights missing, needs a GPU, ...)."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailable("--device cuda: no CUDA GPU is available (use --device cpu)")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}: use auto, cpu or cuda")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    return getattr(torch, dtype)


def step_list(n: int, what: str = "--steps") -> tuple[int, ...]:
    """n evenly spaced denoising steps from 1000 (4 -> 1000, 750, 500, 250 as in the paper)."""
    if not 1 <= n <= 50:
        raise ValueError(f"{what} must be between 1 and 50, got {n}")
    return tuple(round(1000 - 1000 * i / n) for i in range(n))


def check_timestep(t: float, n: int = 1000, what: str = "--warm-start", zero: str = " (off)") -> float:
    """A timestep in [0, n] (``what`` names it, ``zero`` says what 0 means; by default a user's
    ``--warm-start``), or a ValueError saying so."""
    if not (math.isfinite(t) and 0.0 <= t <= n):
        raise ValueError(f"{what} must be a timestep between 0{zero} and {n}, got {t:g}")
    return float(t)


def configure(preset: Preset, steps: int | None = None, window: int | None = None,
              sink: int | None = None, guidance: float | None = None, warm_start: float | None = None,
              context_noise: float | None = None, first_steps: int | None = None) -> Preset:
    """Apply overrides (denoising steps, the first chunk's, window and sink frames, guidance, warm
    start, and the cache-write noise a session was made with) to a preset."""
    sampler, cache = preset.sampler, preset.cache
    if context_noise is not None:
        t = check_timestep(context_noise, sampler.num_train_timesteps, "context noise", zero="")
        sampler = replace(sampler, context_noise=t)
    if steps is not None:
        sampler = replace(sampler, steps=step_list(steps))
    if first_steps is not None:
        sampler = replace(sampler, first_steps=step_list(first_steps, "--first-steps"))
    if guidance is not None:
        if not (math.isfinite(guidance) and 0.0 <= guidance <= 20.0):
            raise ValueError(f"--guidance must be between 0 and 20 (1 = off), got {guidance}")
        sampler = replace(sampler, guidance=float(guidance))
    if warm_start is not None:
        sampler = replace(sampler, warm_start=check_timestep(warm_start, sampler.num_train_timesteps))
    if window is not None or sink is not None:
        w = cache.window_frames if window is None else window
        s = cache.sink_frames if sink is None else sink
        if not 0 <= w <= 1000 or not 0 <= s <= 100:
            raise ValueError(f"window must be 0..1000 and sink 0..100 latent frames, got {w} and {s}")
        cache = CacheConfig(sink_frames=s, window_frames=w, chunk_frames=cache.chunk_frames)
    return replace(preset, sampler=sampler, cache=cache)


def get_entry(name: str) -> ModelEntry:
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(REGISTRY)} (see 'videomla models')")
    return REGISTRY[name]


def load_pipeline(name: str, *, device: str = "auto", dtype: str = "auto", steps: int | None = None,
                  window: int | None = None, sink: int | None = None, recache: bool = False,
                  allow_missing: bool = False, offload_text: bool = False,
                  guidance: float | None = None, warm_start: float | None = None,
                  context_noise: float | None = None, first_steps: int | None = None) -> StreamingPipeline:
    """Build the streaming pipeline for a registered model. ``allow_missing`` and ``offload_text``
    only concern downloaded models (partial checkpoint loads; umT5 kept on the CPU between encodes)."""
    entry = get_entry(name)
    preset = configure(get_preset(entry.preset), steps, window, sink, guidance, warm_start, context_noise,
                       first_steps)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if entry.tier == "download":
        from .hub import missing_files

        if missing_files(entry):
            raise ModelUnavailable(f"{name}: its weights are not downloaded: run 'videomla models download {name}'")
        from .full_model import load_full_pipeline
        from .hub import role_paths

        return load_full_pipeline(name, preset, role_paths(entry), dev, dt, recache=recache,
                                  allow_missing=allow_missing, offload_text=offload_text,
                                  explicit_device=device != "auto")
    if entry.tier == "dev":
        m = preset.model
        model = build_model(m, dev, dt, seed=0)
        return StreamingPipeline(preset, model, ToyTextEncoder(m.text_dim, preset.text_len),
                                 ToyVAE(m.latent_channels, preset.video.height // m.latent_hw[0]),
                                 device=dev, dtype=dt, recache=recache)
    if dtype == "auto":
        dt = torch.bfloat16  # trained with bf16 autocast; 1.4-3x faster than fp32 on AMX CPUs
    return _load_embedded(name, dev, dt, recache, steps, window, sink, guidance, warm_start, context_noise,
                          first_steps)


def assets_dir() -> Path:
    """Where embedded weights live (``VIDEOMLA_ASSETS`` overrides, for tests and custom builds)."""
    env = os.environ.get("VIDEOMLA_ASSETS")
    return Path(env) if env else ASSETS


def _load_embedded(name: str, dev: torch.device, dt: torch.dtype, recache: bool, steps: int | None,
                   window: int | None, sink: int | None, guidance: float | None,
                   warm_start: float | None, context_noise: float | None,
                   first_steps: int | None = None) -> StreamingPipeline:
    """An embedded model: DiT weights + the shared autoencoder from assets, MiniLM from its package."""
    folder = assets_dir() / name
    if not (folder / "model.safetensors").exists():
        raise ModelUnavailable(f"{name}: the embedded model's weights are not shipped in this build yet "
                               f"(try the app with an untrained model: --model small-mla)")
    from safetensors.torch import load as safetensors_load

    from .autoencoder import CausalVideoAE
    from .text_encoder import MiniLMTextEncoder

    spec = json.loads((folder / "model.json").read_text())
    p = get_preset(spec["preset"])
    # The trained weights' own sampler defaults (guidance, warm start, context noise) sit between the
    # preset and the user.
    tuned = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.get("sampler", {}).items()}
    # ... and so does their cache geometry: how many sink and window frames they were trained to read
    # (the chunk size is the preset's: the weights were trained on it).
    geometry = spec.get("cache", {})
    if not set(geometry) <= {"sink_frames", "window_frames"}:
        raise ModelUnavailable(f"{name}: model.json 'cache' may set sink_frames and window_frames, "
                               f"not {', '.join(sorted(set(geometry) - {'sink_frames', 'window_frames'}))}")
    if not all(isinstance(v, int) for v in geometry.values()):
        raise ModelUnavailable(f"{name}: model.json 'cache' frame counts must be whole numbers 0..1000 "
                               f"(sink 0..100), got {geometry}")
    # --window / --sink win; configure checks the values either way
    window = geometry.get("window_frames") if window is None else window
    sink = geometry.get("sink_frames") if sink is None else sink
    base = configure(replace(p, sampler=replace(p.sampler, **tuned)), steps, window, sink, guidance, warm_start,
                     context_noise, first_steps)
    model_cfg = replace(base.model, latent_channels=spec["latent_channels"], latent_hw=tuple(spec["latent_hw"]),
                        text_dim=spec["text_dim"])
    preset = replace(base, name=name, model=model_cfg, text_len=spec["text_len"])
    model = build_model(model_cfg, dev, dt)
    dit_bytes = (folder / "model.safetensors").read_bytes()
    missing, unexpected = model.load_state_dict(safetensors_load(dit_bytes), strict=False)
    if missing or unexpected:
        raise ModelUnavailable(f"{name}: weights do not match the model ({len(missing)} missing, "
                               f"{len(unexpected)} unexpected tensors)")
    ae = CausalVideoAE.load(folder.parent / spec["ae"], device=dev, dtype=dt)
    # The autoencoder decides how many video frames a latent frame makes (1, or 4 for a restrided one).
    preset = replace(preset, video=replace(preset.video, temporal_stride=ae.temporal_stride))
    if spec["text_encoder"] == "toy":  # test builds (the smoke recipe) train with the toy encoder
        text = ToyTextEncoder(spec["text_dim"], spec["text_len"])
    else:
        text = MiniLMTextEncoder(text_len=spec["text_len"], device=dev)
    pipe = StreamingPipeline(preset, model, text, ae, device=dev, dtype=dt, recache=recache)
    pipe.follows = spec.get("follows")
    ae_bytes = (folder.parent / spec["ae"]).read_bytes()
    pipe.weights_id = hashlib.sha256(hashlib.sha256(dit_bytes).digest() + ae_bytes).hexdigest()[:16]
    return pipe
