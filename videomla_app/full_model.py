"""Build the streaming pipeline of a downloaded (full-size) model: the DiT checkpoint through the safe
loader, the Wan VAE and umT5 text encoder through diffusers/transformers, after the memory planner
has said the run fits.

Kept apart from ``models.py`` because it is the only place that needs the optional ``[wan]`` extra:
the embedded and dev models must keep working on an install without it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from .config import Preset
from .errors import RunError
from .model import build_model
from .pipeline import StreamingPipeline


def check_geometry(preset: Preset, vae, text_dim: int) -> None:
    """The checkpoint's config must agree with the VAE and text encoder it is paired with: a silent
    mismatch would produce noise, so say which number disagrees."""
    m = preset.model
    problems = []
    if vae.latent_channels != m.latent_channels:
        problems.append(f"VAE latent channels {vae.latent_channels} vs model {m.latent_channels}")
    if vae.temporal_stride != preset.video.temporal_stride or vae.spatial_stride != preset.video.spatial_stride:
        problems.append(f"VAE strides {vae.temporal_stride}x{vae.spatial_stride} vs preset "
                        f"{preset.video.temporal_stride}x{preset.video.spatial_stride}")
    if text_dim != m.text_dim:
        problems.append(f"text encoder width {text_dim} vs model {m.text_dim}")
    if problems:
        raise RunError(f"{preset.name}: the downloaded pieces do not fit the model: " + "; ".join(problems))


def load_full_pipeline(name: str, preset: Preset, paths: dict[str, Path], dev: torch.device, dt: torch.dtype, *,
                       recache: bool = False, allow_missing: bool = False, offload_text: bool = False,
                       explicit_device: bool = False) -> StreamingPipeline:
    """``paths``: role -> local path from :func:`hub.role_paths` (``dit`` file; ``text_encoder``,
    ``tokenizer``, ``vae`` folders of one diffusers snapshot)."""
    if dev.type != "cuda" and not explicit_device:
        raise RunError(f"{name} needs a CUDA GPU and none is available; on this machine use the embedded "
                       f"model (--model tiny), or force the CPU with --device cpu (very slow)")
    try:
        from .wan_text import WanTextEncoder
        from .wan_vae import WanVAE
    except ImportError as e:
        raise RunError(f"{name} needs the Wan extra: pip install 'videomla[wan]' ({e})") from None
    from .checkpoint import load_dit_weights
    from .planner import preflight

    preflight(preset, dev, dt, text_placement="offload" if offload_text else "gpu")
    if allow_missing:  # tensors the checkpoint lacks keep a real (random) initialisation
        model = build_model(preset.model, dev, dt, seed=0)
    else:  # every tensor is filled by the checkpoint: skip initialising 1.3B parameters
        with torch.device("meta"):
            model = build_model(preset.model, "meta")
        model = model.to_empty(device=dev).to(dt)
    load_dit_weights(model, paths["dit"], allow_missing=allow_missing, model_name=name)
    model.eval()
    vae = WanVAE.from_pretrained(paths["vae"], subfolder=None, device=dev, dtype=dt)
    text = WanTextEncoder.from_pretrained(paths["text_encoder"].parent, text_encoder_subfolder=paths["text_encoder"].name,
                                          tokenizer_subfolder=paths["tokenizer"].name, device=dev, dtype=dt,
                                          text_len=preset.text_len, offload=offload_text)
    check_geometry(preset, vae, text.model.config.d_model)
    return StreamingPipeline(replace(preset, name=name), model, text, vae, device=dev, dtype=dt, recache=recache)
