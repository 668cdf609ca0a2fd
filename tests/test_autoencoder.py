"""The causal video autoencoder: shapes, exact streaming/continuation, causality, files, training."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from videomla_app.autoencoder import (AE_PRESETS, AEConfig, CausalVideoAE, build_autoencoder, get_ae_config,
                                      loss_terms, param_count, reconstruction_loss)
from videomla_app.encoders import pixel_frames

TINY = get_ae_config("ae-tiny")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These convs are tiny: one intra-op thread keeps them fast when the 2-core box is shared
    (two OpenMP threads fighting other processes for a core made this file 10x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def moving_squares(batch: int, frames: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """uint8 [B, F, size, size, 3]: a coloured square sliding over a coloured background."""
    rng = np.random.default_rng(seed)
    out = np.empty((batch, frames, size, size, 3), np.uint8)
    for b in range(batch):
        bg, fg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        side = int(rng.integers(size // 5, size // 2))
        x, y = rng.integers(0, size - side, 2)
        vx, vy = rng.integers(-3, 4, 2)
        for f in range(frames):
            out[b, f] = bg
            px, py = (x + vx * f) % (size - side), (y + vy * f) % (size - side)
            out[b, f, py:py + side, px:px + side] = fg
    return out


def _latents(cfg: AEConfig, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, n, cfg.latent_channels, *cfg.latent_hw, generator=g)


def test_presets_and_validation():
    d = get_ae_config("ae-128-s8")
    assert (d.spatial_stride, d.latent_channels, d.latent_hw, d.temporal_stride) == (8, 16, (16, 16), 1)
    assert 300_000 <= param_count(CausalVideoAE(d)) <= 1_500_000
    assert {AE_PRESETS[n].temporal_stride for n in ("ae-128-s8-t2", "ae-128-s8-t4")} == {2, 4}
    for cfg in AE_PRESETS.values():
        assert AEConfig.from_json(cfg.to_json()) == cfg
    for bad in (dict(temporal_stride=3), dict(blocks=(1, 1)), dict(temporal_levels=(7,)),
                dict(frame_size=(100, 128)), dict(temporal_kernel=1)):
        with pytest.raises(ValueError):
            replace(d, **bad)
    with pytest.raises(KeyError, match="ae-128-s8"):
        get_ae_config("nope")


def test_default_shapes_128():
    ae = build_autoencoder("ae-128-s8")
    frames = moving_squares(1, 3, 128)[0]
    z = ae.encode(frames)
    assert z.shape == (1, 3, 16, 16, 16) and z.dtype == torch.float32
    out = ae.decoder().decode(z)
    assert out.shape == (3, 128, 128, 3) and out.dtype == np.uint8


@pytest.mark.parametrize("ts", [1, 2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_decode_equals_whole_decode(ts, dtype):
    cfg = replace(TINY, temporal_stride=ts)
    ae = build_autoencoder(cfg, seed=1, dtype=dtype)
    z = _latents(cfg, 7)
    whole = ae.decoder().decode(z)
    assert whole.shape[0] == pixel_frames(7, ts)
    dec = ae.decoder()
    parts = [dec.decode(z[:, a:b]) for a, b in ((0, 1), (1, 3), (3, 3), (3, 6), (6, 7))]
    assert np.array_equal(whole, np.concatenate(parts))


@pytest.mark.parametrize("ts", [1, 4])
def test_state_dict_continues_exactly_and_matters(ts):
    cfg = replace(TINY, temporal_stride=ts)
    ae = build_autoencoder(cfg, seed=2)
    z = _latents(cfg, 6, seed=3)
    whole = ae.decoder().decode(z)
    dec = ae.decoder()
    head = dec.decode(z[:, :3])
    state = dec.state_dict()
    assert int(state["frames"]) == 3 and any(k != "frames" for k in state)
    resumed = ae.decoder()
    resumed.load_state_dict({k: v.clone() for k, v in state.items()})
    assert np.array_equal(whole, np.concatenate([head, resumed.decode(z[:, 3:])]))
    # without the state the continuation differs: the temporal caches really carry information
    assert not np.array_equal(whole[len(head):], ae.decoder().decode(z[:, 3:])[-len(whole[len(head):]):])


def test_encoder_and_decoder_are_causal():
    ae = build_autoencoder(TINY, seed=4)
    frames = moving_squares(1, 6)[0]
    changed = frames.copy()
    changed[4:] = 255 - changed[4:]
    za, zb = ae.encode(frames), ae.encode(changed)
    assert torch.equal(za[:, :4], zb[:, :4]) and not torch.equal(za[:, 4:], zb[:, 4:])
    z2 = za.clone()
    z2[:, 4] += 1.0
    a, b = ae.decoder().decode(za), ae.decoder().decode(z2)
    assert np.array_equal(a[:4], b[:4]) and not np.array_equal(a[4:], b[4:])


def test_temporal_stride_frame_mapping():
    ae = build_autoencoder(replace(TINY, temporal_stride=4), seed=5)
    frames = moving_squares(1, 9)[0]
    z = ae.encode(frames)
    assert z.shape[1] == 3 and ae.decoder().decode(z).shape[0] == pixel_frames(3, 4) == 9
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        ae.encode(frames[:8])


def test_chunked_encode_matches_whole_clip():
    ae = build_autoencoder(replace(TINY, temporal_stride=2), seed=6)
    frames = moving_squares(1, 13)[0]
    a, b = ae.encode(frames, chunk_frames=4), ae.encode(frames, chunk_frames=64)
    assert a.shape == b.shape == (1, 7, TINY.latent_channels, 4, 4)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bf16", [False, True])
def test_batched_clip_encode_equals_encoding_each_clip(bf16):
    """Training encodes a batch in one call; for clips within one streaming chunk that is exactly
    the streaming encode of each clip, also under the trainer's bf16 autocast."""
    ae = build_autoencoder(TINY, seed=3)
    ae.latent_mean, ae.latent_std = torch.randn(TINY.latent_channels), torch.rand(TINY.latent_channels) + 0.5
    clips = moving_squares(3, 6, seed=2)  # [3, 6, 32, 32, 3]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        each = torch.cat([ae.encode(c) for c in clips])
        batched = ae.encode_clips(clips)
    assert batched.shape == (3, 6, TINY.latent_channels, 4, 4) and batched.dtype == torch.float32
    assert torch.equal(batched, each)
    assert not torch.equal(batched[0], batched[1])
    with pytest.raises(ValueError, match=r"needs 1 \+ 2k frames"):
        build_autoencoder(replace(TINY, temporal_stride=2)).encode_clips(clips)


