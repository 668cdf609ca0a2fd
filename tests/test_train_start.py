"""``train --mha-from``: stage 1 goes on from given dense weights (what lets minutes on a lent GPU
build on hours of CPU training), and the ``tiny-gpu`` recipe, the shipped recipe with its time
split for such a run."""

from dataclasses import fields, replace

import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from videomla_app.cli import app
from videomla_app.encoders import ToyTextEncoder
from videomla_app.train.card import write_card
from videomla_app.train.loop import read_checkpoint_log
from videomla_app.train.stages import RECIPES, train_ae, train_dit


def test_stage_one_starts_from_the_given_weights_and_the_card_says_so(tmp_path):
    r = RECIPES["smoke"]
    first, second = tmp_path / "first", tmp_path / "second"
    ae = train_ae(r, first, quiet=True)
    text = ToyTextEncoder(32, 8)
    train_dit("mha", r, first, ae, text, quiet=True)
    trained = load_file(str(first / "mha.safetensors"))
    start = tmp_path / "start.safetensors"  # shipped weights are bf16: loaded as fp32
    save_file({k: v.to(torch.bfloat16) for k, v in trained.items()}, str(start))
    # lr 0 (AdamW's decay is scaled by lr too): the weights the stage ends with are the ones it began with
    frozen = replace(r, mha_train=replace(r.mha_train, lr=0.0))
    train_dit("mha", frozen, second, ae, text, quiet=True, mha_from=start)
    got = load_file(str(second / "mha.safetensors"))
    assert all(torch.equal(v, trained[k].to(torch.bfloat16).float()) for k, v in got.items())
    init = read_checkpoint_log(second / "mha.ckpt.pt")["init"]
    assert init.startswith("start.safetensors (sha256 ") and read_checkpoint_log(first / "mha.ckpt.pt")["init"] is None
    # without it, the same frozen stage ends where its own seeded initialisation began: not those weights
    third = tmp_path / "third"
    third.mkdir()
    train_dit("mha", frozen, third, ae, text, quiet=True)
    assert any(not torch.equal(v, got[k]) for k, v in load_file(str(third / "mha.safetensors")).items())
    # a resumed run keeps the record (its weights come from the checkpoint, not from the file)
    _, t = train_dit("mha", replace(frozen, mha_train=replace(frozen.mha_train, steps=6)), second, ae, text,
                     resume=True, quiet=True)
    assert t.step == 6 and t.init == init
    card = write_card(second, tmp_path / "assets", r).read_text()
    assert f"Stage mha started from `{init}`, not from its own initialisation (`train --mha-from`)" in card
    assert "trained from scratch" not in card
    assert "trained from scratch" in write_card(first, tmp_path / "assets", r).read_text()


def test_mha_from_errors_are_one_line(tmp_path):
    def run(*args):
        res = CliRunner().invoke(app, ["train", *args])
        errors = [line for line in res.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in res.output, res.output
        return res.exit_code, errors[0]

    out = tmp_path / "run"
    assert run("mha", "--recipe", "smoke", "--out", str(out), "--mha-from", str(tmp_path / "nope")) == (
        2, f"error: --mha-from {tmp_path}/nope: no such file")
    (tmp_path / "w.safetensors").write_bytes(b"junk")
    assert run("mla", "--recipe", "smoke", "--out", str(out), "--mha-from", str(tmp_path / "w.safetensors")) == (
        2, "error: --mha-from starts stage mha; stage mla does not use it")
    assert CliRunner().invoke(app, ["train", "ae", "--recipe", "smoke", "--out", str(out)]).exit_code == 0
    code, msg = run("mha", "--recipe", "smoke", "--out", str(out), "--mha-from", str(tmp_path / "w.safetensors"))
    assert code == 2 and msg.startswith(f"error: --mha-from {tmp_path}/w.safetensors: not readable safetensors weights")
    # the autoencoder's weights: a real safetensors file, another model's
    code, msg = run("mha", "--recipe", "smoke", "--out", str(out), "--mha-from", str(out / "ae.safetensors"))
    assert code == 2 and msg == (f"error: --mha-from {out}/ae.safetensors: not weights of this recipe's dense model "
                                 "(names or shapes differ); use a run's mha.safetensors or a tiny-mha model.safetensors")
    assert not (out / "mha.ckpt.pt").exists()  # nothing trained, nothing to --resume by mistake


def test_tiny_gpu_is_the_tiny_recipe_with_another_time_split_rates_and_sampler():
    tiny, gpu = RECIPES["tiny"], RECIPES["tiny-gpu"]
    differ = {f.name for f in fields(tiny) if getattr(tiny, f.name) != getattr(gpu, f.name)}
    assert differ == {"name", "mha_train", "mla_train", "distill_train", "budget_shares", "warm_start"}
    assert gpu.warm_start == 0  # measured on the weights it made (the shipped ones)
    for stage in ("mha_train", "mla_train", "distill_train"):  # only the learning rate moves
        assert replace(getattr(gpu, stage), lr=getattr(tiny, stage).lr) == getattr(tiny, stage)
    assert gpu.budget_share("mla") > gpu.budget_share("twin") > gpu.budget_share("mla-cfg")
