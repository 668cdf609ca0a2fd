"""Self-attention: Multi-Head Latent Attention (PAPER Eq. 1-7) and dense Wan MHA, with backends.

MLA backends (one switch, never scattered flags):

- ``reference``: fp32, per-head K/V rebuilt, explicit softmax. The oracle for tests.
- ``naive``: rebuild per-head K/V from the latent window, then SDPA (training form; supports masks).
- ``absorb``: PAPER App. E. A_h = W_uq_h^T W_uk_h and B_h = W_o_h W_uv_h are precomputed once;
  every head's query becomes [A_h^T c_q ; q_rope_h] (d_c + d_rope wide) and attends the *shared*
  key [c_kv ; RoPE(k_rope)] as multi-query attention. Heads are folded into query rows, so one SDPA
  call with a single KV head does it; V is passed as the full 224-wide key (CPU SDPA only takes its
  fast kernel when V's width equals K's) and the rope columns of the output are dropped.
- ``triton``: ``videomla_kernels.mla_attention`` (CUDA only; the app never runs the interpreter).
- ``auto``: picks per device and shape from measurements (see :func:`choose_backend`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .rope import apply_rope

MLA_BACKENDS = ("reference", "naive", "absorb", "triton", "auto")


class RMSNorm(nn.Module):
    """Wan's RMSNorm: normalise in fp32, scale by a learned weight."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight.to(x.dtype)


@dataclass
class AttnInputs:
    """Everything a self-attention layer needs besides its hidden states (shared by all layers).

    cos/sin tables are for the layer kind's RoPE (MLA: the decoupled key; MHA: the full head).
    ``key_index`` gathers keys from the clip's tokens (training form: sink copies with their own
    rotation); ``mask`` [Nq, Nk] is True where a query may attend. Inference passes a cache and step.
    """

    q_cos: torch.Tensor  # [Nq, P]
    q_sin: torch.Tensor
    k_cos: torch.Tensor | None = None  # [Nk, P]; None when keys are stored rotated (dense cache)
    k_sin: torch.Tensor | None = None
    mask: torch.Tensor | None = None  # [Nq, Nk] bool
    key_index: torch.Tensor | None = None  # [Nk] token index of each key (training form)
    cache: object | None = None
    step: object | None = None
    layer: int = 0


def mla_flops(n_q: int, n_k: int, H: int, d_c: int, d_r: int, d_nope: int, dh: int, d_q: int, dim: int):
    """Matmul FLOPs of one MLA attention call in each form (STYLE_AND_PERF §2.6 (b), (c)).

    naive: rebuild per-head K (d_nope) and V (dh) for the window, then attention with dh-wide
    heads. absorb: fold W_uk into the query (A_h) and W_uv/W_o into B_h, attention over the shared
    (d_c + d_r)-wide key with d_c-wide values.
    """
    naive = 2 * n_k * d_c * H * (d_nope + dh) + 4 * n_q * n_k * H * dh + 2 * n_q * d_q * H * d_nope
    absorb = 2 * n_q * n_k * H * (2 * d_c + d_r) + 2 * n_q * d_q * H * d_c + 2 * n_q * H * d_c * dim
    return naive, absorb


def choose_backend(attn: "MLAttention", n_q: int, n_k: int, device: torch.device) -> str:
    """Pick ``naive`` or ``absorb`` for a shape.

    Rule, checked against ``python -m videomla_app.bench`` (README table): take the form with fewer
    matmul FLOPs. On the CPU both run through the same SDPA kernel, so time follows FLOPs: the
    1.3B-shaped layer (4,680 queries x 15,600 keys, d_c 192) runs naive 1.5x faster than absorb,
    because absorbed attention costs (2 d_c + d_r) / (2 dh) = 1.625x the score FLOPs. Absorb wins
    for short query chunks (the K/V rebuild dominates) and small latents (d_c < 112 at dh 128).
    On CUDA the rebuild path feeds FlashAttention (STYLE_AND_PERF §2.7) until the Triton kernel's
    measurements say otherwise.
    """
    if device.type == "cuda":
        return "naive"
    naive, absorb = mla_flops(n_q, n_k, attn.H, attn.d_c, attn.d_rope, attn.d_nope, attn.dh, attn.d_q,
                              attn.cfg.dim)
    return "absorb" if absorb < naive else "naive"


