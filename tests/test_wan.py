"""The Wan pieces (umT5 text encoder, Wan VAE) on tiny random configs: no downloads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from videomla_app.encoders import pixel_frames

pytest.importorskip("diffusers")

from videomla_app.wan_text import WanTextEncoder, clean_prompt  # noqa: E402
from videomla_app.wan_vae import WanVAE  # noqa: E402

TINY_VAE = dict(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                temperal_downsample=[False, True, True], latents_mean=[0.1, -0.2, 0.3, 0.0],
                latents_std=[1.5, 0.5, 2.0, 1.0])


@pytest.fixture(scope="module")
def vae() -> WanVAE:
    return WanVAE.from_config(TINY_VAE, seed=0, dtype=torch.float32)


def _latents(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, n, 4, 4, 6, generator=torch.Generator().manual_seed(seed))  # [1, n, C, h, w]


def test_geometry_follows_the_config(vae):
    assert (vae.latent_channels, vae.temporal_stride, vae.spatial_stride) == (4, 4, 8)
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):  # Wan2.1's defaults, without allocating 127 M parameters
        full = AutoencoderKLWan()
    assert sum(p.numel() for p in full.parameters()) == 126_892_531  # planner.WAN21_VAE_PARAMS
    assert len(full.config.latents_mean) == len(full.config.latents_std) == full.config.z_dim == 16


def test_streaming_decode_equals_diffusers_whole_clip_decode(vae):
    lat = _latents(7)
    full = vae.vae.decode(vae.denormalize(lat)).sample  # diffusers, all 7 latent frames at once
    dec = vae.decoder()
    parts = [dec.decode_tensor(lat[:, a:b]) for a, b in ((0, 1), (1, 4), (4, 7))]  # 1 + 3 + 3
    chunked = torch.cat(parts, dim=2)
    assert chunked.shape == full.shape == (1, 3, pixel_frames(7, 4), 32, 48)
    assert (chunked - full).abs().max().item() <= 1e-6
    assert [p.shape[2] for p in parts] == [1, 12, 12]  # frame 0 -> 1 pixel frame, then 4 each
    dec2 = vae.decoder()  # uint8 frames: identical whatever the chunking
    a = np.concatenate([dec2.decode(lat[:, :3]), dec2.decode(lat[:, 3:7])])
    b = vae.decoder().decode(lat)
    assert a.dtype == np.uint8 and a.shape == (25, 32, 48, 3) and np.array_equal(a, b)


def test_decoder_state_round_trip_continues_exactly(vae):
    lat = _latents(7, seed=1)
    ref = vae.decoder()
    ref.decode(lat[:, :1])
    rep_state = ref.state_dict()
    assert rep_state["rep"].numel() > 0 and int(rep_state["frames"]) == 1  # "Rep" markers survive a save
    ref.decode(lat[:, 1:4])
    state = ref.state_dict()
    assert all(v.device.type == "cpu" for v in state.values())
    want = ref.decode(lat[:, 4:7])
    fresh = vae.decoder()
    fresh.load_state_dict(state)
    assert np.array_equal(fresh.decode(lat[:, 4:7]), want)
    fresh.load_state_dict(rep_state)  # restart right after the first frame
    again = vae.decoder()
    again.decode(lat[:, :1])
    assert np.array_equal(fresh.decode(lat[:, 1:4]), again.decode(lat[:, 1:4]))


def test_encode_then_decode_shapes_and_normalisation(vae):
    frames = np.random.default_rng(0).integers(0, 256, (13, 32, 48, 3), dtype=np.uint8)
    z = vae.encode(frames, chunk_frames=4)
    assert z.shape == (1, 4, 4, 4, 6) and z.dtype == torch.float32  # 1 + 4*3 frames -> 4 latent frames
    x = torch.from_numpy(frames).float().div(127.5).sub(1).permute(3, 0, 1, 2)[None]
    raw = vae.vae.encode(x).latent_dist.mode()  # diffusers in one call
    assert torch.allclose(z, vae.normalize(raw), atol=1e-6)
    m, s = torch.tensor(TINY_VAE["latents_mean"]), torch.tensor(TINY_VAE["latents_std"])
    assert torch.allclose(z[0, :, 0], ((raw[0, 0] - m[0]) / s[0]), atol=1e-6)  # (z - mean) / std per channel
    assert torch.allclose(vae.denormalize(z), raw, atol=1e-5)
    out = vae.decoder().decode(z)
    assert out.shape == (13, 32, 48, 3) and out.dtype == np.uint8
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        vae.encode(frames[:12])


def test_bf16_decode_runs_and_stays_in_dtype():
    v = WanVAE.from_config(TINY_VAE, seed=0, dtype=torch.bfloat16)
    dec = v.decoder()
    y = dec.decode_tensor(_latents(2))
    assert y.dtype == torch.bfloat16 and y.shape == (1, 3, 5, 32, 48)
    assert all(t.dtype == torch.bfloat16 for k, t in dec.state_dict().items() if k.startswith("feat."))


# -- umT5 --------------------------------------------------------------------------------------

def _tiny_umt5():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in "a red ball bouncing the turns blue green star".split():
        vocab[w] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    cfg = UMT5Config(vocab_size=16, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=2,
                     feed_forward_proj="gated-gelu", relative_attention_num_buckets=8,
                     relative_attention_max_distance=16, pad_token_id=0, eos_token_id=1,
                     decoder_start_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = UMT5EncoderModel(cfg)
    return model, tok


def test_umt5_states_are_padded_masked_and_batch_independent():
    model, tok = _tiny_umt5()
    enc = WanTextEncoder(model, tok, dtype=torch.float32, text_len=8)
    assert (enc.text_dim, enc.text_len) == (16, 8)
    ids, mask = enc.tokenize(["a red   ball", "blue"])
    assert ids.shape == mask.shape == (2, 8)
    assert mask.sum(1).tolist() == [4, 2]  # words + </s>
    y = enc.encode(["a red ball", "blue", "a red ball"])
    assert y.shape == (3, 8, 16) and y.dtype == torch.float32
    assert (y[0, :4].abs().sum(-1) > 0).all() and (y[0, 4:] == 0).all()  # zero past the prompt's tokens
    assert (y[1, 2:] == 0).all()
    assert torch.equal(y[0], y[2]) and torch.equal(enc.encode(["a red ball"])[0], y[0])
    ref = model(input_ids=ids[:1], attention_mask=mask[:1]).last_hidden_state[0, :4]
    assert torch.allclose(y[0, :4], ref)
    long = enc.encode([" ".join(["red"] * 20)])
    assert long.shape == (1, 8, 16) and (long[0].abs().sum(-1) > 0).all()  # truncated at text_len


def test_umt5_offload_moves_weights_to_cpu_and_still_encodes():
    model, tok = _tiny_umt5()
    enc = WanTextEncoder(model, tok, dtype=torch.bfloat16, text_len=8)
    assert all(p.dtype == torch.bfloat16 for p in enc.model.parameters())
    before = enc.encode(["a green star"])
    enc.offload()
    assert enc.offloaded and all(p.device.type == "cpu" for p in enc.model.parameters())
    after = enc.encode(["a green star"])
    assert after.dtype == torch.bfloat16 and torch.equal(before, after)
    assert all(p.device.type == "cpu" for p in enc.model.parameters())  # back on the CPU after encoding
    assert enc.nbytes == sum(p.numel() for p in model.parameters()) * 2


def test_prompt_cleaning():
    assert clean_prompt("  a &amp;  red\n ball ") == "a & red ball"


@pytest.mark.gpu
def test_umt5_offload_frees_gpu_memory():
    model, tok = _tiny_umt5()
    enc = WanTextEncoder(model, tok, device="cuda", dtype=torch.bfloat16, text_len=8)
    y = enc.encode(["a red ball"])
    assert y.device.type == "cuda" and enc.param_device.type == "cuda"
    enc.offload()
    assert enc.param_device.type == "cpu"
    assert torch.equal(enc.encode(["a red ball"]), y) and enc.param_device.type == "cpu"


# -- in the pipeline ---------------------------------------------------------------------------

def _wan_pipeline(vae: WanVAE):
    from dataclasses import replace

    from videomla_app.config import VideoConfig, get_preset
    from videomla_app.encoders import ToyTextEncoder
    from videomla_app.model import build_model
    from videomla_app.pipeline import StreamingPipeline

    p = get_preset("test-mla")
    p = replace(p, name="test-mla-wan", model=replace(p.model, latent_hw=(4, 6)),
                video=VideoConfig(height=32, width=48, fps=16, temporal_stride=4, spatial_stride=8))
    model = build_model(p.model, seed=0)
    return StreamingPipeline(p, model, ToyTextEncoder(p.model.text_dim, p.text_len), vae)


def test_pipeline_streams_through_the_wan_vae_and_sessions_continue_exactly(vae, tmp_path):
    from videomla_app.session import load_session, save_session
    from videomla_app.timeline import Timeline

    pipe = _wan_pipeline(vae)
    events = list(pipe.stream("a red ball", 3, seed=0))  # 3 chunks x 2 latent frames
    frames = np.concatenate([e.frames for e in events])
    assert [len(e.frames) for e in events] == [5, 8, 8] and len(frames) == pixel_frames(6, 4)
    latents = torch.cat([e.latents for e in events], dim=1)
    assert np.array_equal(frames, vae.decoder().decode(latents))  # streamed == whole-clip decode
    assert events[-1].seconds == pytest.approx(21 / 16)

    state = pipe.new_state(0)  # 2 chunks, save the session, continue in a fresh state
    first = list(pipe.stream("a red ball", 2, state=state))
    save_session(tmp_path / "s.safetensors", pipe, state, Timeline.single("a red ball"))
    restored, timeline, _ = load_session(tmp_path / "s.safetensors", pipe)
    more = list(pipe.stream(timeline, 1, state=restored))
    assert np.array_equal(np.concatenate([e.frames for e in first + more]), frames)
