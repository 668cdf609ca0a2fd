"""The training loop lowers the loss and resumes exactly; flow matching trains the causal DiT."""

import json
import math
import os

import pytest
import torch

from videomla_app.config import get_preset
from videomla_app.model import build_model
from videomla_app.train.flow import chunk_timesteps, flow_matching_loss
from videomla_app.train.loop import Trainer, TrainConfig, step_generator
from videomla_app.scheduler import FlowSampler
from tests.helpers import toy_flow_clip

P = get_preset("test-mla")


def _data(step, gen):
    """A learnable toy task: latents are a per-clip constant colour plus a moving ramp."""
    return toy_flow_clip(step)


def _loss(model, step, gen):
    x0, text = _data(step, gen)
    return flow_matching_loss(model, x0, text, P.cache, P.sampler, gen)


def test_flow_matching_lowers_the_loss(tmp_path):
    model = build_model(P.model, seed=0)
    cfg = TrainConfig(steps=40, batch=2, lr=3e-3, warmup=5, bf16=False, ckpt_every=1000)
    log = Trainer("tiny", model, cfg, tmp_path, _loss).run(quiet=True)
    first = sum(r["loss"] for r in log[:8]) / 8
    last = sum(r["loss"] for r in log[-8:]) / 8
    assert last < 0.7 * first, (first, last)


def test_resume_continues_exactly(tmp_path):
    cfg = TrainConfig(steps=6, batch=2, lr=1e-3, warmup=2, bf16=False, ckpt_every=3)
    straight = build_model(P.model, seed=0)
    Trainer("a", straight, cfg, tmp_path / "a", _loss).run(quiet=True)
    first = build_model(P.model, seed=0)
    t = Trainer("b", first, TrainConfig(**{**cfg.__dict__, "steps": 3}), tmp_path / "b", _loss)
    t.run(quiet=True)
    resumed = build_model(P.model, seed=99)  # different init: everything must come from the checkpoint
    t2 = Trainer("b", resumed, cfg, tmp_path / "b", _loss)
    assert t2.resume() and t2.step == 3
    t2.run(quiet=True)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_ctrl_c_finishes_the_step_checkpoints_it_and_resume_is_exact(tmp_path):
    """SIGINT during step 4 (no periodic checkpoint due): the step completes, is saved, and the
    run raises KeyboardInterrupt; resuming gives exactly the uninterrupted weights."""
    import signal

    cfg = TrainConfig(steps=6, batch=2, lr=1e-3, warmup=2, bf16=False, ckpt_every=1000)
    straight = build_model(P.model, seed=0)
    Trainer("a", straight, cfg, tmp_path / "a", _loss).run(quiet=True)

    def interrupting(model, step, gen):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does, mid-step
        return _loss(model, step, gen)

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        Trainer("b", build_model(P.model, seed=0), cfg, tmp_path / "b", interrupting).run(quiet=True)
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back
    resumed = build_model(P.model, seed=99)
    t = Trainer("b", resumed, cfg, tmp_path / "b", _loss)
    assert t.resume() and t.step == 4 and len(t.log) == 4
    t.run(quiet=True)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_chunk_timesteps_share_a_level_per_chunk():
    s = FlowSampler(P.sampler)
    t = chunk_timesteps(3, 7, 2, s, torch.Generator().manual_seed(0))
    assert t.shape == (3, 7) and torch.equal(t[:, 0], t[:, 1]) and torch.equal(t[:, 4], t[:, 5])
    assert (t > 0).all() and (t <= 1000).all()


