import torch

from videomla_app.attention import MHAttention
from videomla_app.config import MLAConfig, ModelConfig, get_preset
from videomla_app.convert import (convert_model, dense_kv_operator, effective_rank, mha_to_mla, mla_kv_operator,
                                  rank_report, rope_channels)
from videomla_app.model import build_model

DENSE = ModelConfig(dim=64, n_heads=2, n_layers=2, ffn_dim=128, freq_dim=32, text_dim=32, latent_channels=4,
                    latent_hw=(4, 4), attn="mha", mla=None)


def _mla_cfg(d_c, d_q=64):
    return ModelConfig(dim=64, n_heads=2, n_layers=2, ffn_dim=128, freq_dim=32, text_dim=32, latent_channels=4,
                       latent_hw=(4, 4), mla=MLAConfig(d_c=d_c, d_q=d_q, d_nope=16, d_rope=16, rope_pairs=(4, 2, 2)))


def _parts(mha, cfg):
    idx = rope_channels(cfg.head_dim, cfg.mla.rope_pairs)
    keep = torch.ones(cfg.head_dim, dtype=torch.bool)
    keep[idx] = False
    k_nope = mha.k.weight.view(2, cfg.head_dim, -1)[:, keep].reshape(-1, 64)
    return torch.cat([k_nope, mha.v.weight]).double()


def test_rope_channels_are_highest_frequency_pairs_of_each_axis():
    # Wan head 128: t pairs 0-5 = ch 0-11, h pairs 0-4 = ch 44-53, w pairs 0-4 = ch 86-95
    idx = rope_channels(128, (6, 5, 5)).tolist()
    assert idx == list(range(0, 12)) + list(range(44, 54)) + list(range(86, 96))


def test_full_rank_spectral_conversion_reproduces_dense_kv_exactly():
    torch.manual_seed(0)
    mha = MHAttention(DENSE)
    cfg = _mla_cfg(d_c=64)  # rank of [W_K^nope; W_V] (96 x 64) is 64
    mla = mha_to_mla(mha, cfg)
    M = _parts(mha, cfg)
    torch.testing.assert_close(mla_kv_operator(mla), M, atol=1e-5, rtol=1e-5)
    # value bias folded into the output bias
    torch.testing.assert_close(mla.o.bias, mha.o.bias + mha.o.weight @ mha.v.bias)


def test_rank_r_error_is_the_svd_tail():
    torch.manual_seed(1)
    mha = MHAttention(DENSE)
    for r in (8, 24, 40):
        cfg = _mla_cfg(d_c=r)
        M = _parts(mha, cfg)
        err = (mla_kv_operator(mha_to_mla(mha, cfg)) - M).norm() ** 2
        s = torch.linalg.svdvals(M)
        assert abs(err.item() - s[r:].pow(2).sum().item()) < 1e-4 * s.pow(2).sum().item()


def test_effective_rank():
    u, _ = torch.linalg.qr(torch.randn(50, 50, dtype=torch.float64))
    s = torch.tensor([10.0, 5.0, 3.0] + [1e-4] * 47, dtype=torch.float64)
    m = u @ torch.diag(s) @ u.T
    assert effective_rank(m, 0.99) == 3
    assert effective_rank(m, 0.7) == 1
    assert effective_rank(torch.eye(20), 0.99) == 20


def test_random_init_and_model_conversion_keep_non_attention_weights():
    dense = build_model(get_preset("test-mha").model, seed=0)
    cfg = get_preset("test-mla").model
    for init in ("spectral", "random"):
        mla = convert_model(dense, cfg, init)
        torch.testing.assert_close(mla.blocks[1].ffn[0].weight, dense.blocks[1].ffn[0].weight)
        rows = rank_report([b.self_attn for b in mla.blocks])
        assert all(r["rank"] <= cfg.mla.d_c for r in rows)  # the latent bottleneck caps the rank
    dense_rows = rank_report([b.self_attn for b in dense.blocks])
    assert all(r["rank"] > cfg.mla.d_c for r in dense_rows)
    assert dense_kv_operator(dense.blocks[0].self_attn).shape == (128, 64)
