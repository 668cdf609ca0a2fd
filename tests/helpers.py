"""Small builders shared by the tests (tiny configs, toy encoders)."""

from __future__ import annotations

import torch

from videomla_app.config import get_preset
from videomla_app.encoders import ToyTextEncoder, ToyVAE
from videomla_app.model import build_model
from videomla_app.pipeline import StreamingPipeline


def tiny_pipeline(name: str = "test-mla", seed: int = 0, recache: bool = False,
                  dtype: torch.dtype = torch.float32, **preset_changes) -> StreamingPipeline:
    p = get_preset(name)
    if preset_changes:
        p = p.with_(**preset_changes)
    model = build_model(p.model, dtype=dtype, seed=seed)
    return StreamingPipeline(p, model, ToyTextEncoder(p.model.text_dim, p.text_len),
                             ToyVAE(p.model.latent_channels, 8), dtype=dtype, recache=recache)


def toy_flow_clip(step: int, preset: str = "test-mla") -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable toy task for the flow loss: latents [2, 6, C, h, w] that are a per-clip constant
    colour plus a ramp, and random token states [2, L, D]; four distinct clips, cycled by step."""
    from videomla_app.train.loop import step_generator

    p = get_preset(preset)
    g = step_generator(123, step % 4)
    base = torch.randn(2, 1, p.model.latent_channels, 1, 1, generator=g)
    ramp = torch.linspace(-1, 1, p.model.latent_hw[1]).view(1, 1, 1, 1, -1)
    x0 = (base + 0.5 * ramp).expand(2, 6, -1, *p.model.latent_hw).contiguous()
    text = torch.randn(2, p.text_len, p.model.text_dim, generator=g)
    return x0, text
