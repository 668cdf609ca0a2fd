"""fp32 PyTorch references for the VideoMLA kernels, and the "rebuild" comparison path.

Every Triton kernel in this package is tested against a function here (STYLE_AND_PERF §1.3 habit 2).
The references favour obviousness over speed: explicit softmax in fp32, no fused tricks. The one
exception is `mla_attention_rebuild_ref`, which is the fast *alternative* to the absorbed kernel
(rebuild per-head K/V from the latent, then SDPA) and runs in the input dtype so the benchmark can
time it fairly.

Notation (paper §3, App. E): c_kv [B, Nk, d_c] is the shared content latent, k_rope [B, Nk, d_r] the
shared *unrotated* positional key, q_lat [B, Nq, H, d_c] the absorbed query (q_nope · W_uk per head),
q_rope [B, Nq, H, d_r] the already-rotated positional query.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

__all__ = [
    "triton_mode",
    "rope_rotate_ref",
    "absorb_query_ref",
    "expand_output_ref",
    "mla_attention_ref",
    "mla_attention_rebuild_ref",
]


def triton_mode() -> str:
    """Where Triton kernels can run in this process: "gpu", "interpret" or "torch".

    "interpret" when TRITON_INTERPRET=1 (kernels run on CPU tensors through Triton's interpreter:
    tests only, ~1000x slower than torch); "gpu" when Triton finds an active GPU driver; "torch"
    otherwise, including when triton is not installed. The app dispatches to Triton only on "gpu".
    """
    try:
        import triton
    except ImportError:
        return "torch"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "interpret"
    try:
        triton.runtime.driver.active.get_current_target()  # raises "0 active drivers" without a GPU
        return "gpu"
    except Exception:
        return "torch"


def rope_rotate_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs (2i, 2i+1) of `x` by the angles behind `cos`/`sin`.

    x: [..., N, d_r]; cos, sin: [N, d_r // 2] (one row per token position, broadcast over leading dims).
    out[2i] = x[2i]·cos[i] − x[2i+1]·sin[i];  out[2i+1] = x[2i]·sin[i] + x[2i+1]·cos[i].
    Computed in fp32 (positions reach ~1e5 tokens, too coarse for bf16 angles); returned in x.dtype.
    """
    xf = x.float()
    x_even, x_odd = xf[..., 0::2], xf[..., 1::2]  # [..., N, d_r/2] each
    c, s = cos.float(), sin.float()
    out = torch.stack((x_even * c - x_odd * s, x_even * s + x_odd * c), dim=-1)  # [..., N, d_r/2, 2]
    return out.flatten(-2).to(x.dtype)


def absorb_query_ref(q_nope: torch.Tensor, w_uk: torch.Tensor) -> torch.Tensor:
    """Absorb the key up-projection into the query (paper Eq. 8–9): q_lat[h] = W_uk[h]ᵀ · q_nope[h].

    q_nope: [B, Nq, H, d_nope]; w_uk: [H, d_nope, d_c] (k_nope[h] = W_uk[h] · c_kv) → [B, Nq, H, d_c].
    """
    return torch.einsum("bqhn,hnc->bqhc", q_nope, w_uk)


def expand_output_ref(o_lat: torch.Tensor, w_uv: torch.Tensor) -> torch.Tensor:
    """Apply the value up-projection after latent attention (paper Eq. 10–11): o[h] = W_uv[h] · o_lat[h].

    o_lat: [B, Nq, H, d_c]; w_uv: [H, d_v, d_c] → [B, Nq, H, d_v].
    """
    return torch.einsum("bqhc,hvc->bqhv", o_lat, w_uv)


def _window(c_kv, k_rope, k_len, rope_cos, rope_sin):
    """The valid key prefix [:k_len], with k_rope rotated when tables are given (RoPE on read)."""
    k_len = c_kv.shape[1] if k_len is None else int(k_len)
    c_kv, k_rope = c_kv[:, :k_len], k_rope[:, :k_len]  # [B, k_len, d_c], [B, k_len, d_r]
    if rope_cos is not None:
        k_rope = rope_rotate_ref(k_rope, rope_cos[:k_len], rope_sin[:k_len])
    return c_kv, k_rope


