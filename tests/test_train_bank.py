"""A CPU run that goes on with one model: stage 2 or 3 from given weights (`--mla-from`, `--twin-from`),
clips drawn from a bank rendered once, and a ship that leaves the other model as shipped."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from videomla_app.autoencoder import build_autoencoder
from videomla_app.cli import app
from videomla_app.encoders import ToyTextEncoder
from videomla_app.model import build_model
from videomla_app.train.bank import BANK_SEED, RENDER_BATCH, LatentBank
from videomla_app.train.ship import ship
from videomla_app.train.stages import RECIPES, LatentData, dit_preset, train_dit

SMOKE = replace(RECIPES["smoke"], object_weight=4.0, caption_dropout=0.5)


def test_the_bank_renders_once_and_every_step_draws_its_own_seeded_clips(tmp_path, monkeypatch):
    ae, text = build_autoencoder("ae-tiny", seed=0).eval(), ToyTextEncoder(32, 8)
    r = replace(SMOKE, bank_batches=2)
    bank = LatentBank(r, ae, text, tmp_path / "bank", batch=4, caption_dropout=0.0, quiet=True)
    assert sorted(p.name for p in (tmp_path / "bank").iterdir()) == ["b0000.pt", "b0001.pt", "bank.json"]
    assert len(bank) == 2 * RENDER_BATCH
    # the banked clips are the rendered ones (fp16), in order
    fresh = LatentData(replace(r, caption_dropout=0.0), ae, text, BANK_SEED, RENDER_BATCH)
    x0, states, weight = fresh.batch(1)
    fresh.close()
    assert torch.equal(bank.x0[RENDER_BATCH:].float(), x0.half().float())
    assert torch.equal(bank.text[RENDER_BATCH:], states)
    assert torch.equal(bank.weight[RENDER_BATCH:].float(), weight)
    a, b = bank.batch(7), bank.batch(7)
    assert all(torch.equal(u, v) for u, v in zip(a, b))  # a step's batch is its own (resume sees it again)
    assert a[0].shape == (4, *x0.shape[1:]) and a[0].dtype == torch.float32 and a[2].shape[0] == 4
    assert not torch.equal(bank.batch(8)[0], a[0])
    # a second stage reads the bank without rendering; caption dropout replaces prompts by the empty one
    monkeypatch.setattr(LatentData, "batch", lambda *_: pytest.fail("rendered again"))
    dropped = LatentBank(r, ae, text, tmp_path / "bank", batch=4, caption_dropout=1.0, quiet=True)
    assert torch.equal(dropped.batch(7)[0], a[0])
    assert torch.equal(dropped.batch(7)[1], text.encode([""]).expand(4, -1, -1))
    with pytest.raises(ValueError, match="a bank of 16 clips cannot fill a batch of 32"):
        LatentBank(r, ae, text, tmp_path / "bank", batch=32, caption_dropout=0.0, quiet=True)
    # a damaged file is named (the CLI prints it on one line); deleted, it is rendered again, the same
    from videomla_app.train.loop import CheckpointError

    good = (tmp_path / "bank" / "b0001.pt").read_bytes()
    for junk in (good[:500], b"junk"):
        (tmp_path / "bank" / "b0001.pt").write_bytes(junk)
        with pytest.raises(CheckpointError, match=r"b0001.pt is not a readable bank file \(.*\): delete it"):
            LatentBank(r, ae, text, tmp_path / "bank", batch=4, caption_dropout=0.0, quiet=True)
    (tmp_path / "bank" / "b0001.pt").unlink()
    monkeypatch.undo()
    again = LatentBank(r, ae, text, tmp_path / "bank", batch=4, caption_dropout=0.0, quiet=True)
    assert torch.equal(again.batch(7)[0], a[0])


def test_a_bank_folder_refuses_a_stage_that_asks_for_other_clips(tmp_path, monkeypatch):
    """A run started in another recipe's folder (or a bank copied between runs) would train on clips
    rendered for other settings; the folder's record names what differs, in one line."""
    from videomla_app.train.loop import CheckpointError

    ae, text = build_autoencoder("ae-tiny", seed=0).eval(), ToyTextEncoder(32, 8)
    r = replace(SMOKE, bank_batches=1)
    LatentBank(r, ae, text, tmp_path / "bank", batch=4, caption_dropout=0.0, quiet=True)
    record = json.loads((tmp_path / "bank" / "bank.json").read_text())
    assert record["seed"] == BANK_SEED and record["frame_size"] == r.frame_size
    # the same settings read the folder as it is, without rendering
    monkeypatch.setattr(LatentData, "batch", lambda *_: pytest.fail("rendered again"))
    LatentBank(r, ae, text, tmp_path / "bank", batch=4, caption_dropout=0.0, quiet=True)
    # a decoder-only change (stage 0 with a frozen encoder) keeps the latents, so the bank holds
    with torch.no_grad():
        next(ae.dec.parameters()).add_(1.0)
    LatentBank(r, ae, text, tmp_path / "bank", batch=4, caption_dropout=0.0, quiet=True)
    for other, what in ((replace(r, dit_clip_frames=8), r"clip_frames 4 \(this stage: 8\)"),
                        (replace(r, object_weight=0.0), r"object_weight 4.0 \(this stage: 0.0\)"),
                        (replace(r, motion_weights=(("hovering", 1.0),)),
                         r"motion_weights None \(this stage: \[\['hovering', 1.0\]\]\)")):
        with pytest.raises(CheckpointError, match=rf"bank holds clips rendered for other settings: {what}; "
                                                  r"delete it or train into another --out"):
            LatentBank(other, ae, text, tmp_path / "bank", batch=4, caption_dropout=0.0, quiet=True)
    with torch.no_grad():
        next(ae.enc.parameters()).add_(1.0)
    with pytest.raises(CheckpointError, match=r"other settings: encoder '[0-9a-f]{16}' \(this stage"):
        LatentBank(r, ae, text, tmp_path / "bank", batch=4, caption_dropout=0.0, quiet=True)
    # bank files from before the record are taken as they are, and recorded
    (tmp_path / "bank" / "bank.json").unlink()
    LatentBank(r, ae, text, tmp_path / "bank", batch=4, caption_dropout=0.0, quiet=True)
    assert (tmp_path / "bank" / "bank.json").exists()
    (tmp_path / "bank" / "bank.json").write_text("{")
    with pytest.raises(CheckpointError, match=r"bank.json is not a readable bank record .*: delete the folder"):
        LatentBank(r, ae, text, tmp_path / "bank", batch=4, caption_dropout=0.0, quiet=True)


