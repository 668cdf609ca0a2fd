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
