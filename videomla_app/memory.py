"""Memory readouts taken from the objects that hold the memory, never from formulas alone.

Cache numbers come from the cache's real tensors (``nbytes``); the dense-MHA equivalent is what a
per-head K/V cache of the same geometry and dtype would hold; process numbers come from the OS
(RSS) and the CUDA allocator.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import psutil
import torch

from .cache import RollingKVCache, TextKVCache


def rss_bytes() -> int:
    return psutil.Process().memory_info().rss


@dataclass(frozen=True)
class MemoryReadout:
    cache_bytes: int  # self-attention KV cache, all layers (real tensors)
    dense_equivalent_bytes: int  # dense per-head K/V cache of the same window and dtype
    text_cache_bytes: int  # cross-attention K/V of the current prompt
    per_layer_bytes: tuple[int, ...]
    rss_bytes: int
    cuda_allocated_bytes: int | None = None
    cuda_peak_bytes: int | None = None

    @property
    def reduction(self) -> float:
        """Fraction of the dense cache saved (0.927 for the paper's model)."""
        return 1.0 - self.cache_bytes / self.dense_equivalent_bytes if self.dense_equivalent_bytes else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["per_layer_bytes"] = list(self.per_layer_bytes)
        d["reduction"] = self.reduction
        return d


def read_memory(cache: RollingKVCache, text: TextKVCache | None = None) -> MemoryReadout:
    cuda = cache.device.type == "cuda" and torch.cuda.is_available()
    return MemoryReadout(
        cache_bytes=cache.nbytes,
        dense_equivalent_bytes=cache.dense_equivalent_bytes(),
        text_cache_bytes=text.nbytes if text is not None else 0,
        per_layer_bytes=tuple(cache.per_layer_bytes()),
        rss_bytes=rss_bytes(),
        cuda_allocated_bytes=torch.cuda.memory_allocated(cache.device) if cuda else None,
        cuda_peak_bytes=torch.cuda.max_memory_allocated(cache.device) if cuda else None,
    )


def fmt_bytes(n: float) -> str:
    """Human-readable bytes in powers of 1000 (GB as in the paper's 6.04 GB)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"
