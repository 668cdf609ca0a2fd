"""MLA backends agree; streaming through the cache equals the one-forward training form."""

import pytest
import torch

from videomla_app.cache import make_cache
from videomla_app.config import CacheConfig, get_preset
from videomla_app.model import build_model


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _wrapped_cache_step(model, p, frames=13):
    cache = make_cache(p.model, p.cache)
    for t in cache.tensors.values():
        t.copy_(torch.randn(t.shape))
    C = p.cache.chunk_frames
    for f0 in range(0, frames - frames % C, C):
        cache.commit(cache.plan(f0, C))
    step = cache.plan(cache.committed, C)
    return cache, step


def test_backends_agree_on_a_wrapped_ring_with_sink():
    torch.manual_seed(0)
    p = get_preset("test-mla").with_(cache=CacheConfig(sink_frames=2, window_frames=3, chunk_frames=2))
    model = build_model(p.model, seed=1)
    attn = model.blocks[0].self_attn
    x = torch.randn(1, 2 * p.model.tokens_per_frame, p.model.dim)
    outs = {}
    cache, step = _wrapped_cache_step(model, p)
    assert step.key_frames[:2] == (0, 1) and min(step.key_frames[2:]) > 2  # sink + slid window
    for b in ("reference", "naive", "absorb", "auto"):
        attn.backend = b
        with torch.no_grad():
            outs[b] = attn(x, model.attn_inputs(step, cache))
    for b in ("naive", "absorb", "auto"):
        assert _rel(outs[b], outs["reference"]) <= 1e-5, b


def test_absorbed_weights_follow_weight_changes():
    p = get_preset("test-mla")
    attn = build_model(p.model, seed=0).blocks[0].self_attn
    A1, _ = attn.absorbed()
    with torch.no_grad():
        attn.w_uk.weight.mul_(2)
    A2, _ = attn.absorbed()
    torch.testing.assert_close(A2, 2 * A1)


@pytest.mark.parametrize("name,backend", [("test-mla", "reference"), ("test-mla", "naive"), ("test-mla", "absorb"),
                                          ("test-mla", "auto"), ("test-mha", "sdpa")])
@pytest.mark.parametrize("geometry", [(1, 2, 2), (2, 3, 2), (0, 4, 2)])
def test_streaming_equals_training_form(name, backend, geometry):
    """Chunk by chunk through the cache == one forward with the chunk-causal sink/window mask,
    with the window wrapping several times (14 frames through a 4-5 frame ring)."""
    S, W, C = geometry
    p = get_preset(name).with_(cache=CacheConfig(S, W, C))
    model = build_model(p.model, seed=0)
    model.set_attn_backend(backend)
    g = torch.Generator().manual_seed(1)
    n = 14
    x = torch.randn(1, n, p.model.latent_channels, *p.model.latent_hw, generator=g)
    t = torch.rand(1, n, generator=g) * 1000
    text = model.encode_text(torch.randn(1, p.text_len, p.model.text_dim, generator=g))
    with torch.no_grad():
        full = model.forward_train(x, t, text, p.cache)
        cache, outs = make_cache(p.model, p.cache), []
        for f0 in range(0, n, C):
            step = cache.plan(f0, min(C, n - f0))
            outs.append(model(x[:, f0:f0 + step.n], t[:, f0:f0 + step.n], text, cache, step))
            cache.commit(step)
    assert _rel(torch.cat(outs, 1), full) < 1e-5


def test_training_form_mask_shape_and_sink_copies():
    p = get_preset("test-mla").with_(cache=CacheConfig(1, 2, 2))
    model = build_model(p.model, seed=0)
    a = model.train_inputs(8, p.cache)
    P = p.model.tokens_per_frame
    # chunks 0..3; windows slide from chunk 2 on -> 2 chunks get a private copy of the sink frame
    assert a.mask.shape == (8 * P, (8 + 2) * P)
    assert not a.mask[6 * P, :P].any() and a.mask[6 * P, 8 * P + P:].all()  # chunk 3 sees its sink copy
    assert a.mask[0, :2 * P].all() and not a.mask[0, 2 * P:8 * P].any()  # chunk 0 sees only itself