def _shipped(tmp_path):
    """An assets folder with an autoencoder and a tiny-mha, and a run folder with that same autoencoder."""
    assets, run = tmp_path / "assets", tmp_path / "run"
    (assets / "tiny-mha").mkdir(parents=True)
    run.mkdir()
    build_autoencoder("ae-tiny", seed=0).save(assets / "ae.safetensors")
    (run / "ae.safetensors").write_bytes((assets / "ae.safetensors").read_bytes())
    for name in ("model.safetensors", "model.json"):
        (assets / "tiny-mha" / name).write_text("the shipped twin")
    return assets, run


def _start_weights(tmp_path, run):
    """Starting weights for the `--*-from` flags: tmp_path/mla.safetensors (fp32) and
    tmp_path/mha.safetensors (bf16, as shipped); returns the dense model."""
    from videomla_app.autoencoder import CausalVideoAE

    ae, text = CausalVideoAE.load(run / "ae.safetensors"), ToyTextEncoder(32, 8)
    mla = build_model(dit_preset(SMOKE, "mla", ae, text).model, seed=5)
    save_file(mla.state_dict(), str(tmp_path / "mla.safetensors"))
    dense = build_model(dit_preset(SMOKE, "mha", ae, text).model, seed=5)
    save_file({k: v.to(torch.bfloat16) for k, v in dense.state_dict().items()}, str(tmp_path / "mha.safetensors"))
    return dense


def _train(run, *args):
    return CliRunner().invoke(app, ["train", *args, "--recipe", "smoke", "--out", str(run)])


