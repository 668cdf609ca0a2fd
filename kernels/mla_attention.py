"""Triton forward kernel for absorbed Multi-Head Latent Attention (paper App. E, STYLE_AND_PERF §2.7).

After weight absorption every head scores its query [q_lat (d_c) | q_rope (d_r)] against ONE shared
key [c_kv | rot(k_rope)] and averages ONE shared value c_kv: multi-query attention in latent space.
Design choices, each for a reason:

* (query token, head) pairs are packed into the M dimension of a query block, so all H heads share
  every key tile loaded from memory (FlashMLA-style packing; video chunks give Nq·H = 56,160 rows).
* The c_kv tile is loaded once per step and used twice: as K for the scores and as V for the output.
* d_c is split into at most two power-of-two pieces (192 = 128 + 64) because `tl.arange` needs
  power-of-two sizes; each piece gets its own dot and its own fp32 accumulator.
* k_rope is cached unrotated; with cos/sin tables the kernel rotates each tile as it reads it
  (RoPE on read), so the cache never has to be rewritten when the window is re-indexed.
* Online softmax in fp32 with exp2 (log2(e) folded into the scale).
* Keys at or past `k_len` are never loaded (masked loads give 0) and get score −inf, so NaN or
  garbage in unused cache slots cannot reach the output.

Triton is imported behind a guard: `import videomla_kernels` works without it, `available()` says
whether the kernel can run, and the app calls it only when `triton_mode() == "gpu"`.
"""

from __future__ import annotations

import math
import os

import torch

from .reference import triton_mode

try:
    import triton
    import triton.language as tl
except ImportError:  # the package stays importable; available() is False
    triton = None
    tl = None