def mla_attention_ref(
    q_lat: torch.Tensor,
    q_rope: torch.Tensor,
    c_kv: torch.Tensor,
    k_rope: torch.Tensor,
    scale: float,
    k_len: int | None = None,
    rope_cos: torch.Tensor | None = None,
    rope_sin: torch.Tensor | None = None,
    q_chunk: int = 1024,
) -> torch.Tensor:
    """fp32 oracle for `mla_attention`: absorbed MLA (MQA over the shared latent key), explicit softmax.

    Same arguments as `videomla_kernels.mla_attention`; returns o_lat [B, Nq, H, d_c] in **fp32**.
    Queries are processed `q_chunk` tokens at a time only to bound the [Nq, H, Nk] score memory at
    the paper's shapes (a full 4680×12×32760 fp32 score tensor would be 7.4 GB).
    """
    c_kv, k_rope = _window(c_kv.float(), k_rope.float(), k_len, rope_cos, rope_sin)
    outs = []
    for q0 in range(0, q_lat.shape[1], q_chunk):
        ql = q_lat[:, q0 : q0 + q_chunk].float()  # [B, nq, H, d_c]
        qr = q_rope[:, q0 : q0 + q_chunk].float()  # [B, nq, H, d_r]
        # paper Eq. 7 in absorbed form: score = (q_lat·c_kv + q_rope·rot(k_rope)) · scale
        scores = torch.einsum("bqhc,bkc->bqhk", ql, c_kv) + torch.einsum("bqhr,bkr->bqhk", qr, k_rope)
        probs = torch.softmax(scores * scale, dim=-1)  # [B, nq, H, k_len]
        outs.append(torch.einsum("bqhk,bkc->bqhc", probs, c_kv))  # values are the latent itself
    return torch.cat(outs, dim=1)


def mla_attention_rebuild_ref(
    q_nope: torch.Tensor,
    q_rope: torch.Tensor,
    c_kv: torch.Tensor,
    k_rope: torch.Tensor,
    w_uk: torch.Tensor,
    w_uv: torch.Tensor,
    scale: float,
    k_len: int | None = None,
    rope_cos: torch.Tensor | None = None,
    rope_sin: torch.Tensor | None = None,
) -> torch.Tensor:
    """The "rebuild" (naive / expand) path: per-head K/V from the latent with one GEMM each, then SDPA.

    q_nope: [B, Nq, H, d_nope]; q_rope: [B, Nq, H, d_r] (already rotated); c_kv: [B, Nk, d_c];
    k_rope: [B, Nk, d_r] (unrotated; rotated here when rope_cos/rope_sin [Nk, d_r/2] are given);
    w_uk: [H, d_nope, d_c]; w_uv: [H, d_v, d_c]. Returns o [B, Nq, H, d_v] in the input dtype.

    Runs in the input dtype (not fp32) because it is the competitor the benchmark times against the
    absorbed kernel (STYLE_AND_PERF §2.6c): at video chunk sizes the K/V rebuild costs a few percent
    and the attention then uses the best dense kernel SDPA has. Equals
    `expand_output_ref(mla_attention_ref(absorb_query_ref(q_nope, w_uk), ...), w_uv)` up to rounding.
    """
    B, Nq, H, d_nope = q_nope.shape
    d_v = w_uv.shape[1]
    c_kv, k_rope = _window(c_kv, k_rope, k_len, rope_cos, rope_sin)
    Nk = c_kv.shape[1]
    k_nope = (c_kv @ w_uk.reshape(H * d_nope, -1).T).view(B, Nk, H, d_nope)  # one GEMM for all heads
    v = (c_kv @ w_uv.reshape(H * d_v, -1).T).view(B, Nk, H, d_v)  # one GEMM for all heads
    k_r = k_rope[:, :, None, :].expand(B, Nk, H, k_rope.shape[-1])  # shared positional key
    k = torch.cat((k_nope, k_r), dim=-1).transpose(1, 2)  # [B, H, Nk, d_nope + d_r]
    q = torch.cat((q_nope, q_rope), dim=-1).transpose(1, 2)  # [B, H, Nq, d_nope + d_r]
    o = F.scaled_dot_product_attention(q, k, v.transpose(1, 2), scale=scale)  # [B, H, Nq, d_v]
    return o.transpose(1, 2)
