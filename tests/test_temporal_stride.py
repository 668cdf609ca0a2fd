"""A 4x temporal stride for the embedded model: the autoencoder restrided from a stride-1 one, its
decoder-only training stage, DiT training on strided latents, and the app on such a build.

Why it exists: at one latent frame per video frame the models learned to copy the last frame
(objects move a quarter of a latent pixel per frame); 4 frames per latent frame give the DiT 4x
the motion per frame and make 12 frames per chunk for the same model calls (README).
"""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from videomla_app.autoencoder import CausalVideoAE, build_autoencoder, restride
from videomla_app.cli import app
from videomla_app.train.data import latent_cover
from videomla_app.train.loop import read_checkpoint_log
from videomla_app.train.stages import RECIPES, LatentData, recipe_text_encoder
from videomla_app.video_io import probe, read_frames


def frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_restride_keeps_the_latents_of_every_fourth_frame_and_repeats_them():
    ae = build_autoencoder("ae-tiny", seed=3)
    ae.latent_mean, ae.latent_std = torch.linspace(-1, 1, 8), torch.linspace(0.5, 2, 8)
    t4 = restride(ae, "ae-tiny-t4")
    assert t4.temporal_stride == 4 and t4.cfg.name == "ae-tiny-t4"
    x = frames(13)
    z1, z4 = ae.encode(x), t4.encode(x)  # [1, 13, C, h, w], [1, 4, C, h, w]
    assert z4.shape == (1, 4, 8, 4, 4)
    torch.testing.assert_close(z4, z1[:, ::4], rtol=0, atol=1e-5)  # frames 0, 4, 8, 12, normalised alike
    pix = t4.decoder().decode(z4)  # frame 0 alone, then 4 frames per latent frame
    assert pix.shape == (13, 32, 32, 3)
    first = ae.decoder().decode(z1[:, :1])  # the video's first frame decodes as at stride 1
    assert np.abs(pix[0].astype(int) - first[0]).max() <= 1
    with pytest.raises(ValueError, match="starts from a temporal stride of 1"):
        restride(t4, "ae-tiny-t4")
    with pytest.raises(ValueError, match="differs from ae-128-s8-t4 in more than the temporal stride"):
        restride(ae, "ae-128-s8-t4")


def test_latent_cover_takes_frame_zero_alone_then_the_most_of_each_group():
    cover = np.zeros((1, 9, 2, 2), np.float32)
    cover[0, 0, 0, 0] = 0.5
    cover[0, 3, 1, 1] = 1.0  # group 1 = frames 1..4
    cover[0, 8, 0, 1] = 0.25  # group 2 = frames 5..8
    got = latent_cover(cover, 4)
    assert got.shape == (1, 3, 2, 2)
    assert got[0, 0, 0, 0] == 0.5 and got[0, 1, 1, 1] == 1.0 and got[0, 2, 0, 1] == 0.25 and got.sum() == 1.75
    assert latent_cover(cover, 1) is cover
    with pytest.raises(ValueError, match="needs 1 \\+ 4k frames, got 8"):
        latent_cover(cover[:, :8], 4)


def test_dit_data_renders_whole_groups_and_weights_them_per_latent_frame():
    r = replace(RECIPES["smoke-t4"], object_weight=4.0)
    ae = restride(build_autoencoder("ae-tiny", seed=0), r.ae)
    data = LatentData(r, ae, recipe_text_encoder(r), seed=0, batch=2)
    try:
        assert data.clips.req.n_frames == 1 + 4 * (r.dit_clip_frames - 1)  # 13 video frames
        x0, text, weight = data.batch(0)
        assert x0.shape == (2, r.dit_clip_frames, 8, 4, 4) and weight.shape == (2, r.dit_clip_frames, 1, 4, 4)
        assert text.shape[0] == 2 and float(weight.min()) >= 1.0 and float(weight.max()) > 1.0
    finally:
        data.close()


def train(*args):
    """Exit code and stderr (stdout says which stage starts)."""
    r = CliRunner().invoke(app, ["train", *map(str, args)])
    return r.exit_code, r.stderr


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """A smoke-t4 run from a stride-1 autoencoder (with fitted statistics), shipped as an assets folder."""
    root = tmp_path_factory.mktemp("t4")
    start = build_autoencoder("ae-tiny", seed=1)
    start.fit_latent_stats([frames(5, s) for s in range(3)])
    start.save(root / "ae1.safetensors")
    code, output = train("all", "--recipe", "smoke-t4", "--out", root / "run", "--ae-from", root / "ae1.safetensors")
    assert code == 0, output
    mp = pytest.MonkeyPatch()
    mp.setenv("VIDEOMLA_ASSETS", str(root / "assets"))
    code, output = train("ship", "--recipe", "smoke-t4", "--out", root / "run")
    assert code == 0, output
    yield root
    mp.undo()