__all__ = ["mla_attention", "available", "split_latent_dim"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def available() -> bool:
    """True when the Triton kernel can run here (a CUDA GPU, or the interpreter under TRITON_INTERPRET=1)."""
    return triton is not None and triton_mode() in ("gpu", "interpret")


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def split_latent_dim(d_c: int) -> tuple[int, int]:
    """Split d_c into (d1, d2): d1 the largest power of two ≤ d_c, d2 = d_c − d1 (0 or a power of two).

    Each piece becomes one `tl.dot`, and GPU dots need K ≥ 16, so both pieces must be ≥ 16 or d2 = 0
    (192 → (128, 64), 48 → (32, 16), 32 → (32, 0)). Raises ValueError otherwise.
    """
    d1 = 1 << (d_c.bit_length() - 1) if d_c > 0 else 0
    d2 = d_c - d1
    if d1 < 16 or (d2 != 0 and (not _is_pow2(d2) or d2 < 16)):
        raise ValueError(
            f"d_c={d_c} must be a power of two >= 16 or a sum of two such powers (e.g. 192 = 128 + 64)"
        )
    return d1, d2


if triton is not None:
    _INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
    # All five compile for sm_90a without register spills and within 228 KB of shared memory at
    # d_c 192 + d_r 32 (checked offline with ptxas); which is fastest has not been measured yet.
    _GPU_CONFIGS = [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in [(128, 64, 8, 2), (128, 32, 8, 3), (64, 64, 4, 3), (64, 64, 8, 2), (64, 32, 4, 3)]
    ]
    # Multi-config autotune benchmarks on a device and crashes the interpreter ("0 active drivers"):
    # interpreted runs get one small config (each program instance costs ~2 ms there).
    _INTERP_CONFIG = triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)
    _CONFIGS = [_INTERP_CONFIG] if _INTERPRET else _GPU_CONFIGS

    @triton.autotune(configs=_CONFIGS, key=["D1", "D2", "HAS_D2", "DR", "ROPE_ON_READ"])
    @triton.jit
    def _mla_fwd_kernel(
        Q_LAT, Q_ROPE, C_KV, K_ROPE, COS, SIN, O_LAT,
        s_qb, s_qn, s_qh, s_qd,
        s_rb, s_rn, s_rh, s_rd,
        s_cb, s_cn, s_cd,
        s_kb, s_kn, s_kd,
        s_cos_n, s_cos_d, s_sin_n, s_sin_d,
        s_ob, s_on, s_oh, s_od,
        n_rows, H, k_len, qk_scale,
        D1: tl.constexpr, D2: tl.constexpr, HAS_D2: tl.constexpr, DR: tl.constexpr,
        ROPE_ON_READ: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_b = tl.program_id(1).to(tl.int64)

        # rows of this block = (query token, head) pairs, row r = token r // H, head r % H
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
        row_ok = rows < n_rows
        tok, head = rows // H, rows % H
        d1 = tl.arange(0, D1)
        dr = tl.arange(0, DR)
        d2 = D1 + tl.arange(0, D2)  # D2 = 16 placeholder when HAS_D2 is False (arange needs a size)

        q_row = Q_LAT + pid_b * s_qb + tok * s_qn + head * s_qh  # [BLOCK_M] pointers
        q1 = tl.load(q_row[:, None] + d1[None, :] * s_qd, mask=row_ok[:, None], other=0.0)  # [M, D1]
        qr_row = Q_ROPE + pid_b * s_rb + tok * s_rn + head * s_rh
        qr = tl.load(qr_row[:, None] + dr[None, :] * s_rd, mask=row_ok[:, None], other=0.0)  # [M, DR]
        if UPCAST:  # bf16 tl.dot is wrong in the interpreter: do the math in fp32 there
            q1 = q1.to(tl.float32)
            qr = qr.to(tl.float32)
        if HAS_D2:
            q2 = tl.load(q_row[:, None] + d2[None, :] * s_qd, mask=row_ok[:, None], other=0.0)  # [M, D2]
            if UPCAST:
                q2 = q2.to(tl.float32)

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max (log2 units)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running softmax denominator
        acc1 = tl.zeros([BLOCK_M, D1], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK_M, D2], dtype=tl.float32)

        c_base = C_KV + pid_b * s_cb
        k_base = K_ROPE + pid_b * s_kb
        if ROPE_ON_READ:
            # rot(x)[d] = x[d]·cos[d//2] + sign[d]·x[d^1]·sin[d//2], sign = −1 on even channels
            partner = dr ^ 1
            half = dr // 2
            sign = tl.where(dr % 2 == 0, -1.0, 1.0)  # [DR]

        for n0 in range(0, k_len, BLOCK_N):
            cols = n0 + tl.arange(0, BLOCK_N)  # [BLOCK_N]
            # slots >= k_len may hold NaN: masked loads give 0 there instead of reading them (a where
            # on the loaded values; 0 * NaN would still be NaN), and their scores become -inf below
            col_ok = cols < k_len
            c_rows = c_base + cols * s_cn
            c1 = tl.load(c_rows[:, None] + d1[None, :] * s_cd, mask=col_ok[:, None], other=0.0)  # [N, D1]
            k_rows = k_base + cols * s_kn
            kr = tl.load(k_rows[:, None] + dr[None, :] * s_kd, mask=col_ok[:, None], other=0.0)  # [N, DR]
            if ROPE_ON_READ:
                kr_sw = tl.load(k_rows[:, None] + partner[None, :] * s_kd, mask=col_ok[:, None], other=0.0)
                cos_ptr = COS + cols[:, None] * s_cos_n + half[None, :] * s_cos_d
                sin_ptr = SIN + cols[:, None] * s_sin_n + half[None, :] * s_sin_d
                cos = tl.load(cos_ptr, mask=col_ok[:, None], other=0.0)  # [N, DR] fp32, cos[i] per pair
                sin = tl.load(sin_ptr, mask=col_ok[:, None], other=0.0)
                kr_rot = kr.to(tl.float32) * cos + kr_sw.to(tl.float32) * sin * sign[None, :]  # [N, DR] fp32
                kr = kr_rot.to(kr.dtype)
            if UPCAST:
                c1 = c1.to(tl.float32)
                kr = kr.to(tl.float32)

            s = tl.dot(q1, tl.trans(c1), input_precision=DOT_PREC)  # [M, N]
            s += tl.dot(qr, tl.trans(kr), input_precision=DOT_PREC)
            if HAS_D2:
                c2 = tl.load(c_rows[:, None] + d2[None, :] * s_cd, mask=col_ok[:, None], other=0.0)  # [N, D2]
                if UPCAST:
                    c2 = c2.to(tl.float32)
                s += tl.dot(q2, tl.trans(c2), input_precision=DOT_PREC)
            s = tl.where(col_ok[None, :], s * qk_scale, float("-inf"))  # log2 units

            # online softmax: every tile holds >= 1 valid key, so m_new is finite
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp2(m_i - m_new)  # 0 on the first tile (m_i = -inf)
            p = tl.exp2(s - m_new[:, None])  # [M, N], 0 on masked keys
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc1 = acc1 * alpha[:, None] + tl.dot(p.to(c1.dtype), c1, input_precision=DOT_PREC)  # V = c_kv
            if HAS_D2:
                acc2 = acc2 * alpha[:, None] + tl.dot(p.to(c2.dtype), c2, input_precision=DOT_PREC)
            m_i = m_new

        o_row = O_LAT + pid_b * s_ob + tok * s_on + head * s_oh
        inv_l = 1.0 / l_i
        o_ty = O_LAT.dtype.element_ty
        o_mask = row_ok[:, None]
        tl.store(o_row[:, None] + d1[None, :] * s_od, (acc1 * inv_l[:, None]).to(o_ty), mask=o_mask)
        if HAS_D2:
            tl.store(o_row[:, None] + d2[None, :] * s_od, (acc2 * inv_l[:, None]).to(o_ty), mask=o_mask)


