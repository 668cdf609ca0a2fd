"""Cache budget of a model, read from really allocated cache tensors.

The tensors are allocated with the real cache classes on the ``meta`` device by default: they have
the true shapes, dtypes and ``nbytes`` but take no memory, so ``videomla info`` can report the
6 GB Self-Forcing cache on a laptop. Pass ``device="cpu"`` to allocate them for real (tests check
that both give the same numbers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .cache import make_cache
from .config import Preset


@dataclass(frozen=True)
class CacheBudget:
    model: str
    attn: str
    dtype: str
    layers: int
    tokens_per_frame: int
    sink_frames: int
    window_frames: int
    chunk_frames: int
    cache_frames: int
    cache_tokens: int
    scalars_per_token_per_layer: int
    dense_scalars_per_token_per_layer: int
    bytes_per_token_per_layer: int
    dense_bytes_per_token_per_layer: int
    window_bytes_per_layer: int
    total_bytes: int
    dense_total_bytes: int

    @property
    def reduction(self) -> float:
        return 1.0 - self.total_bytes / self.dense_total_bytes

    def as_dict(self) -> dict:
        d = asdict(self)
        d["reduction"] = round(self.reduction, 6)
        d["compression"] = round(self.dense_total_bytes / self.total_bytes, 4)
        return d


def cache_budget(preset: Preset, dtype: torch.dtype = torch.bfloat16, batch: int = 1,
                 device: str = "meta") -> CacheBudget:
    m, c = preset.model, preset.cache
    cache = make_cache(m, c, batch=batch, device=device, dtype=dtype)
    elem = torch.empty((), dtype=dtype).element_size()
    return CacheBudget(
        model=preset.name, attn=m.attn, dtype=str(dtype).replace("torch.", ""), layers=m.n_layers,
        tokens_per_frame=m.tokens_per_frame, sink_frames=c.sink_frames, window_frames=c.window_frames,
        chunk_frames=c.chunk_frames, cache_frames=c.capacity_frames, cache_tokens=cache.capacity_tokens,
        scalars_per_token_per_layer=cache.scalars_per_token_per_layer,
        dense_scalars_per_token_per_layer=2 * m.dim,
        bytes_per_token_per_layer=cache.bytes_per_token_per_layer,
        dense_bytes_per_token_per_layer=2 * m.dim * elem,
        window_bytes_per_layer=cache.per_layer_bytes()[0],
        total_bytes=cache.nbytes, dense_total_bytes=cache.dense_equivalent_bytes(),
    )
