"""The dense twin as stage 2's teacher (``flow.teacher_target``, ``Recipe.twin_teacher``): part of the
flow target is a frozen model's prediction on the very input the trained model sees."""

import copy
from dataclasses import fields, replace

import pytest
import torch

from videomla_app.config import get_preset
from videomla_app.encoders import ToyTextEncoder
from videomla_app.model import build_model
from videomla_app.train.flow import (flow_matching_loss, flow_prediction, teacher_forcing_inputs,
                                     teacher_target, weighted_mse)
from videomla_app.train.loop import Trainer, TrainConfig, read_checkpoint_log, step_generator
from videomla_app.train.stages import RECIPES, StartWeightsError, train_ae, train_dit
from tests.helpers import toy_flow_clip

P = get_preset("test-mla")
DENSE = get_preset("test-mha")


def _clip(seed: int = 0, batch: int = 2):
    g = torch.Generator().manual_seed(seed)
    n = 3 * P.cache.chunk_frames
    x0 = torch.randn(batch, n, P.model.latent_channels, *P.model.latent_hw, generator=g)
    text = torch.randn(batch, P.text_len, P.model.text_dim, generator=g)
    return x0, text


def test_an_identical_teacher_at_share_one_leaves_nothing_to_learn():
    """The teacher sees the trained model's exact input (same levels, same noise): a copy of the model
    as the whole target gives a loss of exactly 0; share 0 is plain teacher forcing bit for bit."""
    model = build_model(P.model, seed=3).eval()
    x0, text = _clip()
    with torch.no_grad():
        same = flow_matching_loss(model, x0, text, P.cache, P.sampler, step_generator(0, 1),
                                  teacher=copy.deepcopy(model), teacher_share=1.0)
        plain = flow_matching_loss(model, x0, text, P.cache, P.sampler, step_generator(0, 1))
        off = flow_matching_loss(model, x0, text, P.cache, P.sampler, step_generator(0, 1),
                                 teacher=copy.deepcopy(model), teacher_share=0.0)
    assert same.item() == 0.0 and plain.item() > 0.1
    assert torch.equal(off, plain)


def test_the_target_blends_the_true_flow_with_the_dense_teachers_prediction():
    model = build_model(P.model, seed=3).eval()
    dense = build_model(DENSE.model, seed=5).eval()
    x0, text = _clip(1, batch=3)
    n = x0.shape[1]
    gen_plain, gen_taught = step_generator(0, 2), step_generator(0, 2)
    with torch.no_grad():
        pred, flow, _ = flow_prediction(model, x0, text, P.cache, P.sampler, gen_plain)
        taught_pred, blend, _ = flow_prediction(model, x0, text, P.cache, P.sampler, gen_taught,
                                                teacher=dense, teacher_share=0.75)
    assert torch.equal(pred, taught_pred)
    # the teacher draws nothing: every draw after the loss's is the one plain teacher forcing leaves
    assert torch.equal(torch.rand(4, generator=gen_plain), torch.rand(4, generator=gen_taught))
    # what the teacher predicts is what it predicts on the student's input: recover it from the blend
    guess = (blend - 0.25 * flow) / 0.75  # [B, F, C, h, w]
    assert not torch.allclose(guess, flow, atol=1e-2) and not torch.allclose(guess, pred, atol=1e-2)
    x_in = torch.randn(3, 2 * n, P.model.latent_channels, *P.model.latent_hw)
    t_in = torch.rand(3, 2 * n) * 1000
    with torch.no_grad():
        direct = dense.forward_train(x_in, t_in, text, P.cache, teacher_forcing_inputs(dense, n, P.cache),
                                     teacher_forcing=True)[:, n:]
    assert torch.allclose(teacher_target(dense, x_in, t_in, text, P.cache, flow, 1.0), direct, atol=1e-6)
    half = teacher_target(dense, x_in, t_in, text, P.cache, flow, 0.5)
    assert torch.allclose(half, (flow + direct) / 2, atol=1e-6)
    # the loss is the MSE to the blend, with the draw's frame weights
    with torch.no_grad():
        loss = flow_matching_loss(model, x0, text, P.cache, P.sampler, step_generator(0, 2), teacher=dense,
                                  teacher_share=0.75)
    assert torch.allclose(loss, weighted_mse(pred, blend), rtol=1e-6)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="teacher share must be in"):
            teacher_target(dense, x_in, t_in, text, P.cache, flow, bad)


