import pytest

from videomla_app.config import PRESETS, CacheConfig, MLAConfig, ModelConfig, get_preset


def test_videomla_preset_is_paper_table_4():
    p = get_preset("videomla-1.3b")
    m = p.model
    assert (m.n_layers, m.dim, m.n_heads, m.head_dim, m.ffn_dim) == (30, 1536, 12, 128, 8960)
    assert (m.mla.d_c, m.mla.d_q, m.mla.d_nope, m.mla.d_rope, m.mla.rope_pairs) == (192, 768, 96, 32, (6, 5, 5))
    assert m.patch == (1, 2, 2) and m.latent_channels == 16 and m.tokens_per_frame == 1560
    assert (p.cache.sink_frames, p.cache.window_frames, p.cache.chunk_frames) == (1, 6, 3)
    assert p.sampler.steps == (1000, 750, 500, 250) and p.sampler.shift == 5.0 and p.sampler.warp
    assert (p.video.height, p.video.width, p.video.fps) == (480, 832, 16)


def test_cache_scalars_and_reduction():
    m = get_preset("videomla-1.3b").model
    assert m.cache_scalars_per_token() == 224 and m.dense_scalars_per_token() == 3072
    assert round(1 - 224 / 3072, 3) == 0.927


def test_self_forcing_is_same_backbone_dense_21_frames():
    sf, ml = get_preset("self-forcing-1.3b"), get_preset("videomla-1.3b")
    assert sf.model.attn == "mha" and sf.model.mla is None
    assert (sf.model.dim, sf.model.n_layers, sf.model.n_heads) == (ml.model.dim, ml.model.n_layers, ml.model.n_heads)
    assert sf.cache.capacity_frames == 21 and sf.cache.sink_frames == 0


def test_all_presets_construct_and_unknown_name_lists_known():
    for p in PRESETS.values():
        assert p.model.tokens_per_frame > 0
    with pytest.raises(KeyError, match="known: .*videomla-1.3b"):
        get_preset("videomla-99b")


@pytest.mark.parametrize("bad", [
    dict(mla=MLAConfig(d_c=8, d_q=8, d_nope=10, d_rope=16, rope_pairs=(4, 2, 2)), dim=64, n_heads=2),
    dict(mla=MLAConfig(d_c=8, d_q=8, d_nope=16, d_rope=16, rope_pairs=(4, 2, 2)), dim=64, n_heads=3),
    dict(latent_hw=(5, 4)),
])
def test_bad_model_configs_are_rejected(bad):
    with pytest.raises(ValueError):
        ModelConfig(**bad)


def test_rope_pairs_must_match_d_rope():
    with pytest.raises(ValueError, match="rope_pairs"):
        MLAConfig(d_rope=32, rope_pairs=(6, 5, 4))
    with pytest.raises(ValueError):
        CacheConfig(chunk_frames=0)


def test_context_noise_override_sets_the_cache_write_timestep_and_checks_it():
    """A session's recorded cache-write noise reopens its pipeline with that noise (``extend``)."""
    from videomla_app.models import configure

    p = configure(get_preset("test-mla"), context_noise=25)
    assert p.sampler.context_noise == 25.0 and get_preset("test-mla").sampler.context_noise == 0.0
    for bad in (-1.0, 1001.0, float("nan")):
        with pytest.raises(ValueError, match="context noise must be a timestep between 0 and 1000"):
            configure(get_preset("test-mla"), context_noise=bad)