def test_decoder_only_stage_keeps_the_start_encoder_and_its_statistics(build):
    start = CausalVideoAE.load(build / "ae1.safetensors")
    trained = CausalVideoAE.load(build / "run" / "ae.safetensors")
    shipped = CausalVideoAE.load(build / "assets" / "ae.safetensors")
    assert trained.temporal_stride == shipped.temporal_stride == 4
    s0, s1 = start.state_dict(), trained.state_dict()
    assert all(torch.equal(s0[k], s1[k]) for k in s0 if k.startswith("enc.") and k in s1)
    assert any(not torch.equal(s0[k], s1[k]) for k in s0 if k.startswith("dec.") and k in s1)  # it trained
    assert torch.equal(trained.latent_mean, start.latent_mean) and torch.equal(trained.latent_std, start.latent_std)
    x = frames(9, 5)
    torch.testing.assert_close(trained.encode(x), start.encode(x)[:, ::4], rtol=0, atol=1e-5)
    init = read_checkpoint_log(build / "run" / "ae.ckpt.pt")["init"]
    assert init.startswith("ae1.safetensors (sha256 ")
    assert set(load_file(str(build / "assets" / "ae.safetensors"))) == set(load_file(str(build / "run" / "ae.safetensors")))


def test_generate_and_extend_with_a_strided_build(build, tmp_path):
    gen = ["generate", "--model", "tiny", "--no-preview"]
    tl = "0:00 a red ball; 0:01.5 a blue cube"
    # 8 fps, chunks of 2 latent frames: 1 + 4 frames first, then 8 per chunk
    for name, seconds in (("short", 2), ("long", 3)):
        r = CliRunner().invoke(app, [*gen, tl, "--seconds", str(seconds), "--out", str(tmp_path / f"{name}.mp4")])
        assert r.exit_code == 0, r.output
    assert probe(tmp_path / "short.mp4")["frames"] == 21 and probe(tmp_path / "long.mp4")["frames"] == 29
    r = CliRunner().invoke(app, ["extend", str(tmp_path / "short.mp4"), "--seconds", "1", "--no-preview"])
    assert r.exit_code == 0, r.output
    ext, long = read_frames(tmp_path / "short-extended.mp4")[0], read_frames(tmp_path / "long.mp4")[0]
    assert ext.shape == long.shape and np.array_equal(ext, long)  # exact continuation across the stride
    # the build's cache-write noise (smoke-t4 ships 25) is the model's default and the session's record
    assert json.loads((build / "assets" / "tiny" / "model.json").read_text())["sampler"]["context_noise"] == 25.0
    assert probe(tmp_path / "short.mp4")["comment"]["context_noise"] == 25.0


def test_extend_footage_made_elsewhere_with_a_strided_build(build, tmp_path):
    from videomla_app.video_io import StreamingMP4Writer

    clip = tmp_path / "phone.mp4"
    w = StreamingMP4Writer(clip, 10, (48, 40))
    w.write(np.full((23, 40, 48, 3), 120, np.uint8))
    w.close()
    r = CliRunner().invoke(app, ["extend", str(clip), "a red ball", "--seconds", "1", "--model", "tiny",
                                 "--no-preview"])
    assert r.exit_code == 0, r.output
    info = probe(tmp_path / "phone-extended.mp4")
    assert info["size"] == (32, 32) and info["fps"] == 8 and info["frames"] > 18


def test_ae_from_errors_are_one_line(build, tmp_path):
    out = tmp_path / "run"
    code, msg = train("mha", "--recipe", "smoke-t4", "--out", out, "--ae-from", build / "ae1.safetensors")
    assert code == 2 and msg == "error: --ae-from starts stage ae; stage mha does not use it\n"
    code, msg = train("ae", "--recipe", "smoke-t4", "--out", out, "--ae-from", tmp_path / "nope.safetensors")
    assert code == 2 and msg == f"error: --ae-from {tmp_path / 'nope.safetensors'}: no such file\n"
    code, msg = train("ae", "--recipe", "smoke-t4", "--out", out)
    assert code == 2 and msg == ("error: recipe 'smoke-t4' trains only the decoder of an autoencoder: give it with "
                                 "--ae-from (e.g. assets/ae.safetensors)\n")
    dit = build / "assets" / "tiny" / "model.safetensors"
    code, msg = train("ae", "--recipe", "smoke-t4", "--out", out, "--ae-from", dit)
    assert code == 2 and msg == f"error: --ae-from {dit}: not a VideoMLA autoencoder file\n"
    other = tmp_path / "other.safetensors"
    build_autoencoder("ae-64-s8", seed=0).save(other)
    code, msg = train("ae", "--recipe", "smoke-t4", "--out", out, "--ae-from", other)
    assert code == 2 and "differs from ae-tiny-t4 in more than the temporal stride" in msg and msg.count("\n") == 1
    assert not (out / "ae.ckpt.pt").exists()
