"""Rolling KV caches: sink slots plus a ring-buffer window, allocated once and written in place.

Slot layout (in latent frames, each frame = ``tokens_per_frame`` token slots)::

    [ sink 0 .. S-1 | ring 0 .. R-1 ]      R = window_frames + chunk_frames

Frame ``f`` lives in sink slot ``f`` if ``f < S``, else in ring slot ``(f - origin) mod R``. The chunk
being generated is written into the ring slots of the frames that just left the window, *before*
attention, so a forward pass reads one contiguous prefix of the buffer — the sink, the window and
the chunk itself — with no concatenation and no data movement when the window slides. Because
frames fill the ring in order and R = window + chunk, the valid slots are always a prefix.

The latent cache (VideoMLA) stores per token ``c_kv`` (d_c) and the *unrotated* positional key
``k_rope`` (d_rope); RoPE is applied on read with window-local positions (PAPER §4.8). The dense
cache (Self-Forcing) stores per-head K (already rotated, absolute positions) and V.

All bookkeeping (which frame is in which slot) is plain Python on the host: the hot path never
synchronises with the device.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import CacheConfig, ModelConfig
from .rope import window_local_frames


@dataclass(frozen=True)
class CacheStep:
    """What one forward pass over frames [f0, f0 + n) reads and writes (shared by all layers)."""

    f0: int
    n: int
    n_valid: int  # valid key tokens: a prefix of the buffer (sink + window + this chunk)
    writes: tuple[tuple[int, int, int], ...]  # (dst token slot, src token in chunk, n tokens)
    key_frames: tuple[int, ...]  # absolute frame index held by each valid frame slot, in slot order
    key_local: tuple[int, ...]  # window-local temporal index of each valid frame slot
    query_local: tuple[int, ...]  # window-local temporal index of each chunk frame


class RollingKVCache:
    """Common slot bookkeeping for the latent and dense caches; subclasses own the tensors."""

    names: tuple[str, ...] = ()

    def __init__(self, model: ModelConfig, cache: CacheConfig, batch: int = 1,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.model_cfg, self.cfg = model, cache
        self.batch, self.device, self.dtype = batch, torch.device(device), dtype
        self.P = model.tokens_per_frame
        self.S, self.W, self.C = cache.sink_frames, cache.window_frames, cache.chunk_frames
        self.R = self.W + self.C
        self.capacity_tokens = (self.S + self.R) * self.P
        self.tensors: dict[str, torch.Tensor] = self._allocate()
        self.reset()

    # -- geometry ---------------------------------------------------------------------------
    def _allocate(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget all frames (tensors are kept; stale slots are never read)."""
        self.committed = 0  # frames [0, committed) are in the cache, clean
        self.origin = self.S  # ring slot 0 holds frame `origin` (+ k*R)

    def _slot(self, f: int) -> int:
        return f if f < self.S else self.S + (f - self.origin) % self.R

    def plan(self, f0: int, n: int) -> CacheStep:
        """Plan a forward over frames [f0, f0 + n): where they are written, what is read."""
        if f0 != self.committed:
            raise ValueError(f"frames must be generated in order: expected {self.committed}, got {f0}")
        if not 1 <= n <= self.C:
            raise ValueError(f"a forward covers 1..{self.C} frames, got {n}")
        f_end = f0 + n
        sink = list(range(min(self.S, f_end)))
        ring_first = max(self.origin, f_end - self.R)
        ring = list(range(ring_first, f_end)) if f_end > self.S else []
        by_slot = sorted(sink + ring, key=self._slot)
        assert [self._slot(f) for f in by_slot] == list(range(len(by_slot))), "cache slots not a prefix"
        writes = self._coalesce([(self._slot(f) * self.P, (f - f0) * self.P) for f in range(f0, f_end)])
        local = dict(zip(sink + ring, window_local_frames(sink + ring, self.S, ring_first)))
        return CacheStep(f0, n, len(by_slot) * self.P, writes, tuple(by_slot),
                         tuple(local[f] for f in by_slot), tuple(local[f] for f in range(f0, f_end)))

    def _coalesce(self, starts: list[tuple[int, int]]) -> tuple[tuple[int, int, int], ...]:
        pieces: list[list[int]] = []
        for dst, src in starts:
            if pieces and pieces[-1][0] + pieces[-1][2] == dst and pieces[-1][1] + pieces[-1][2] == src:
                pieces[-1][2] += self.P
            else:
                pieces.append([dst, src, self.P])
        return tuple(tuple(p) for p in pieces)  # type: ignore[misc]

    def commit(self, step: CacheStep) -> None:
        """Mark the chunk's frames as clean context (call after the cache-write pass)."""
        self.committed = step.f0 + step.n

    def rebase(self, first_kept: int) -> None:
        """Restart the ring at frame ``first_kept`` (used to replay the window under a new prompt)."""
        self.committed = first_kept
        self.origin = max(first_kept, self.S)

    # -- per-layer access --------------------------------------------------------------------
    def write(self, layer: int, step: CacheStep, **chunk: torch.Tensor) -> None:
        """Write the chunk's per-token tensors ([B, n*P, ...]) into their slots, in place."""
        for name in self.names:
            buf, src = self.tensors[name][layer], chunk[name]
            for dst, s, n in step.writes:
                buf[:, dst:dst + n].copy_(src[:, s:s + n])

    def read(self, layer: int, step: CacheStep) -> dict[str, torch.Tensor]:
        """Views of the valid prefix (sink + window + chunk) of every tensor of ``layer``."""
        return {name: self.tensors[name][layer, :, :step.n_valid] for name in self.names}

    # -- accounting ---------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes held by the cache tensors (all layers, all slots)."""
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def bytes_per_token_per_layer(self) -> int:
        return sum(t[0, 0, 0].numel() * t.element_size() for t in self.tensors.values())

    @property
    def scalars_per_token_per_layer(self) -> int:
        return sum(t[0, 0, 0].numel() for t in self.tensors.values())

    def dense_equivalent_bytes(self) -> int:
        """Bytes a dense per-head K/V cache of the same geometry and dtype would hold."""
        m = self.model_cfg
        return m.n_layers * self.batch * self.capacity_tokens * 2 * m.dim * self.tensors[self.names[0]].element_size()

    def per_layer_bytes(self) -> list[int]:
        return [sum(t[i].nbytes for t in self.tensors.values()) for i in range(self.model_cfg.n_layers)]

    # -- persistence --------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        meta = {"kind": type(self).__name__, "committed": str(self.committed), "origin": str(self.origin),
                "geometry": json.dumps([self.S, self.W, self.C, self.P, self.batch])}
        return {k: v.detach().cpu().contiguous() for k, v in self.tensors.items()}, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
        if meta.get("kind") != type(self).__name__:
            raise ValueError(f"cache state is a {meta.get('kind')}, not a {type(self).__name__}")
        if json.loads(meta["geometry"]) != [self.S, self.W, self.C, self.P, self.batch]:
            raise ValueError("cache state has a different geometry (sink/window/chunk/tokens/batch)")
        for name in self.names:
            if tensors[name].shape != self.tensors[name].shape:
                raise ValueError(f"cache tensor {name}: shape {tuple(tensors[name].shape)} != "
                                 f"{tuple(self.tensors[name].shape)}")
            self.tensors[name].copy_(tensors[name])
        self.committed, self.origin = int(meta["committed"]), int(meta["origin"])

    def save(self, path: str | Path) -> None:
        tensors, meta = self.state_dict()
        save_file(tensors, str(path), metadata=meta)

    def load(self, path: str | Path) -> None:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        self.load_state_dict(load_file(str(path)), meta)


