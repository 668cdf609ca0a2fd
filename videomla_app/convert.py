"""Dense MHA -> MLA conversion (spectral or random init) and the paper's rank analysis (PAPER §5).

Spectral initialisation (one plausible reading of PAPER §6 / §14.5; the paper does not publish its
recipe): per layer,

- keep each head's highest-frequency RoPE channels (t pairs 0..5, h 0..4, w 0..4 of Wan's
  44/42/42 split) as the positional sub-space and the other 96 channels as NoPE;
- factor the stacked NoPE-key and value rows ``M = [W_K^nope; W_V]`` by truncated SVD:
  ``W_dkv = S_r^1/2 V_r^T`` and ``[W_uk; W_uv] = U_r S_r^1/2``, so ``[W_uk; W_uv] W_dkv`` is the
  best rank-d_c approximation of ``M`` (Eckart-Young);
- factor the query rows ``[W_Q^nope; W_Q^rope]`` the same way at rank d_q;
- ``W_kr`` = the RoPE rows of ``W_K`` averaged over heads (one shared positional key);
- ``W_o`` is copied and the value bias folded into the output bias (softmax weights sum to 1, so
  ``W_o b_v`` is a constant). The key bias only shifts every score of a query equally in the NoPE
  part and is dropped; the query bias and Wan's q/k RMSNorm have no MLA counterpart and are dropped.

Because MLA normalises ``c_kv`` and ``c_q`` with RMSNorm, a converted layer is an initialisation,
not an exact copy: the paper fine-tunes after it.
"""

from __future__ import annotations

import torch

from .attention import MHAttention, MLAttention
from .config import ModelConfig
from .rope import RopeSpec


def rope_channels(head_dim: int, pairs: tuple[int, int, int]) -> torch.Tensor:
    """Indices (within one head) of the channels of the highest-frequency pairs of each axis."""
    full = RopeSpec.full(head_dim)
    idx, start = [], 0
    for axis_pairs, keep in zip(full.pairs, pairs):
        for p in range(keep):
            idx += [2 * (start + p), 2 * (start + p) + 1]
        start += axis_pairs
    return torch.tensor(idx)


def _split_heads(w: torch.Tensor, H: int, dh: int, rope_idx: torch.Tensor):
    """Rows of a [H*dh, d] projection -> (NoPE rows [H*d_nope, d], RoPE rows [H, d_rope, d])."""
    w = w.view(H, dh, -1)
    keep = torch.ones(dh, dtype=torch.bool)
    keep[rope_idx] = False
    return w[:, keep].reshape(-1, w.shape[-1]), w[:, rope_idx]


def low_rank(m: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(up [rows, r], down [r, cols]) with up @ down = the best rank-r approximation of m."""
    U, S, Vh = torch.linalg.svd(m.double(), full_matrices=False)
    r = min(r, S.numel())
    root = S[:r].sqrt()
    up, down = U[:, :r] * root, root[:, None] * Vh[:r]
    return up, down


def mha_to_mla(mha: MHAttention, cfg: ModelConfig, init: str = "spectral", seed: int = 0) -> MLAttention:
    """A new MLA layer initialised from a dense layer (``init='spectral'``) or at random."""
    mla = MLAttention(cfg)
    m, H, dh = cfg.mla, cfg.n_heads, cfg.head_dim
    assert m is not None
    dt = mha.q.weight.dtype
    with torch.no_grad():
        if init == "random":
            g = torch.Generator().manual_seed(seed)
            for lin in (mla.w_dkv, mla.w_kr, mla.w_dq, mla.w_uq, mla.w_qr, mla.w_uk, mla.w_uv):
                fan_in = lin.weight.shape[1]
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) / fan_in**0.5)
        elif init == "spectral":
            ridx = rope_channels(dh, m.rope_pairs)
            k_nope, k_rope = _split_heads(mha.k.weight.float(), H, dh, ridx)
            q_nope, q_rope = _split_heads(mha.q.weight.float(), H, dh, ridx)
            up, down = low_rank(torch.cat([k_nope, mha.v.weight.float()]), m.d_c)
            _fill(mla.w_dkv.weight, down)
            _fill(mla.w_uk.weight, up[: H * m.d_nope])
            _fill(mla.w_uv.weight, up[H * m.d_nope:])
            up_q, down_q = low_rank(torch.cat([q_nope, q_rope.reshape(-1, q_rope.shape[-1])]), m.d_q)
            _fill(mla.w_dq.weight, down_q)
            _fill(mla.w_uq.weight, up_q[: H * m.d_nope])
            _fill(mla.w_qr.weight, up_q[H * m.d_nope:])
            mla.w_kr.weight.copy_(k_rope.mean(0))
        else:
            raise ValueError(f"unknown init {init!r}: use 'spectral' or 'random'")
        mla.o.weight.copy_(mha.o.weight)
        mla.o.bias.copy_(mha.o.bias + mha.o.weight @ mha.v.bias)  # fold the value bias
    return mla.to(dt)


def _fill(param: torch.Tensor, value: torch.Tensor) -> None:
    """Copy a (possibly lower-rank) factor into a parameter, zero-padding missing rank."""
    param.zero_()
    param[: value.shape[0], : value.shape[1]] = value.to(param.dtype)


def effective_rank(matrix: torch.Tensor, energy: float = 0.99) -> int:
    """Smallest k whose top-k singular values hold ``energy`` of the squared spectrum (PAPER §5)."""
    s2 = torch.linalg.svdvals(matrix.double()).pow(2)
    cum = s2.cumsum(0) / s2.sum()
    return int((cum < energy - 1e-12).sum().item()) + 1


def dense_kv_operator(mha: MHAttention) -> torch.Tensor:
    """[W_K; W_V] (2*dim x dim): the object of the paper's spectral analysis (Fig. 1)."""
    return torch.cat([mha.k.weight, mha.v.weight]).detach()


def mla_kv_operator(mla: MLAttention) -> torch.Tensor:
    """[W_uk W_dkv; W_uv W_dkv]: the composed latent operator, rank <= d_c by construction."""
    down = mla.w_dkv.weight.detach().double()
    return torch.cat([mla.w_uk.weight.detach().double() @ down, mla.w_uv.weight.detach().double() @ down])


def rank_report(model_layers: list, energy: float = 0.99) -> list[dict]:
    """Per-layer 99 %-energy rank of each layer's K/V operator (dense or latent)."""
    rows = []
    for i, attn in enumerate(model_layers):
        op = dense_kv_operator(attn) if isinstance(attn, MHAttention) else mla_kv_operator(attn)
        rows.append({"layer": i, "rank": effective_rank(op, energy), "shape": list(op.shape)})
    return rows


def convert_model(dense, cfg_mla: ModelConfig, init: str = "spectral", seed: int = 0):
    """An MLA model whose non-attention weights are copied from ``dense`` and whose self-attention
    layers are converted with :func:`mha_to_mla`."""
    from .model import CausalDiT

    mla_model = CausalDiT(cfg_mla).to(next(dense.parameters()).dtype)
    own = {k: v for k, v in dense.state_dict().items() if ".self_attn." not in k}
    missing, unexpected = mla_model.load_state_dict(own, strict=False)
    assert not unexpected and all(".self_attn." in k for k in missing), (missing, unexpected)
    for i, (bd, bm) in enumerate(zip(dense.blocks, mla_model.blocks)):
        bm.self_attn = mha_to_mla(bd.self_attn, cfg_mla, init, seed + i)
    return mla_model.eval()