def _check_inputs(q_lat, q_rope, c_kv, k_rope, k_len, rope_cos, rope_sin) -> int:
    """Validate shapes, dtypes and devices; return the effective k_len. Raises ValueError."""
    named = {"q_lat": (q_lat, 4), "q_rope": (q_rope, 4), "c_kv": (c_kv, 3), "k_rope": (k_rope, 3)}
    for name, (t, ndim) in named.items():
        if not isinstance(t, torch.Tensor) or t.dim() != ndim:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a {ndim}-D tensor, got {got}")
    B, Nq, H, d_c = q_lat.shape
    Nk, d_r = c_kv.shape[1], k_rope.shape[2]
    if q_rope.shape[:3] != (B, Nq, H):
        raise ValueError(
            f"q_rope {tuple(q_rope.shape)} must be [B, Nq, H, d_r] = [{B}, {Nq}, {H}, d_r] (from q_lat)"
        )
    if c_kv.shape != (B, Nk, d_c):
        raise ValueError(
            f"c_kv {tuple(c_kv.shape)} must be [B, Nk, d_c] = [{B}, Nk, {d_c}] (B, d_c from q_lat)"
        )
    if k_rope.shape[:2] != (B, Nk) or q_rope.shape[3] != d_r:
        raise ValueError(
            f"k_rope {tuple(k_rope.shape)} must be [B, Nk, d_r] = [{B}, {Nk}, {q_rope.shape[3]}] "
            f"(Nk from c_kv, d_r from q_rope)"
        )
    split_latent_dim(d_c)
    if not _is_pow2(d_r) or d_r < 16:
        raise ValueError(f"d_r={d_r} must be a power of two >= 16")
    dtypes = {t.dtype for t in (q_lat, q_rope, c_kv, k_rope)}
    if len(dtypes) != 1 or q_lat.dtype not in _DTYPES:
        raise ValueError(f"q_lat, q_rope, c_kv, k_rope must share one dtype of fp16/bf16/fp32, got {dtypes}")
    devices = {t.device for t in (q_lat, q_rope, c_kv, k_rope)}
    if len(devices) != 1:
        raise ValueError(f"all inputs must be on one device, got {devices}")
    k_len = Nk if k_len is None else k_len
    if not isinstance(k_len, int) or isinstance(k_len, bool) or not 1 <= k_len <= Nk:
        raise ValueError(f"k_len must be a python int in [1, Nk={Nk}], got {k_len!r}")
    if (rope_cos is None) != (rope_sin is None):
        raise ValueError("pass both rope_cos and rope_sin, or neither")
    if rope_cos is not None:
        for name, t in (("rope_cos", rope_cos), ("rope_sin", rope_sin)):
            if not isinstance(t, torch.Tensor) or t.shape != (Nk, d_r // 2) or t.dtype != torch.float32:
                got = (tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{name} must be an fp32 [Nk, d_r/2] = [{Nk}, {d_r // 2}] tensor, got {got}")
            if t.device != q_lat.device:
                raise ValueError(f"{name} is on {t.device}, the other inputs on {q_lat.device}")
    return k_len


def mla_attention(
    q_lat: torch.Tensor,
    q_rope: torch.Tensor,
    c_kv: torch.Tensor,
    k_rope: torch.Tensor,
    scale: float,
    k_len: int | None = None,
    rope_cos: torch.Tensor | None = None,
    rope_sin: torch.Tensor | None = None,
) -> torch.Tensor:
    """Absorbed MLA attention forward (Triton): every query attends to all valid keys, no mask.

    Args:
        q_lat:    [B, Nq, H, d_c]  absorbed queries (q_nope · W_uk per head).
        q_rope:   [B, Nq, H, d_r]  positional queries, already rotated by the caller.
        c_kv:     [B, Nk, d_c]     shared content latent: key part and value of every head.
        k_rope:   [B, Nk, d_r]     shared positional key, stored unrotated.
        scale:    softmax scale (paper: 1/sqrt(d_nope + d_r) = 1/sqrt(128)).
        k_len:    python int, number of valid keys (a prefix of the buffer); None = Nk. Slots
                  >= k_len may hold NaN/garbage and never reach the output.
        rope_cos: [Nk, d_r/2] fp32 or None. With rope_sin, rotates k_rope on read: channel pairs
                  (2i, 2i+1), out[2i] = x[2i]·cos[i] − x[2i+1]·sin[i],
                  out[2i+1] = x[2i]·sin[i] + x[2i+1]·cos[i]. None: k_rope is used as is.
        rope_sin: [Nk, d_r/2] fp32 or None.

    Returns:
        o_lat: [B, Nq, H, d_c] in the input dtype, o_lat[i, h] = Σ_j softmax_j(score) · c_kv[j].

    d_c must be a power of two or a sum of two (each >= 16), d_r a power of two >= 16; dtypes
    fp16/bf16/fp32 (fp32 accumulation). Any strides are accepted. Raises ValueError on bad inputs
    and RuntimeError when Triton cannot run here (see `available()`).
    """
    k_len = _check_inputs(q_lat, q_rope, c_kv, k_rope, k_len, rope_cos, rope_sin)
    mode = triton_mode()
    if triton is None or mode == "torch":
        raise RuntimeError(
            "the Triton MLA kernel needs a CUDA GPU (or TRITON_INTERPRET=1 for tests); "
            "use videomla_kernels.mla_attention_ref or the app's torch backends instead"
        )
    if mode == "gpu" and q_lat.device.type != "cuda":
        raise ValueError(f"inputs must be CUDA tensors on a GPU, got device {q_lat.device}")
    if mode == "interpret" and q_lat.device.type != "cpu":
        raise ValueError(f"under TRITON_INTERPRET=1 inputs must be CPU tensors, got device {q_lat.device}")

    B, Nq, H, d_c = q_lat.shape
    d_r = q_rope.shape[-1]
    d1, d2 = split_latent_dim(d_c)
    o_lat = torch.empty_like(q_lat, memory_format=torch.contiguous_format)  # [B, Nq, H, d_c]
    rope_on_read = rope_cos is not None
    cos = rope_cos if rope_on_read else k_rope  # dummy pointers, never read when ROPE_ON_READ is False
    sin = rope_sin if rope_on_read else k_rope
    n_rows = Nq * H

    def grid(meta):
        return (triton.cdiv(n_rows, meta["BLOCK_M"]), B)

    _mla_fwd_kernel[grid](
        q_lat, q_rope, c_kv, k_rope, cos, sin, o_lat,
        *q_lat.stride(), *q_rope.stride(), *c_kv.stride(), *k_rope.stride(),
        cos.stride(0), cos.stride(1), sin.stride(0), sin.stride(1),
        *o_lat.stride(),
        n_rows, H, k_len, float(scale) * math.log2(math.e),
        D1=d1, D2=d2 if d2 else 16, HAS_D2=d2 > 0, DR=d_r, ROPE_ON_READ=rope_on_read,
        UPCAST=mode == "interpret" and q_lat.dtype == torch.bfloat16,
        DOT_PREC="ieee" if q_lat.dtype == torch.float32 else "tf32",
    )
    return o_lat