def test_smoke_recipe_runs_all_stages(tmp_path):
    """Stage 0 (autoencoder), 1 (dense twin) and 2 (MLA from it by spectral init) end to end."""
    from videomla_app.encoders import ToyTextEncoder
    from videomla_app.train.stages import RECIPES, dit_preset, train_ae, train_dit

    r = RECIPES["smoke"]
    ae = train_ae(r, tmp_path, quiet=True)
    assert (tmp_path / "ae.safetensors").exists() and ae.latent_std.min() > 0
    text = ToyTextEncoder(32, 8)
    mha, t1 = train_dit("mha", r, tmp_path, ae, text, quiet=True)
    stage1 = {k: v.clone() for k, v in mha.state_dict().items()}
    mla, t2 = train_dit("mla", r, tmp_path, ae, text, quiet=True)
    assert (tmp_path / "mha.safetensors").exists() and (tmp_path / "mla.safetensors").exists()
    assert all(math.isfinite(x["loss"]) for x in t1.log + t2.log) and len(t2.log) == 4
    # stage 3: the dense twin gets stage 2's fine-tune, from its stage-1 weights, on stage 2's data
    twin, t3 = train_dit("twin", r, tmp_path, ae, text, quiet=True)
    assert twin.cfg.attn == "mha" and (tmp_path / "twin.safetensors").exists() and len(t3.log) == 4
    assert t3.cfg == r.mla_train and [x["step"] for x in t3.log] == [x["step"] for x in t2.log]
    assert any(not torch.equal(v, stage1[k]) for k, v in twin.state_dict().items())  # it trained
    assert dit_preset(r, "mla", ae, text).model.attn == "mla" and mla.cfg.latent_channels == ae.latent_channels
    # stage 2 starts from stage 1: the non-attention weights were copied before fine-tuning began
    assert mla.blocks[0].ffn[0].weight.shape == mha.blocks[0].ffn[0].weight.shape

    # ship to an assets folder and generate through the embedded-model loader
    from videomla_app.models import load_pipeline
    from videomla_app.train.ship import ship

    from dataclasses import replace

    from safetensors.torch import load_file

    ship(tmp_path, tmp_path / "assets", replace(r, guidance=2.0), text)
    # the autoencoder ships as the run's bytes: an unchanged one is an unchanged file
    shipped_ae = (tmp_path / "assets" / "ae.safetensors").read_bytes()
    assert shipped_ae == (tmp_path / "ae.safetensors").read_bytes()
    shipped = load_file(str(tmp_path / "assets" / "tiny-mha" / "model.safetensors"))
    assert all(torch.equal(v, twin.state_dict()[k].to(torch.bfloat16)) for k, v in shipped.items())
    # stage 4: guidance distillation of both; ship then exports the distilled weights
    for kind, base, attn in (("mla-cfg", mla, "mla"), ("twin-cfg", twin, "mha")):
        student, t4 = train_dit(kind, replace(r, anchor_first=0.5, first_chunk_weight=2.0), tmp_path, ae, text,
                                quiet=True)
        assert student.cfg.attn == attn and t4.cfg == r.distill_train and len(t4.log) == 4
        assert all(math.isfinite(x["loss"]) and x["loss"] > 0 for x in t4.log)
        assert any(not torch.equal(v, base.state_dict()[k]) for k, v in student.state_dict().items())
        ship(tmp_path, tmp_path / "assets", replace(r, guidance=2.0, warm_start=600.0, twin_warm_start=300.0,
                                                    anchor_first=0.5, first_steps=5), text)
        folder = "tiny" if attn == "mla" else "tiny-mha"
        shipped = load_file(str(tmp_path / "assets" / folder / "model.safetensors"))
        assert all(torch.equal(v, student.state_dict()[k].to(torch.bfloat16)) for k, v in shipped.items())
        # the window a 4-frame clip trained (sink 1 + window 1 + chunk 2), not the preset's 2
        spec = json.loads((tmp_path / "assets" / folder / "model.json").read_text())
        assert spec["cache"] == {"window_frames": 1}
    os.environ["VIDEOMLA_ASSETS"] = str(tmp_path / "assets")
    try:
        for name in ("tiny", "tiny-mha"):
            pipe = load_pipeline(name)
            assert pipe.dtype == torch.bfloat16 and pipe.model.cfg.attn == ("mla" if name == "tiny" else "mha")
            # the shipped sampler default sits between the preset and the user's override
            assert pipe.preset.sampler.guidance == 2.0 and load_pipeline(name, guidance=1).preset.sampler.guidance == 1
            assert pipe.preset.sampler.warm_start == (600.0 if name == "tiny" else 300.0)
            assert load_pipeline(name, warm_start=0).preset.sampler.warm_start == 0
            assert pipe.preset.sampler.anchor_first  # trained anchored, shipped with the anchored sampler
            assert pipe.preset.sampler.first_steps == (1000, 800, 600, 400, 200)
            assert load_pipeline(name, first_steps=2).preset.sampler.first_steps == (1000, 500)
            assert pipe.preset.cache.window_frames == 1
            ev = list(pipe.stream("a red ball", 2, seed=0))
            assert ev[-1].frames.shape == (r.dit_clip_frames // 2, 32, 32, 3) or ev[-1].frames.shape[1:] == (32, 32, 3)
    finally:
        del os.environ["VIDEOMLA_ASSETS"]

    # the model card is generated from the run's checkpoints: every stage's steps and a loss curve
    from PIL import Image

    from videomla_app.train.card import write_card

    card = write_card(tmp_path, tmp_path / "assets", r, notes="Stage 1 was resumed once.").read_text()
    assert "## Notes on this run\n\nStage 1 was resumed once." in card
    for stage in ("ae", "mha", "mla", "twin", "mla-cfg", "twin-cfg"):
        assert f"| {stage} | 4 | 2 |" in card
    assert "![loss curves](loss_curve.png)" in card
    assert Image.open(tmp_path / "assets" / "loss_curve.png").size == (960, 540)
    assert "Stage 0 has no record in this run" not in card
    # a run that reused an autoencoder (the GPU script's KEEP_AE=1) says so instead of a silent gap
    (tmp_path / "ae.ckpt.pt").unlink()
    card = write_card(tmp_path, tmp_path / "assets", r).read_text()
    assert "| ae |" not in card and "Stage 0 has no record in this run (no autoencoder checkpoint or log)" in card
    # fresh weights carry no per-motion measurement; once recorded, the card shows it
    assert "## Motions each model follows" not in card
    from videomla_app.eval_follows import record_follows

    record_follows(tmp_path / "assets" / "tiny" / "model.json",
                   {"motion": {"left": 3.1, "circling": 68.8}, "videos": {"left": 8, "circling": 8}, "seconds": 8.0})
    card = write_card(tmp_path, tmp_path / "assets", r).read_text()
    assert "over 8 prompts per motion (8 s each" in card
    assert "| model | left | circling |\n|---|---|---|\n| `tiny` | 3 | 69 |\n" in card and "`tiny-mha` |" not in card
    assert "Objects drawn per count" not in card  # a model.json from before counts were recorded
    assert "Dynamics per motion" not in card  # nor dynamics
    record_follows(tmp_path / "assets" / "tiny" / "model.json",
                   {"motion": {"left": 3.1}, "moving": {"left": 87.5}, "videos": {"left": 8}, "seconds": 8.0,
                    "count": {"1": 27.0, "4": 50.8}, "objects": {"1": 2.31, "4": 4.12},
                    "count_videos": {"1": 13, "4": 17}})
    card = write_card(tmp_path, tmp_path / "assets", r).read_text()
    assert "| model | 1 | 4 |\n|---|---|---|\n| `tiny` | 2.3 (27.0 %) | 4.1 (50.8 %) |\n" in card
    assert "Dynamics per motion" in card and "| model | left |\n|---|---|\n| `tiny` | 88 |\n" in card


def test_shipped_window_is_what_the_clips_trained_unless_the_recipe_keeps_its_own():
    from dataclasses import replace

    from videomla_app.train.ship import _trained_cache
    from videomla_app.train.stages import RECIPES

    nine = RECIPES["tiny-t4-cpu-own750-chain"]
    # a 9-frame clip shows its last chunk sink 1 + window 5 (chunk 3); the preset keeps 6
    assert _trained_cache(nine, nine.mla_preset) == {"cache": {"window_frames": 5}}
    # 12 frames show 8, more than the preset's 6: model.json leaves the preset's window
    assert _trained_cache(replace(nine, dit_clip_frames=12), nine.mla_preset) == {}
    # the 12-frame round from 9-frame weights keeps their 5
    twelve = RECIPES["tiny-t4-cpu-own750-chain12"]
    assert twelve.dit_clip_frames == 12 and twelve.own_context_chain
    assert _trained_cache(twelve, twelve.mla_preset) == _trained_cache(twelve, twelve.mha_preset) \
        == {"cache": {"window_frames": 5}}


def test_ship_and_card_refuse_a_folder_without_a_finished_run(tmp_path, monkeypatch):
    """A run with only its autoencoder (stopped early, or the wrong --out) ships nothing: the shipped
    set stays whole (both DiTs were trained on its autoencoder's latents), and no empty card is
    written over the shipped one. One-line errors, exit 2."""
    from typer.testing import CliRunner

    from videomla_app.autoencoder import build_autoencoder
    from videomla_app.cli import app

    assets = tmp_path / "assets"
    assets.mkdir()
    for name in ("ae.safetensors", "MODEL_CARD.md"):
        (assets / name).write_text("shipped")
    run = tmp_path / "run"
    run.mkdir()
    build_autoencoder("ae-tiny", seed=0).save(run / "ae.safetensors")
    monkeypatch.setenv("VIDEOMLA_ASSETS", str(assets))
    r = CliRunner().invoke(app, ["train", "ship", "--recipe", "smoke", "--out", str(run)])
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert r.output.startswith(f"error: {run} holds no finished training run to ship: missing mla-cfg.safetensors or")
    assert sorted(p.name for p in assets.iterdir()) == ["MODEL_CARD.md", "ae.safetensors"]  # no staging left
    assert (assets / "ae.safetensors").read_text() == "shipped"
    r = CliRunner().invoke(app, ["train", "card", "--recipe", "smoke", "--out", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "no training run there" in r.output and r.output.count("\n") == 1, r.output
    assert (assets / "MODEL_CARD.md").read_text() == "shipped"


def test_train_refuses_what_would_lose_or_misuse_work(tmp_path):
    """Bad training commands get one line and an exit code, and never overwrite a checkpoint: a
    forgotten --resume, a stage run before the one it starts from, a checkpoint that is corrupt,
    truncated or another model's, a file as --out, a negative --max-minutes, a non-report --eval."""
    from typer.testing import CliRunner

    from videomla_app.cli import app
    from videomla_app.models import assets_dir

    def run(*args):
        r = CliRunner().invoke(app, ["train", *args])
        errors = [line for line in r.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in r.output, r.output  # one line, after the stage header
        return r.exit_code, errors[0]

    out = tmp_path / "run"
    code, msg = run("mla", "--recipe", "smoke", "--out", str(out))
    assert code == 2 and msg == (f"error: stage mla needs {out}/ae.safetensors, which stage ae writes: run "
                                 f"'videomla train ae --recipe smoke --out {out}' first (or 'train all')")
    # going on from given weights needs the autoencoder they were trained with, not a new one
    start = assets_dir() / "tiny" / "model.safetensors"
    code, msg = run("mla", "--recipe", "smoke", "--out", str(out), "--mla-from", str(start))
    assert code == 2 and msg == (f"error: stage mla needs {out}/ae.safetensors: copy there the autoencoder {start} "
                                 f"was trained with (for the shipped weights: mkdir -p {out} && "
                                 f"cp {assets_dir() / 'ae.safetensors'} {out}/)"), msg
    assert CliRunner().invoke(app, ["train", "ae", "--recipe", "smoke", "--out", str(out)]).exit_code == 0
    ckpt = out / "ae.ckpt.pt"
    before = ckpt.read_bytes()
    code, msg = run("ae", "--recipe", "smoke", "--out", str(out))
    assert code == 2 and msg == f"error: stage ae is finished in {out}: delete ae.ckpt.pt and ae.safetensors there to train it again"
    (out / "mha.ckpt.pt").write_bytes(before)  # an unfinished stage; all skips the finished ae
    for budget in ((), ("--budget-minutes", "100000")):  # the budget's own hard stop is not a user --max-minutes
        code, msg = run("all", "--recipe", "smoke", "--out", str(out), *budget)
        assert code == 2 and msg == (f"error: {out}/mha.ckpt.pt exists: add --resume to continue stage mha, "
                                     "or delete it to train that stage from the start"), msg
    assert ckpt.read_bytes() == before
    # the autoencoder's checkpoint where the DiT's should be, then a truncated and a junk one
    code, msg = run("mha", "--recipe", "smoke", "--out", str(out), "--resume")
    assert code == 1 and msg.startswith(f"error: {out}/mha.ckpt.pt belongs to a different model"), msg
    for junk in (before[:1000], b"junk"):
        (out / "mha.ckpt.pt").write_bytes(junk)
        code, msg = run("mha", "--recipe", "smoke", "--out", str(out), "--resume")
        assert code == 1 and msg.startswith(f"error: {out}/mha.ckpt.pt is not a readable training checkpoint"), msg
        code, msg = run("card", "--recipe", "smoke", "--out", str(out))
        assert code == 1 and "is not a readable training checkpoint" in msg
    (tmp_path / "file").write_text("x")
    assert run("all", "--out", str(tmp_path / "file")) == (2, f"error: --out {tmp_path}/file is a file, not a folder")
    assert run("ae", "--out", str(out), "--max-minutes", "-1")[0] == 2
    (tmp_path / "r.json").write_text("{}")
    for bad, why in (("file", "not JSON"), ("r.json", "no results")):
        code, msg = run("card", "--recipe", "smoke", "--out", str(out), "--eval", str(tmp_path / bad))
        assert code == 2 and msg.endswith(f"not a `videomla eval --json` report ({why})"), msg


def test_caption_dropout_trains_some_clips_on_the_empty_prompt():
    from dataclasses import replace

    from videomla_app.autoencoder import build_autoencoder
    from videomla_app.encoders import ToyTextEncoder
    from videomla_app.train.stages import RECIPES, LatentData

    r = replace(RECIPES["smoke"], caption_dropout=0.5)
    text = ToyTextEncoder(32, 8)
    data = LatentData(r, build_autoencoder(r.ae, seed=0), text, seed=0, batch=8)
    empty = text.encode([""])[0]
    dropped = [[torch.equal(s, empty) for s in data.batch(step)[1]] for step in range(4)]
    assert 0 < sum(map(sum, dropped)) < 32  # some, not all, seeded per step
    assert dropped == [[torch.equal(s, empty) for s in data.batch(step)[1]] for step in range(4)]
    assert RECIPES["tiny"].caption_dropout > 0 and RECIPES["smoke"].caption_dropout == 0


def test_object_weighted_loss():
    """Coverage is exactly where objects are (scenes are static), and weighting is a weighted mean."""
    import numpy as np

    from videomla_app import world
    from videomla_app.train.data import coverage_map
    from videomla_app.train.stages import RECIPES

    spec = world.WorldSpec("ball", "red", "large", 1, "bouncing", "day")
    clip = world.render(spec, 0, 2, size=64, seed=0)[None]  # [1, 2, 64, 64, 3]
    bg = np.broadcast_to(world.scenes.background("day", 64), clip.shape).copy()
    cov = coverage_map(np.concatenate([clip, bg]), ["day", "day"], 8)  # [2, 2, 8, 8]
    assert cov.shape == (2, 2, 8, 8) and 0 < cov[0].max() <= 1 and np.abs(cov[1]).sum() == 0
    assert 0.005 < cov[0].mean() < 0.3  # one large ball: a few blocks, not the frame
    assert RECIPES["tiny"].object_weight > 0 and RECIPES["smoke"].object_weight == 0

    model = build_model(P.model, seed=0)
    x0, text = _data(0, None)
    ones = torch.ones(2, 6, 1, *P.model.latent_hw)
    plain = flow_matching_loss(model, x0, text, P.cache, P.sampler, step_generator(0, 0))
    same = flow_matching_loss(model, x0, text, P.cache, P.sampler, step_generator(0, 0), weight=3 * ones)
    assert torch.allclose(plain, same, rtol=1e-5)
    only_first = torch.zeros_like(ones)
    only_first[:, 0] = 1
    first = flow_matching_loss(model, x0, text, P.cache, P.sampler, step_generator(0, 0), weight=only_first)
    assert not torch.allclose(first, plain)


def test_first_chunk_weight_counts_the_first_chunk_that_many_times():
    """The first chunk (no context: where the text alone says which way things go) weighted k
    times is the weighted mean of the per-chunk losses, on the same draw; 1 is the plain loss."""
    from videomla_app.train.flow import first_chunk_weights, flow_prediction, weighted_mse
    from videomla_app.train.stages import RECIPES

    model = build_model(P.model, seed=0)
    x0, text = _data(0, None)  # [2, 6, C, h, w]: three chunks of 2
    C = P.cache.chunk_frames
    w = first_chunk_weights(6, C, 3.0)
    assert w.shape == (1, 6, 1, 1, 1) and w.flatten().tolist() == [3] * C + [1] * (6 - C)
    with torch.no_grad():
        plain = flow_matching_loss(model, x0, text, P.cache, P.sampler, step_generator(0, 0))
        assert torch.equal(flow_matching_loss(model, x0, text, P.cache, P.sampler, step_generator(0, 0),
                                              first_chunk_weight=1.0), plain)
        weighted = flow_matching_loss(model, x0, text, P.cache, P.sampler, step_generator(0, 0),
                                      first_chunk_weight=3.0)
        pred, target, _ = flow_prediction(model, x0, text, P.cache, P.sampler, step_generator(0, 0))
        first, later = weighted_mse(pred[:, :C], target[:, :C]), weighted_mse(pred[:, C:], target[:, C:])
    assert torch.allclose(weighted, (3 * C * first + (6 - C) * later) / (3 * C + 6 - C), rtol=1e-5)
    assert not torch.allclose(weighted, plain)
    with pytest.raises(ValueError, match="first_chunk_weight must be > 0, got 0"):
        first_chunk_weights(6, C, 0.0)
    # the GPU recipe that trains the anchored first chunk weights it too; the shipped ones do not
    assert RECIPES["tiny-t4-anchor-gpu"].first_chunk_weight == 3.0
    assert RECIPES["tiny-t4-gpu"].first_chunk_weight == 1.0


def _guided_setup(attn):
    from videomla_app.scheduler import FlowSampler

    preset = get_preset("test-mla" if attn == "mla" else "test-mha")
    model = build_model(preset.model, seed=3)
    g = torch.Generator().manual_seed(5)
    C = preset.cache.chunk_frames
    n = 3 * C
    x0 = torch.randn(2, n, preset.model.latent_channels, *preset.model.latent_hw, generator=g)
    steps = torch.tensor(FlowSampler(preset.sampler).timesteps, dtype=torch.float32)
    t = steps[torch.tensor([[0, 1, 1], [1, 0, 1]])].repeat_interleave(C, 1)  # [2, n], a level per chunk
    x_t = FlowSampler(preset.sampler).add_noise(x0, torch.randn(x0.shape, generator=g), t[..., None, None, None])
    text = torch.randn(2, preset.text_len, preset.model.text_dim, generator=g)
    return preset, model, x0, x_t, t, text


@pytest.mark.parametrize("attn", ["mla", "mha"])
def test_guided_flow_at_scale_one_is_the_teacher_forcing_prediction(attn):
    """The distillation target comes from the rolling cache, chunk by chunk (what guided sampling
    computes); at g = 1 it must be the student's own teacher-forcing prediction, so a student that
    equals its teacher starts at zero loss and any loss at g > 1 is guidance to learn."""
    from videomla_app.train.flow import teacher_forcing_inputs
    from videomla_app.train.guidance import guided_flow

    preset, model, x0, x_t, t, text = _guided_setup(attn)
    empty = torch.zeros_like(text)
    target = guided_flow(model, x0, x_t, t, text, empty, preset, 1.0)
    n = x0.shape[1]
    with torch.no_grad():
        tf = model.forward_train(torch.cat([x0, x_t], 1), torch.cat([torch.zeros_like(t), t], 1), text, preset.cache,
                                 teacher_forcing_inputs(model, n, preset.cache), teacher_forcing=True)[:, n:]
    torch.testing.assert_close(target, tf, atol=2e-5, rtol=1e-4)
    # g > 1 moves away from the prompt-only flow by (g - 1) (v - v_empty), linearly in g
    g2, g3 = (guided_flow(model, x0, x_t, t, text, empty, preset, g) for g in (2.0, 3.0))
    assert (g2 - target).abs().mean() > 1e-3
    torch.testing.assert_close(g3 - target, 2 * (g2 - target), atol=2e-5, rtol=1e-4)


def test_guided_flow_is_causal_and_uses_the_empty_prompt():
    """The target of a chunk depends on the empty prompt (the second call) and on the clean context
    of earlier chunks only: changing chunk 0's context leaves chunk 0's own target alone."""
    from videomla_app.train.guidance import guided_flow

    preset, model, x0, x_t, t, text = _guided_setup("mla")
    a = guided_flow(model, x0, x_t, t, text, torch.zeros_like(text), preset, 2.0)
    b = guided_flow(model, x0, x_t, t, text, torch.ones_like(text), preset, 2.0)
    assert (a - b).abs().mean() > 1e-4
    # the context of chunk 2 is x0 of chunks 0-1: changing it changes later chunks only
    x0b = x0.clone()
    x0b[:, :preset.cache.chunk_frames] += 1.0
    c = guided_flow(model, x0b, x_t, t, text, torch.zeros_like(text), preset, 2.0)
    C = preset.cache.chunk_frames
    torch.testing.assert_close(c[:, :C], a[:, :C])
    assert (c[:, C:] - a[:, C:]).abs().mean() > 1e-4


def test_guidance_distillation_lowers_its_loss(tmp_path):
    """A student that starts as its teacher learns the teacher's g = 3 flow on a fixed task."""
    from videomla_app.train.guidance import guidance_distillation_loss

    preset, teacher, x0, _, _, text = _guided_setup("mla")
    teacher.requires_grad_(False)
    student = build_model(preset.model)
    student.load_state_dict(teacher.state_dict())
    empty = torch.zeros_like(text)

    def loss(m, step, gen):
        return guidance_distillation_loss(m, teacher, x0, text, empty, preset, 3.0, step_generator(7, step % 2))

    cfg = TrainConfig(steps=30, batch=2, lr=3e-3, warmup=3, bf16=False, ckpt_every=1000)
    log = Trainer("cfg", student, cfg, tmp_path, loss).run(quiet=True)
    first = sum(r["loss"] for r in log[:4]) / 4
    last = sum(r["loss"] for r in log[-4:]) / 4
    assert last < 0.5 * first, (first, last)


def test_anchored_distillation_from_a_dense_teacher_lowers_its_loss(tmp_path):
    """Stage 4 can teach the anchored first chunk across attention kinds: an MLA student, a dense
    teacher (as when an anchor-trained stage 1 teaches the shipped tiny), every clip's first frame
    held nearly clean and not scored, the first chunk weighted 3x as the anchored GPU recipe does."""
    from videomla_app.train.guidance import guidance_distillation_loss

    preset, student, x0, _, _, text = _guided_setup("mla")
    teacher = build_model(get_preset("test-mha").model, seed=4).requires_grad_(False)
    empty = torch.zeros_like(text)

    def loss(m, step, gen, anchor=1.0, first=3.0):
        return guidance_distillation_loss(m, teacher, x0, text, empty, preset, 2.0, step_generator(7, step % 2),
                                          anchor_first=anchor, first_chunk_weight=first)

    with torch.no_grad():  # off, the random stream and the loss are the plain ones
        plain = guidance_distillation_loss(student, teacher, x0, text, empty, preset, 2.0, step_generator(7, 0))
        assert loss(student, 0, None, 0.0, 1.0) == plain and loss(student, 0, None, 1.0, 1.0) != plain
        assert loss(student, 0, None, 0.0, 3.0) != plain  # the first chunk counts three times
    cfg = TrainConfig(steps=30, batch=2, lr=3e-3, warmup=3, bf16=False, ckpt_every=1000)
    log = Trainer("cfg", student, cfg, tmp_path, loss).run(quiet=True)
    first = sum(r["loss"] for r in log[:4]) / 4
    last = sum(r["loss"] for r in log[-4:]) / 4
    assert last < 0.5 * first, (first, last)


def test_guided_flow_refuses_a_preset_that_writes_noisy_context():
    from dataclasses import replace

    from videomla_app.train.guidance import guided_flow

    preset, model, x0, x_t, t, text = _guided_setup("mla")
    noisy = replace(preset, sampler=replace(preset.sampler, context_noise=10.0))
    with pytest.raises(ValueError, match="writes the context clean"):
        guided_flow(model, x0, x_t, t, text, torch.zeros_like(text), noisy, 2.0)


def test_teacher_forcing_inputs_follow_the_model_config_not_its_id(monkeypatch):
    """The cached masks/RoPE tables must belong to the model asked about, even when a freed model's
    id is reused by the next one (simulated: every object gets the same id). That once gave a dense
    model the MLA model's RoPE tables in the test suite, and could in one training process."""
    from videomla_app.train import flow

    monkeypatch.setattr(flow, "id", lambda obj: 0, raising=False)
    cache = get_preset("test-mla").cache
    for name in ("test-mla", "test-mha", "test-mla"):
        model = build_model(get_preset(name).model, seed=0)
        got = flow.teacher_forcing_inputs(model, 4, cache)
        want = model.train_inputs(4, cache, teacher_forcing=True)
        assert got.q_cos.shape == want.q_cos.shape and torch.equal(got.q_cos, want.q_cos), name
        assert torch.equal(got.mask, want.mask) and torch.equal(got.key_index, want.key_index)