def test_an_mla_student_learns_a_dense_teachers_predictions(tmp_path):
    """At share 1 the loss is the distance to the teacher: it falls as the MLA model learns the dense
    model's flow on the toy task (the data's own noise no longer in the target)."""
    teacher = build_model(DENSE.model, seed=8).eval().requires_grad_(False)
    model = build_model(P.model, seed=0)

    def loss(m, step, gen):
        x0, text = toy_flow_clip(step)
        return flow_matching_loss(m, x0, text, P.cache, P.sampler, gen, teacher=teacher, teacher_share=1.0)

    cfg = TrainConfig(steps=40, batch=2, lr=3e-3, warmup=5, bf16=False, ckpt_every=1000)
    log = Trainer("taught", model, cfg, tmp_path, loss).run(quiet=True)
    first = sum(r["loss"] for r in log[:8]) / 8
    last = sum(r["loss"] for r in log[-8:]) / 8
    assert last < 0.5 * first, (first, last)


def test_stage_two_learns_from_the_runs_dense_weights_or_refuses_in_one_line(tmp_path):
    r = RECIPES["smoke"]
    taught = replace(r, name="smoke-teacher", twin_teacher=0.75)
    ae = train_ae(r, tmp_path, quiet=True)
    text = ToyTextEncoder(32, 8)
    train_dit("mha", r, tmp_path, ae, text, quiet=True)
    # the same seed and data: with a teacher (the run's stage-1 weights) the stage ends elsewhere
    plain_dir, taught_dir = tmp_path / "plain", tmp_path / "taught"
    for d in (plain_dir, taught_dir):
        d.mkdir()
        (d / "mha.safetensors").write_bytes((tmp_path / "mha.safetensors").read_bytes())
    plain, _ = train_dit("mla", r, plain_dir, ae, text, quiet=True)
    got, trainer = train_dit("mla", taught, taught_dir, ae, text, quiet=True)
    assert trainer.step == r.mla_train.steps and (taught_dir / "mla.safetensors").is_file()
    assert any(not torch.equal(v, plain.state_dict()[k]) for k, v in got.state_dict().items())
    assert read_checkpoint_log(taught_dir / "mla.ckpt.pt")["init"] is None  # converted, as without a teacher
    # going on from MLA weights in a folder with no dense weights: refused before any clip is drawn
    alone = tmp_path / "alone"
    alone.mkdir()
    with pytest.raises(StartWeightsError, match=(
            r"^recipe 'smoke-teacher' learns stage 2 from a dense teacher: give its weights with "
            r"--teacher-from \(e\.g\. assets/tiny-mha/model\.safetensors\); "
            r".*alone/mha\.safetensors does not exist$")):
        train_dit("mla", taught, alone, ae, text, quiet=True, mla_from=plain_dir / "mla.safetensors")
    assert not (alone / "mla.ckpt.pt").exists()
    # --teacher-from: another model's weights are refused in one line
    with pytest.raises(StartWeightsError, match="--teacher-from .*ae.safetensors: not weights of this "
                                                "recipe's dense"):
        train_dit("mla", taught, alone, ae, text, quiet=True, mla_from=plain_dir / "mla.safetensors",
                  teacher_from=tmp_path / "ae.safetensors")
    # given, it is used however the folder looks
    train_dit("mla", taught, alone, ae, text, quiet=True, mla_from=plain_dir / "mla.safetensors",
              teacher_from=tmp_path / "mha.safetensors")
    assert (alone / "mla.safetensors").is_file()


def test_the_teacher_recipe_is_the_orange_round_with_a_teacher():
    orange, taught = RECIPES["tiny-t4-cpu-own750-orange"], RECIPES["tiny-t4-cpu-own750-teacher"]
    differ = {f.name for f in fields(orange) if getattr(orange, f.name) != getattr(taught, f.name)}
    assert differ == {"name", "twin_teacher"} and 0 < taught.twin_teacher < 1
    assert all(RECIPES[n].twin_teacher == 0 for n in RECIPES if n != taught.name)


def test_teacher_from_is_refused_by_other_stages(tmp_path):
    from typer.testing import CliRunner

    from videomla_app.cli import app

    w = tmp_path / "w.safetensors"
    w.write_bytes(b"x")
    res = CliRunner().invoke(app, ["train", "twin", "--recipe", "smoke", "--out", str(tmp_path / "r"),
                                   "--teacher-from", str(w)])
    assert res.exit_code == 2
    assert res.output == "error: --teacher-from is for stage mla; stage twin does not use it\n"
    res = CliRunner().invoke(app, ["train", "mla", "--recipe", "smoke", "--out", str(tmp_path / "r"),
                                   "--teacher-from", str(tmp_path / "nope")])
    assert res.exit_code == 2 and res.output == f"error: --teacher-from {tmp_path}/nope: no such file\n"
