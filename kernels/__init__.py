"""Triton kernels for VideoMLA with fp32 PyTorch references (import name `videomla_kernels`).

Public API:
    mla_attention(q_lat, q_rope, c_kv, k_rope, scale, k_len=None, rope_cos=None, rope_sin=None)
        Triton absorbed-MLA attention forward -> o_lat [B, Nq, H, d_c].
    available() -> bool          the Triton kernel can run here (GPU, or interpreter in tests).
    triton_mode() -> str         "gpu" | "interpret" | "torch"; the app uses Triton only on "gpu".
    mla_attention_ref, mla_attention_rebuild_ref, rope_rotate_ref, absorb_query_ref,
    expand_output_ref            fp32 references and the rebuild (K/V + SDPA) comparison path.

Importing this package never requires triton; without it `available()` is False.
"""

from .mla_attention import available, mla_attention, split_latent_dim
from .reference import (
    absorb_query_ref,
    expand_output_ref,
    mla_attention_rebuild_ref,
    mla_attention_ref,
    rope_rotate_ref,
    triton_mode,
)

__all__ = [
    "mla_attention",
    "available",
    "triton_mode",
    "split_latent_dim",
    "mla_attention_ref",
    "mla_attention_rebuild_ref",
    "rope_rotate_ref",
    "absorb_query_ref",
    "expand_output_ref",
]