class MLAttention(nn.Module):
    """Multi-Head Latent Attention (PAPER Eq. 1-7, App. D.2 shapes)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        m = cfg.mla
        assert m is not None
        self.cfg, self.H, self.dh = cfg, cfg.n_heads, cfg.head_dim
        self.d_c, self.d_q, self.d_nope, self.d_rope = m.d_c, m.d_q, m.d_nope, m.d_rope
        d, H = cfg.dim, cfg.n_heads
        self.w_dkv = nn.Linear(d, m.d_c, bias=False)  # Eq. 1: c_kv = W_dkv x
        self.kv_norm = RMSNorm(m.d_c, cfg.eps)
        self.w_kr = nn.Linear(d, m.d_rope, bias=False)  # Eq. 5: one positional key per token
        self.w_dq = nn.Linear(d, m.d_q, bias=False)  # Eq. 3
        self.q_norm = RMSNorm(m.d_q, cfg.eps)
        self.w_uq = nn.Linear(m.d_q, H * m.d_nope, bias=False)  # Eq. 4
        self.w_qr = nn.Linear(m.d_q, H * m.d_rope, bias=False)  # Eq. 6
        self.w_uk = nn.Linear(m.d_c, H * m.d_nope, bias=False)  # Eq. 2
        self.w_uv = nn.Linear(m.d_c, H * self.dh, bias=False)  # Eq. 2
        self.o = nn.Linear(d, d)  # W_O, Wan's output projection (with bias)
        self.scale = 1.0 / math.sqrt(m.d_nope + m.d_rope)  # Eq. 7
        self.backend = "auto"
        self._absorbed: tuple[tuple, torch.Tensor, torch.Tensor] | None = None

    # -- projections ------------------------------------------------------------------------
    def project_kv(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """What is cached per token: normalised c_kv [B, N, d_c] and unrotated k_rope [B, N, d_rope]."""
        return {"c_kv": self.kv_norm(self.w_dkv(x)), "k_rope": self.w_kr(x)}

    def write_kv(self, x: torch.Tensor, a: AttnInputs) -> None:
        """Only write the chunk's cache entries (the last layer of the cache-write pass, whose
        attention output nothing reads)."""
        a.cache.write(a.layer, a.step, **self.project_kv(x))

    def project_q(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """c_q [B, N, d_q], q_nope [B, N, H, d_nope], rotated q_rope [B, N, H, d_rope]."""
        c_q = self.q_norm(self.w_dq(x))
        q_nope = self.w_uq(c_q).unflatten(-1, (self.H, self.d_nope))
        q_rope = apply_rope(self.w_qr(c_q).unflatten(-1, (self.H, self.d_rope)), cos[:, None], sin[:, None])
        return c_q, q_nope, q_rope

    def absorbed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A [H, d_q, d_c] = W_uq_h^T W_uk_h and B [H, dim, d_c] = W_o_h W_uv_h (App. E, Eq. 9, 11).

        Computed in fp32 once and recomputed only when a weight changes (training, loading).
        """
        ws = (self.w_uq.weight, self.w_uk.weight, self.w_uv.weight, self.o.weight)
        key = tuple((w.data_ptr(), w._version, w.dtype, w.device) for w in ws)
        if self._absorbed is None or self._absorbed[0] != key:
            with torch.no_grad():
                H = self.H
                uq = self.w_uq.weight.float().view(H, self.d_nope, self.d_q)  # [H, d_nope, d_q]
                uk = self.w_uk.weight.float().view(H, self.d_nope, self.d_c)  # [H, d_nope, d_c]
                uv = self.w_uv.weight.float().view(H, self.dh, self.d_c)  # [H, dh, d_c]
                wo = self.o.weight.float().view(-1, H, self.dh).transpose(0, 1)  # [H, dim, dh]
                A = torch.einsum("hnq,hnc->hqc", uq, uk)  # [H, d_q, d_c]
                B = torch.einsum("hdv,hvc->hdc", wo, uv)  # [H, dim, d_c]
                dt = self.w_uq.weight.dtype
            self._absorbed = (key, A.to(dt), B.to(dt))
        return self._absorbed[1], self._absorbed[2]

    # -- forward ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, a: AttnInputs) -> torch.Tensor:
        """x [B, N, dim] -> [B, N, dim]. Inference (a.cache set) or training form (mask/key_index)."""
        kv = self.project_kv(x)
        if a.cache is not None:
            a.cache.write(a.layer, a.step, **kv)  # the chunk's keys go in place before attention
            kv = a.cache.read(a.layer, a.step)  # views of sink + window + chunk
        elif a.key_index is not None:
            kv = {k: v[:, a.key_index] for k, v in kv.items()}
        c_kv = kv["c_kv"]  # [B, T, d_c]
        c_q, q_nope, q_rope = self.project_q(x, a.q_cos, a.q_sin)
        backend = self.backend
        if backend == "auto":
            backend = "naive" if a.mask is not None else choose_backend(self, x.shape[1], c_kv.shape[1], x.device)
        if a.mask is not None and backend in ("absorb", "triton"):
            backend = "naive"  # masked (training-form) attention runs on rebuilt per-head K/V
        if backend == "triton":  # the kernel rotates the cached key on read
            return self._absorb(c_q, q_rope, c_kv, kv["k_rope"], a, backend)
        k_rope = apply_rope(kv["k_rope"], a.k_cos, a.k_sin)  # [B, T, d_rope], rotated on read
        if backend == "reference":
            return self._reference(q_nope, q_rope, c_kv, k_rope, a.mask)
        if backend == "naive":
            return self._naive(q_nope, q_rope, c_kv, k_rope, a.mask)
        if backend == "absorb":
            return self._absorb(c_q, q_rope, c_kv, k_rope, a, backend)
        raise ValueError(f"unknown MLA backend {backend!r}; choose from {MLA_BACKENDS}")

    def _rebuild_kv(self, c_kv: torch.Tensor, k_rope: torch.Tensor):
        """Per-head k [B, T, H, dh] (NoPE part + shared rotated RoPE part) and v [B, T, H, dh]."""
        k_nope = self.w_uk(c_kv).unflatten(-1, (self.H, self.d_nope))  # [B, T, H, d_nope]
        k = torch.cat([k_nope, k_rope[:, :, None].expand(-1, -1, self.H, -1)], dim=-1)  # [B, T, H, dh]
        v = self.w_uv(c_kv).unflatten(-1, (self.H, self.dh))  # [B, T, H, dh]
        return k, v

    def _naive(self, q_nope, q_rope, c_kv, k_rope, mask):
        k, v = self._rebuild_kv(c_kv, k_rope)
        q = torch.cat([q_nope, q_rope], dim=-1)  # [B, N, H, dh]
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           attn_mask=mask, scale=self.scale)  # [B, H, N, dh]
        return self.o(o.transpose(1, 2).flatten(2))

    def _reference(self, q_nope, q_rope, c_kv, k_rope, mask):
        """fp32 (or wider) oracle: Eq. 2 and Eq. 7 written out per head, explicit softmax."""
        dt = torch.promote_types(q_nope.dtype, torch.float32)
        H, c_kv = self.H, c_kv.to(dt)
        k_nope = F.linear(c_kv, self.w_uk.weight.to(dt)).unflatten(-1, (H, self.d_nope))  # [B, T, H, d_nope]
        v = F.linear(c_kv, self.w_uv.weight.to(dt)).unflatten(-1, (H, self.dh))  # [B, T, H, dh]
        s = (torch.einsum("bnhd,bthd->bhnt", q_nope.to(dt), k_nope)
             + torch.einsum("bnhd,btd->bhnt", q_rope.to(dt), k_rope.to(dt))) * self.scale  # [B, H, N, T]
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        o = torch.einsum("bhnt,bthd->bnhd", s.softmax(-1), v).flatten(2)  # [B, N, H*dh]
        return F.linear(o, self.o.weight.to(dt), self.o.bias.to(dt)).to(q_nope.dtype)

    def _absorb(self, c_q, q_rope, c_kv, k_rope, a: AttnInputs, backend: str):
        A, Bm = self.absorbed()
        B_, N, H = c_q.shape[0], c_q.shape[1], self.H
        q_lat = torch.einsum("bnq,hqc->bnhc", c_q, A)  # [B, N, H, d_c]
        if backend == "triton":
            import videomla_kernels

            o_lat = videomla_kernels.mla_attention(q_lat, q_rope, c_kv, k_rope, self.scale,
                                                   rope_cos=a.k_cos, rope_sin=a.k_sin)  # [B, N, H, d_c]
        else:
            q = torch.cat([q_lat, q_rope], dim=-1).view(B_, 1, N * H, -1)  # heads folded into rows
            kv = torch.cat([c_kv, k_rope], dim=-1)[:, None]  # [B, 1, T, d_c + d_rope], one shared head
            o = F.scaled_dot_product_attention(q, kv, kv, scale=self.scale)  # V = K: fast CPU kernel
            o_lat = o[..., : self.d_c].view(B_, N, H, self.d_c)  # drop the rope columns
        return torch.einsum("bnhc,hdc->bnd", o_lat, Bm) + self.o.bias  # Eq. 11, summed over heads