def test_a_recipe_that_scales_the_object_weight_shares_the_bank(tmp_path, monkeypatch):
    """``object_loss`` (recipes `tiny-t4-cpu-own750-plain`, `-obj2`) reads the bank of a weighted
    round without rendering it again, since the bank keeps the weight maps either way, and hands
    the loss ``1 + share * object_weight * cover``: no weight at all at 0, so the step is the plain
    MSE."""
    import shutil

    from videomla_app.autoencoder import CausalVideoAE
    from videomla_app.train import stages

    _, run = _shipped(tmp_path)
    ae, text = CausalVideoAE.load(run / "ae.safetensors"), ToyTextEncoder(32, 8)
    weighted = replace(SMOKE, bank_batches=1)
    start = tmp_path / "start.safetensors"
    save_file(build_model(dit_preset(weighted, "mla", ae, text).model, seed=5).state_dict(), str(start))
    seen, real = [], stages.flow_matching_loss

    def spy(*args, weight=None, **kwargs):
        seen.append(weight)
        return real(*args, weight=weight, **kwargs)

    monkeypatch.setattr(stages, "flow_matching_loss", spy)
    train_dit("mla", weighted, run, ae, text, quiet=True, mla_from=start)
    full = list(seen)
    assert len(full) == weighted.mla_train.steps and all(w is not None and float(w.max()) > 1.0 for w in full)
    monkeypatch.setattr(LatentData, "batch", lambda *_: pytest.fail("rendered again"))
    for share in (0.0, 0.25):
        other = tmp_path / f"share{share}"
        other.mkdir()
        shutil.copy(run / "ae.safetensors", other)
        shutil.copytree(run / "bank", other / "bank")
        seen.clear()
        train_dit("mla", replace(weighted, object_loss=share), other, ae, text, quiet=True, mla_from=start)
        assert len(seen) == len(full)
        if share == 0.0:
            assert all(w is None for w in seen)
        else:  # the same banked clips step by step, their object excess scaled
            assert all(torch.allclose(w, 1.0 + share * (f - 1.0)) for w, f in zip(seen, full))
    assert RECIPES["tiny-t4-cpu-own750-plain"].object_loss == 0.0
    assert RECIPES["tiny-t4-cpu-own750-obj2"].object_loss == 0.25
    assert RECIPES["tiny-t4-cpu-own750-all"].object_loss == 1.0


def test_stage_2_goes_on_from_given_mla_weights_and_ship_keeps_the_twin(tmp_path, new_file_mode):
    assets, run = _shipped(tmp_path)
    text = ToyTextEncoder(32, 8)
    from videomla_app.autoencoder import CausalVideoAE

    ae = CausalVideoAE.load(run / "ae.safetensors")
    r = replace(SMOKE, bank_batches=1)
    start = build_model(dit_preset(r, "mla", ae, text).model, seed=5)
    save_file({k: v.to(torch.bfloat16) for k, v in start.state_dict().items()},
              str(tmp_path / "start.safetensors"))
    mla, trainer = train_dit("mla", r, run, ae, text, quiet=True, mla_from=tmp_path / "start.safetensors")
    assert not (run / "mha.safetensors").exists() and (run / "bank" / "b0000.pt").exists()
    assert trainer.init.startswith("start.safetensors (sha256 ") and len(trainer.log) == r.mla_train.steps
    begun = {k: v.bfloat16().float() for k, v in start.state_dict().items()}
    assert any(not torch.equal(v, begun[k]) for k, v in mla.state_dict().items())  # it trained
    # ship writes tiny and leaves the shipped twin and autoencoder alone
    ae_bytes = (assets / "ae.safetensors").read_bytes()
    written = ship(run, assets, r, text)
    assert sorted(p.relative_to(assets).as_posix() for p in written) == ["tiny/model.json",
                                                                          "tiny/model.safetensors"]
    shipped = load_file(str(assets / "tiny" / "model.safetensors"))
    assert all(torch.equal(v, mla.state_dict()[k].to(torch.bfloat16)) for k, v in shipped.items())
    assert (assets / "tiny-mha" / "model.safetensors").read_text() == "the shipped twin"
    assert (assets / "ae.safetensors").read_bytes() == ae_bytes
    # the weights get the umask's permissions like model.json, not save_file's private 0600
    modes = {p.name: p.stat().st_mode & 0o777 for p in written}
    assert modes["model.safetensors"] == modes["model.json"] == new_file_mode, modes
    # the sampling guidance, when a recipe sets one, is what model.json ships (not the training scale)
    for recipe, shipped_g in ((replace(r, guidance=2.0), 2.0),
                              (replace(r, guidance=2.0, sample_guidance=1.5), 1.5)):
        ship(run, assets, recipe, text)
        assert json.loads((assets / "tiny" / "model.json").read_text())["sampler"]["guidance"] == shipped_g
    # a run with its own autoencoder cannot leave the twin: it reads other latents
    build_autoencoder("ae-tiny", seed=1).save(run / "ae.safetensors")
    with pytest.raises(FileNotFoundError, match="can leave tiny-mha as shipped only when its ae.safetensors is"):
        ship(run, assets, r, text)


def _start_flag(run, flag: str, stage: str, other: str, right: Path, wrong: Path, model: str, use: str):
    """A start-weights flag (--mla-from, --twin-from): refused by another stage and for the other
    model's weights, each in one line; then the stage trained from ``right`` (its CLI result)."""
    r = _train(run, other, flag, str(right))
    assert r.exit_code == 2 and r.output == f"error: {flag} starts stage {stage}; stage {other} does not use it\n"
    r = _train(run, stage, flag, str(wrong))
    assert r.exit_code == 2 and r.output.strip().splitlines()[-1] == (
        f"error: {flag} {wrong}: not weights of this recipe's {model} model (names or shapes differ); "
        f"use {use}"), r.output
    return _train(run, stage, flag, str(right))