@pytest.mark.parametrize("name,backend", [("test-mla", "naive"), ("test-mla", "absorb"), ("test-mha", "sdpa")])
def test_teacher_forcing_form_equals_denoise_then_cache_write(name, backend):
    """[clean | noisy] in one forward == per chunk: a denoising step on the noisy chunk against the
    clean cache, then the cache-write pass on the clean chunk (what inference does)."""
    p = get_preset(name).with_(cache=CacheConfig(1, 2, 2))
    model = build_model(p.model, seed=3)
    model.set_attn_backend(backend)
    g = torch.Generator().manual_seed(2)
    n, C = 10, 2
    clean = torch.randn(1, n, p.model.latent_channels, *p.model.latent_hw, generator=g)
    noisy = torch.randn(1, n, p.model.latent_channels, *p.model.latent_hw, generator=g)
    t = torch.rand(1, n, generator=g) * 1000
    t_all = torch.cat([torch.zeros(1, n), t], 1)
    text = model.encode_text(torch.randn(1, p.text_len, p.model.text_dim, generator=g))
    with torch.no_grad():
        full = model.forward_train(torch.cat([clean, noisy], 1), t_all, text, p.cache, teacher_forcing=True)
        cache, den, ctx = make_cache(p.model, p.cache), [], []
        for f0 in range(0, n, C):
            step = cache.plan(f0, C)
            den.append(model(noisy[:, f0:f0 + C], t[:, f0:f0 + C], text, cache, step))
            ctx.append(model(clean[:, f0:f0 + C], 0.0, text, cache, step))
            cache.commit(step)
    assert _rel(torch.cat(den, 1), full[:, n:]) < 1e-5
    assert _rel(torch.cat(ctx, 1), full[:, :n]) < 1e-5


@pytest.mark.parametrize("name", ["test-mla", "test-mha"])
def test_write_context_writes_exactly_what_a_full_forward_writes(name):
    """The cache-write pass stops after the last layer's K/V write; the cache it leaves behind must
    be bit-identical to a full forward's, chunk after chunk, and later chunks must read the same."""
    p = get_preset(name).with_(cache=CacheConfig(1, 2, 2))
    model = build_model(p.model, seed=5)
    g = torch.Generator().manual_seed(4)
    text = model.encode_text(torch.randn(1, p.text_len, p.model.text_dim, generator=g))
    full, lean = make_cache(p.model, p.cache), make_cache(p.model, p.cache)
    with torch.no_grad():
        for f0 in range(0, 8, 2):
            x = torch.randn(1, 2, p.model.latent_channels, *p.model.latent_hw, generator=g)
            s_full, s_lean = full.plan(f0, 2), lean.plan(f0, 2)
            assert model(x, 0.0, text, full, s_full) is not None
            assert model.write_context(x, 0.0, text, lean, s_lean) is None
            full.commit(s_full)
            lean.commit(s_lean)
            for k in full.tensors:
                assert torch.equal(full.tensors[k], lean.tensors[k]), k
        step = full.plan(8, 2)
        x = torch.randn(1, 2, p.model.latent_channels, *p.model.latent_hw, generator=g)
        assert torch.equal(model(x, 500.0, text, full, step), model(x, 500.0, text, lean, lean.plan(8, 2)))


def test_triton_backend_matches_reference_under_the_interpreter():
    """The model's `triton` backend (absorbed kernel with RoPE on read) against the fp32 oracle,
    through a wrapped cache with a sink. On CPU the kernel runs in Triton's interpreter (tests only)."""
    vk = pytest.importorskip("videomla_kernels")
    if vk.triton_mode() == "torch":
        pytest.skip("triton is not installed")
    from videomla_app.config import MLAConfig

    base = get_preset("test-mla")
    p = base.with_(model=base.model.__class__(**{**base.model.__dict__, "mla": MLAConfig(
        d_c=32, d_q=32, d_nope=16, d_rope=16, rope_pairs=(4, 2, 2))}))
    model = build_model(p.model, seed=4)
    attn = model.blocks[1].self_attn
    x = torch.randn(1, 2 * p.model.tokens_per_frame, p.model.dim)
    cache, step = _wrapped_cache_step(model, p)
    outs = {}
    for b in ("reference", "triton"):
        attn.backend = b
        with torch.no_grad():
            outs[b] = attn(x, model.attn_inputs(step, cache))
    assert _rel(outs["triton"], outs["reference"]) <= 1e-5


def test_fast_gelu_in_bf16_inference_is_as_close_as_bf16_itself():
    """The erf GELU that bf16 CPU inference uses stays a tanh GELU to bf16 precision: a whole
    chunk forward is no further from the fp32 tanh model than the bf16 tanh model is."""
    from videomla_app.model import GELUTanh

    p = get_preset("test-mla")
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 2, p.model.latent_channels, *p.model.latent_hw, generator=g)
    ctx = torch.randn(1, p.text_len, p.model.text_dim, generator=g)

    def run(dtype, grad):
        model = build_model(p.model, dtype=dtype, seed=7)
        cache = make_cache(p.model, p.cache, dtype=dtype)
        with torch.set_grad_enabled(grad):
            return model(x.to(dtype), 500.0, model.encode_text(ctx.to(dtype)), cache, cache.plan(0, 2)).float()

    ref = run(torch.float32, False)
    tanh_bf16, fast_bf16 = run(torch.bfloat16, True), run(torch.bfloat16, False)
    assert not torch.equal(tanh_bf16, fast_bf16)  # the fast form did run
    assert _rel(fast_bf16, ref) < 1.5 * _rel(tanh_bf16, ref)
    act = torch.linspace(-6, 6, 4097)
    with torch.no_grad():
        assert torch.equal(GELUTanh()(act), torch.nn.functional.gelu(act, approximate="tanh"))  # fp32: exact form