class LatentKVCache(RollingKVCache):
    """VideoMLA cache: per layer ``c_kv [B, T, d_c]`` and unrotated ``k_rope [B, T, d_rope]``."""

    names = ("c_kv", "k_rope")

    def _allocate(self) -> dict[str, torch.Tensor]:
        mla = self.model_cfg.mla
        assert mla is not None, "LatentKVCache needs an MLA model config"
        L, B, T = self.model_cfg.n_layers, self.batch, self.capacity_tokens
        kw = dict(device=self.device, dtype=self.dtype)
        return {"c_kv": torch.zeros(L, B, T, mla.d_c, **kw),  # [L, B, T, d_c]
                "k_rope": torch.zeros(L, B, T, mla.d_rope, **kw)}  # [L, B, T, d_rope]


class DenseKVCache(RollingKVCache):
    """Dense MHA cache (Self-Forcing): per layer rotated ``k`` and ``v`` [B, T, H, D]."""

    names = ("k", "v")

    def _allocate(self) -> dict[str, torch.Tensor]:
        m = self.model_cfg
        shape = (m.n_layers, self.batch, self.capacity_tokens, m.n_heads, m.head_dim)
        kw = dict(device=self.device, dtype=self.dtype)
        return {"k": torch.zeros(shape, **kw), "v": torch.zeros(shape, **kw)}  # [L, B, T, H, D]


def make_cache(model: ModelConfig, cache: CacheConfig, batch: int = 1,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> RollingKVCache:
    """The cache class that matches the model's attention kind."""
    cls = LatentKVCache if model.attn == "mla" else DenseKVCache
    return cls(model, cache, batch, device, dtype)


class TextKVCache:
    """Per-layer cross-attention K/V of the current prompt: computed once, reused every step."""

    def __init__(self) -> None:
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.key: object = None  # identifies the prompt the K/V belong to

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.kv)