def test_train_mla_from_on_the_command_line(tmp_path, monkeypatch):
    """`--mla-from` replaces stage 2's need for the stage-1 weights; other stages refuse it; a file
    that is not MLA weights gets one line."""
    assets, run = _shipped(tmp_path)
    monkeypatch.setenv("VIDEOMLA_ASSETS", str(assets))
    _start_weights(tmp_path, run)
    r = _start_flag(run, "--mla-from", "mla", "mha", tmp_path / "mla.safetensors", tmp_path / "mha.safetensors",
                    "MLA", "a run's mla.safetensors or a tiny model.safetensors")
    assert r.exit_code == 0 and (run / "mla.safetensors").exists(), r.output
    r = CliRunner().invoke(app, ["train", "ship", "--recipe", "smoke", "--out", str(run)])
    assert r.exit_code == 0 and "wrote" in r.output and "tiny-mha" not in r.output, r.output
    assert (assets / "tiny-mha" / "model.json").read_text() == "the shipped twin"


def test_train_twin_from_on_the_command_line(tmp_path, monkeypatch):
    """`--twin-from` gives stage 3 its start, so the twin can get the fine-tune `tiny` got with
    `--mla-from`: no stage-1 weights needed, other stages refuse it, MLA weights get one line, and
    `ship` writes only tiny-mha, leaving the shipped tiny."""
    assets, run = _shipped(tmp_path)
    (assets / "tiny").mkdir()
    for name in ("model.safetensors", "model.json"):
        (assets / "tiny" / name).write_text("the shipped tiny")
    monkeypatch.setenv("VIDEOMLA_ASSETS", str(assets))
    dense = _start_weights(tmp_path, run)
    r = _start_flag(run, "--twin-from", "twin", "mla", tmp_path / "mha.safetensors", tmp_path / "mla.safetensors",
                    "dense", "a run's mha.safetensors or a tiny-mha model.safetensors")
    assert r.exit_code == 0 and (run / "twin.safetensors").exists() and not (run / "mha.safetensors").exists()
    twin = load_file(str(run / "twin.safetensors"))
    assert any(not torch.equal(v.bfloat16(), dense.state_dict()[k].bfloat16()) for k, v in twin.items())  # trained
    r = CliRunner().invoke(app, ["train", "ship", "--recipe", "smoke", "--out", str(run)])
    assert r.exit_code == 0 and "tiny-mha" in r.output and "tiny/" not in r.output, r.output
    assert (assets / "tiny" / "model.json").read_text() == "the shipped tiny"
    assert json.loads((assets / "tiny-mha" / "model.json").read_text())["preset"] == SMOKE.mha_preset


def test_motion_weights_key_the_clips_bank_but_not_the_pairs_bank():
    """The weights draw the independent clips' motions only, so a weighted round reads the contrast
    pairs an unweighted round rendered (the hovering round links the four-chunk round's); and the
    records of banks rendered before the weights existed still hold (no new key without weights)."""
    from videomla_app.train.bank import bank_record, clip_settings

    ae, text = build_autoencoder("ae-tiny", seed=0).eval(), ToyTextEncoder(32, 8)
    base, hover = RECIPES["tiny-t4-cpu-own750-chain12"], RECIPES["tiny-t4-cpu-own750-hover"]
    assert set(clip_settings(base)) == {"frame_size", "clip_frames", "object_weight"}
    assert clip_settings(hover)["motion_weights"][-1] == ["hovering", 3.0]
    assert clip_settings(hover, pairs=True) == clip_settings(base) == clip_settings(base, pairs=True)
    pairs = (base.pair_motions, base.pair_counts)
    assert bank_record(hover, ae, text, 1, *pairs) == bank_record(base, ae, text, 1, *pairs)
    assert bank_record(hover, ae, text, 1) != bank_record(base, ae, text, 1)
    # the colour weights the same way: the orange round reads the same pairs, not the same clips
    orange = RECIPES["tiny-t4-cpu-own750-orange"]
    assert clip_settings(orange)["colour_weights"][1] == ["orange", 3.0]
    assert "motion_weights" not in clip_settings(orange)
    assert clip_settings(orange, pairs=True) == clip_settings(base)
    assert bank_record(orange, ae, text, 1, *pairs) == bank_record(base, ae, text, 1, *pairs)
    assert bank_record(orange, ae, text, 1) != bank_record(base, ae, text, 1)