def test_latent_stats_save_and_load(tmp_path):
    ae = build_autoencoder(TINY, seed=7)
    clips = list(moving_squares(4, 5, seed=1))
    ae.fit_latent_stats(clips)
    z = torch.cat([ae.encode(c) for c in clips], dim=1)  # [1, 20, C, h, w]
    flat = z.transpose(1, 2).flatten(2)  # [1, C, N]
    torch.testing.assert_close(flat.mean(-1), torch.zeros_like(flat.mean(-1)), atol=1e-4, rtol=0)
    torch.testing.assert_close(flat.std(-1, correction=0), torch.ones_like(flat.mean(-1)), atol=1e-3, rtol=0)
    ae.save(tmp_path / "ae.safetensors")
    back = CausalVideoAE.load(tmp_path / "ae.safetensors")
    assert back.cfg == TINY and torch.equal(back.latent_std, ae.latent_std)
    assert torch.equal(back.encode(clips[0]), z[:, :5])
    assert np.array_equal(back.decoder().decode(z), ae.decoder().decode(z))
    half = CausalVideoAE.load(tmp_path / "ae.safetensors", dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.latent_mean.dtype == torch.float32
    diff = np.abs(half.decoder().decode(z).astype(int) - ae.decoder().decode(z).astype(int))
    assert diff.mean() < 4  # bf16 decode stays close to fp32


def test_a_few_dozen_steps_lower_the_loss():
    torch.manual_seed(0)
    ae = build_autoencoder(TINY, seed=8).train()
    batch = moving_squares(4, 3, seed=2)
    with torch.no_grad():
        before = {k: float(v) for k, v in loss_terms(ae, batch).items()}
    assert set(before) == {"l1", "edge", "temporal", "latent", "total"}
    opt = torch.optim.Adam(ae.parameters(), lr=2e-3)
    for _ in range(40):
        loss = reconstruction_loss(ae, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(reconstruction_loss(ae, batch))
    assert after < 0.7 * before["total"], (before, after)


def test_runs_inside_the_streaming_pipeline(tmp_path):
    """Behind the VideoVAE protocol: streams, saves a session, continues bit-exactly."""
    from helpers import tiny_pipeline
    from videomla_app.pipeline import StreamingPipeline, Timeline
    from videomla_app.session import load_session, save_session

    def pipe() -> StreamingPipeline:
        p = tiny_pipeline()
        cfg = replace(TINY, latent_channels=p.model.cfg.latent_channels)
        return StreamingPipeline(p.preset, p.model, p.text_encoder, build_autoencoder(cfg, seed=9))

    ref = np.concatenate([e.frames for e in pipe().stream("a red ball", 4, seed=1)])
    assert ref.shape == (8, 32, 32, 3)
    p1 = pipe()
    state = p1.new_state(1)
    head = [e.frames for e in p1.stream("a red ball", 2, state=state)]
    save_session(tmp_path / "s.safetensors", p1, state, Timeline.single("a red ball"))
    p2 = pipe()
    state2, tl, _ = load_session(tmp_path / "s.safetensors", p2)
    rest = [e.frames for e in p2.stream(tl, 2, state=state2)]
    assert np.array_equal(ref, np.concatenate(head + rest))
