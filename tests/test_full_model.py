"""A download-tier model end to end on tiny random pieces written in the real on-disk layouts: a
Self-Forcing ``.pt`` (generator_ema, ``model.`` prefix, Wan names) and a diffusers snapshot with
``text_encoder/``, ``tokenizer/`` and ``vae/``. ``load_pipeline`` must build the same pipeline the
pieces describe, and a geometry mismatch must be refused in one line."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from videomla_app import config, hub, models  # noqa: E402
from videomla_app.errors import RunError  # noqa: E402
from videomla_app.model import build_model  # noqa: E402

TINY_VAE = dict(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                temperal_downsample=[False, True, True], latents_mean=[0.1, -0.2, 0.3, 0.0],
                latents_std=[1.5, 0.5, 2.0, 1.0])


def _snapshot(root, text_dim: int):
    from tokenizers import Tokenizer, models as tkm, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    from videomla_app.wan_vae import WanVAE

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate("a red ball blue".split())}}
    tk = Tokenizer(tkm.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer, tk.pre_tokenizer = normalizers.Lowercase(), pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(root / "tokenizer")
    cfg = UMT5Config(vocab_size=16, d_model=text_dim, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                     feed_forward_proj="gated-gelu", relative_attention_num_buckets=8,
                     relative_attention_max_distance=16, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(0)
    UMT5EncoderModel(cfg).save_pretrained(root / "text_encoder")
    WanVAE.from_config(TINY_VAE, seed=0, dtype=torch.float32).vae.save_pretrained(root / "vae")


@pytest.fixture()
def full_model(tmp_path, monkeypatch):
    """Register 'wan-test' (download tier) whose files are the tiny pieces in tmp_path."""
    base = config.get_preset("test-mha")
    preset = replace(base, name="wan-test", model=replace(base.model, latent_hw=(4, 6)),
                     video=config.VideoConfig(height=32, width=48, fps=16, temporal_stride=4, spatial_stride=8))
    monkeypatch.setitem(config.PRESETS, "wan-test", preset)
    monkeypatch.setitem(models.REGISTRY, "wan-test", models.ModelEntry("wan-test", "wan-test", "download", "test"))
    snap = tmp_path / "snapshot"
    _snapshot(snap, preset.model.text_dim)
    dit = build_model(preset.model, seed=3)
    sd = {f"model.{k}": v for k, v in dit.state_dict().items()}
    torch.save({"generator": {k: torch.zeros_like(v) for k, v in sd.items()}, "generator_ema": sd},
               tmp_path / "self_forcing.pt")
    paths = {"dit": tmp_path / "self_forcing.pt", "text_encoder": snap / "text_encoder",
             "tokenizer": snap / "tokenizer", "vae": snap / "vae"}
    monkeypatch.setattr(hub, "missing_files", lambda entry: [])
    monkeypatch.setattr(hub, "role_paths", lambda entry: paths)
    monkeypatch.setenv("VIDEOMLA_CACHE_DIR", str(tmp_path / "cache"))
    return preset, dit


def test_downloaded_model_loads_and_streams(full_model):
    preset, dit = full_model
    pipe = models.load_pipeline("wan-test", device="cpu", dtype="float32")
    for k, v in pipe.model.state_dict().items():  # generator_ema, every tensor
        assert torch.equal(v, dit.state_dict()[k]), k
    assert pipe.vae.temporal_stride == 4 and type(pipe.text_encoder).__name__ == "WanTextEncoder"
    events = list(pipe.stream("a red ball", 2, seed=0))
    frames = np.concatenate([e.frames for e in events])
    assert frames.shape == (1 + 4 * 3, 32, 48, 3) and frames.dtype == np.uint8  # chunks of 2 latent frames
    again = np.concatenate([e.frames for e in models.load_pipeline("wan-test", device="cpu", dtype="float32")
                            .stream("a red ball", 2, seed=0)])
    assert np.array_equal(frames, again)  # second load comes from the conversion cache: same video


def test_cpu_is_refused_unless_asked(full_model):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RunError, match="needs a CUDA GPU.*--model tiny.*--device cpu"):
        models.load_pipeline("wan-test")


def test_geometry_mismatch_is_refused(full_model, monkeypatch):
    preset, _ = full_model
    monkeypatch.setitem(config.PRESETS, "wan-test", replace(preset, video=replace(preset.video, temporal_stride=1)))
    with pytest.raises(RunError, match=r"do not fit the model: VAE strides 4x8 vs preset 1x8"):
        models.load_pipeline("wan-test", device="cpu", dtype="float32")