class WanProjections(nn.Module):
    """Wan's attention weights: q, k, v, o (with bias) and RMSNorm over the full width of q and k.
    Shared by dense self-attention and text cross-attention (same checkpoint names)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.H, self.dh = cfg.n_heads, cfg.head_dim
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(d, cfg.eps), RMSNorm(d, cfg.eps)


class MHAttention(WanProjections):
    """Dense Wan / Self-Forcing self-attention: full-head 3D RoPE on q and k, per-head K/V cache."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.backend = "sdpa"

    def project_kv(self, x: torch.Tensor, a: AttnInputs) -> dict[str, torch.Tensor]:
        """Per-head k (rotated) and v [B, N, H, dh]. Self-Forcing keeps absolute positions and
        stores keys already rotated: a key is rotated once, with its own token's position (the same
        tables as the queries of its chunk)."""
        k = self.norm_k(self.k(x)).unflatten(-1, (self.H, self.dh))
        v = self.v(x).unflatten(-1, (self.H, self.dh))
        return {"k": apply_rope(k, a.q_cos[:, None], a.q_sin[:, None]), "v": v}

    def write_kv(self, x: torch.Tensor, a: AttnInputs) -> None:
        """Only write the chunk's cache entries (see :meth:`MLAttention.write_kv`)."""
        a.cache.write(a.layer, a.step, **self.project_kv(x, a))

    def forward(self, x: torch.Tensor, a: AttnInputs) -> torch.Tensor:
        q = apply_rope(self.norm_q(self.q(x)).unflatten(-1, (self.H, self.dh)), a.q_cos[:, None], a.q_sin[:, None])
        kv = self.project_kv(x, a)
        k, v = kv["k"], kv["v"]
        if a.cache is not None:
            a.cache.write(a.layer, a.step, k=k, v=v)
            kv = a.cache.read(a.layer, a.step)
            k, v = kv["k"], kv["v"]
        if self.backend == "reference":
            dt = torch.promote_types(x.dtype, torch.float32)
            s = torch.einsum("bnhd,bthd->bhnt", q.to(dt), k.to(dt)) / math.sqrt(self.dh)
            if a.mask is not None:
                s = s.masked_fill(~a.mask, float("-inf"))
            o = torch.einsum("bhnt,bthd->bnhd", s.softmax(-1), v.to(dt)).to(x.dtype)
        else:
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               attn_mask=a.mask).transpose(1, 2)  # [B, N, H, dh]
        return self.o(o.flatten(2))
