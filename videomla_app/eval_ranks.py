"""The rank analysis of the MHA -> MLA conversion (PAPER §5), as reported by ``videomla eval --ranks``.

The paper's argument: a dense layer's stacked key/value projection ``[W_K; W_V]`` has a much
lower effective rank than its size, so a shared latent of width ``d_c`` can carry it. Per layer we
report the 99 %-energy effective rank (``convert.effective_rank``: the fewest singular values
holding 99 % of the squared spectrum) of

- ``dense``: the dense twin's ``[W_K; W_V]`` (``convert.dense_kv_operator``), and the share of its
  squared spectrum that the top ``d_c`` singular values hold (what a rank-d_c latent can keep);
- ``spectral_init``: the MLA composed operator ``[W_uk W_dkv; W_uv W_dkv]``
  (``convert.mla_kv_operator``) right after spectral initialisation from that dense twin
  (``convert.convert_model(dense, mla_cfg, "spectral")``), i.e. before fine-tuning;
- ``trained``: the same operator of the given (fine-tuned, shipped) MLA model.

The two MLA operators have rank <= d_c by construction; the interesting numbers are how close to
d_c they sit and how the dense rank compares with d_c. (The dense operator includes the RoPE key
rows, which MLA moves into its separate shared positional key; the paper's figure does the same.)
"""

from __future__ import annotations

import torch
from rich.table import Table

from .config import ModelConfig
from .convert import convert_model, dense_kv_operator, effective_rank, mla_kv_operator

ENERGY = 0.99


def energy_share(matrix: torch.Tensor, k: int) -> float:
    """Fraction of the squared singular-value spectrum held by the top ``k`` singular values."""
    s2 = torch.linalg.svdvals(matrix.double()).pow(2)
    return float(s2[:k].sum() / s2.sum())


def rank_analysis(dense_model, mla_model, mla_cfg: ModelConfig, energy: float = ENERGY) -> dict:
    """Per-layer effective ranks of the dense twin, its spectral MLA initialisation and the MLA
    model (see the module docstring). ``dense_model``/``mla_model`` are ``CausalDiT`` instances
    with dense and latent self-attention; ``mla_cfg`` is the MLA model's config (gives ``d_c``)."""
    if mla_cfg.attn != "mla" or mla_cfg.mla is None:
        raise ValueError("mla_cfg must describe an MLA model (attn='mla')")
    if len(dense_model.blocks) != len(mla_model.blocks):
        raise ValueError(f"the models have {len(dense_model.blocks)} and {len(mla_model.blocks)} layers")
    d_c = mla_cfg.mla.d_c
    with torch.no_grad():
        spectral = convert_model(dense_model, mla_cfg, "spectral")
    layers = []
    for i, (bd, bs, bm) in enumerate(zip(dense_model.blocks, spectral.blocks, mla_model.blocks)):
        dense_op = dense_kv_operator(bd.self_attn)
        layers.append({
            "layer": i, "d_c": d_c, "dense_shape": list(dense_op.shape),
            "dense_rank": effective_rank(dense_op, energy),
            "dense_energy_in_d_c": energy_share(dense_op, d_c),
            "spectral_init_rank": effective_rank(mla_kv_operator(bs.self_attn), energy),
            "trained_rank": effective_rank(mla_kv_operator(bm.self_attn), energy),
        })
    mean = lambda key: sum(r[key] for r in layers) / len(layers)  # noqa: E731
    return {"energy": energy, "d_c": d_c, "layers": layers,
            "mean": {k: mean(k) for k in ("dense_rank", "dense_energy_in_d_c", "spectral_init_rank",
                                          "trained_rank")},
            "dense_layers_above_d_c": sum(r["dense_rank"] > d_c for r in layers)}


def format_ranks(ranks: dict, title: str = "MHA -> MLA rank analysis") -> Table:
    """One row per layer, plus the mean."""
    pct = round(100 * ranks["energy"])
    t = Table(title=f"{title} ({pct} %-energy effective rank, d_c = {ranks['d_c']})")
    for col in ("layer", "dense [W_K; W_V]", "dense energy in top d_c", "MLA spectral init", "MLA trained"):
        t.add_column(col, justify="right")
    for r in ranks["layers"]:
        t.add_row(str(r["layer"]), str(r["dense_rank"]), f"{100 * r['dense_energy_in_d_c']:.1f} %",
                  str(r["spectral_init_rank"]), str(r["trained_rank"]))
    m = ranks["mean"]
    t.add_section()
    t.add_row("mean", f"{m['dense_rank']:.1f}", f"{100 * m['dense_energy_in_d_c']:.1f} %",
              f"{m['spectral_init_rank']:.1f}", f"{m['trained_rank']:.1f}")
    return t
