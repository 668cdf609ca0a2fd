"""Contrast pairs: one world drawn twice with two motions (or two counts), captioned alike but for the
motion (count) phrase, banked beside the plain clips and trained on one noise draw per pair."""

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch

from videomla_app import world
from videomla_app.autoencoder import build_autoencoder
from videomla_app.config import get_preset
from videomla_app.encoders import ToyTextEncoder
from videomla_app.model import build_model
from videomla_app.train.bank import PAIR_SEED, RENDER_BATCH, LatentBank
from videomla_app.train.data import CONTRAST, COUNT_CONTRAST, pair_batch
from videomla_app.train.flow import flow_matching_loss, flow_prediction, share_pairs
from videomla_app.train.loop import step_generator
from videomla_app.train.stages import RECIPES, LatentData, train_dit
from videomla_app.world.captions import COUNT_PHRASES
from videomla_app.world.spec import COUNTS

# the words of every count phrase ("a lone", "a trio of", "four", ...)
COUNT_WORDS = {w for ps in COUNT_PHRASES.values() for p in ps for w in p.lower().split()} | {"a", "an"}
SMOKE = replace(RECIPES["smoke"], object_weight=4.0, caption_dropout=0.5)
PAIRED = replace(SMOKE, bank_batches=1, pair_bank_batches=1, pairs_per_step=1, pair_motions=("left", "right"))


def test_a_contrast_pair_is_one_world_whose_motion_and_motion_phrase_alone_differ():
    frames, captions, scenes = pair_batch(128, 3, seed=7, pairs=3, n_frames=40, motions=("left", "right"))
    assert frames.shape == (6, 40, 128, 128, 3) and frames.dtype == np.uint8
    assert len(captions) == len(scenes) == 6
    for i in range(0, 6, 2):
        a, b = world.parse_prompt(captions[i]), world.parse_prompt(captions[i + 1])
        assert a["motion"] in ("left", "right") and b["motion"] == CONTRAST[a["motion"]][0]
        assert {**a, "motion": b["motion"]} == b, (captions[i], captions[i + 1])  # nothing else differs
        # the wording is shared too: the captions differ in the motion phrase's words only
        ca, cb = captions[i].split(), captions[i + 1].split()
        assert len(ca) == len(cb) and sum(x != y for x, y in zip(ca, cb)) <= 1, (captions[i], captions[i + 1])
        assert scenes[i] == scenes[i + 1] == a["scene"]
        # the pixels move the way the captions say (the readers of the evaluation)
        assert world.read_motion(frames[i], scenes[i]) == a["motion"]
        assert world.read_motion(frames[i + 1], scenes[i]) == b["motion"]
    again = pair_batch(128, 3, seed=7, pairs=3, n_frames=40, motions=("left", "right"))
    assert np.array_equal(again[0], frames) and again[1] == captions  # a pure function of (seed, step)
    assert pair_batch(128, 4, seed=7, pairs=3, n_frames=40, motions=("left", "right"))[1] != captions
    # every motion has a contrast that is another motion of the world
    assert set(CONTRAST) == set(world.VOCAB["motion"]) and all(
        m not in c and set(c) <= set(CONTRAST) for m, c in CONTRAST.items())


def test_bouncing_pairs_contrast_with_the_motions_that_stay_in_place():
    _, captions, _ = pair_batch(32, 0, seed=1, pairs=8, n_frames=2, motions=("bouncing",))
    seconds = {world.parse_prompt(c)["motion"] for c in captions[1::2]}
    assert {world.parse_prompt(c)["motion"] for c in captions[::2]} == {"bouncing"}
    assert seconds == {"hovering", "circling"}


def test_a_count_pair_is_one_world_whose_count_and_count_phrase_alone_differ():
    frames, captions, scenes = pair_batch(64, 5, seed=3, pairs=12, n_frames=4, motions=(), counts=(1, 3))
    firsts = set()
    for i in range(0, 24, 2):
        a, b = world.parse_prompt(captions[i]), world.parse_prompt(captions[i + 1])
        firsts.add(a["count"])
        assert a["count"] in (1, 3) and b["count"] in COUNT_CONTRAST[a["count"]], captions[i:i + 2]
        assert {**a, "count": b["count"]} == b, (captions[i], captions[i + 1])  # nothing else differs
        # the same wording: only the count phrase and the number of the noun and the verb may differ
        ca, cb = Counter(captions[i].lower().split()), Counter(captions[i + 1].lower().split())
        differ = set((ca - cb) + (cb - ca))
        number = {w for w in differ for v in differ if w in (v + "s", v + "es") or v in (w + "s", w + "es")}
        assert differ - number <= COUNT_WORDS, (captions[i], captions[i + 1])
        # the pixels hold as many objects as the captions say (the evaluation's reader)
        assert world.read_count(frames[i], scenes[i]) == a["count"]
        assert world.read_count(frames[i + 1], scenes[i]) == b["count"]
    assert firsts == {1, 3}
    assert set(COUNT_CONTRAST) == set(COUNTS) and all(
        c not in o and len(o) == 3 for c, o in COUNT_CONTRAST.items())
    # pairs over motions and counts mix both kinds
    mixed = pair_batch(32, 0, seed=1, pairs=16, n_frames=2, motions=("left",), counts=(2,))[1]
    kinds = {"count" if world.parse_prompt(mixed[i])["motion"] == world.parse_prompt(mixed[i + 1])["motion"]
             else "motion" for i in range(0, 32, 2)}
    assert kinds == {"count", "motion"}
    # pairs over motions alone draw what they drew before count pairs existed, so the contrast-pair
    # recipe's bank (seed PAIR_SEED) is still the one the shipped contrast-pair pair trained on
    assert pair_batch(32, 0, PAIR_SEED, 2, 1, ("left", "right", "bouncing"))[1] == [
        "A trio of tiny blue hearts glide rightward steadily in a studio",
        "A trio of tiny blue hearts glide leftward steadily in a studio",
        "A video of two tiny red squares jumping slowly in a meadow",
        "A video of two tiny red squares moving in a circle slowly in a meadow"]


def test_a_pair_shares_its_noise_draw_and_the_other_clips_keep_theirs():
    P = get_preset("test-mla")
    model = build_model(P.model, seed=0)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(4, 6, P.model.latent_channels, *P.model.latent_hw, generator=g)
    text = torch.randn(4, P.text_len, P.model.text_dim, generator=g)
    x0[3], text[3] = x0[2], text[2]  # clips 2 and 3: the same clip and prompt
    with torch.no_grad():
        plain, target, _ = flow_prediction(model, x0, text, P.cache, P.sampler, step_generator(0, 0),
                                           anchor_first=0.5)
        paired, ptarget, _ = flow_prediction(model, x0, text, P.cache, P.sampler, step_generator(0, 0),
                                             anchor_first=0.5, pairs=1)
    assert torch.equal(paired[3], paired[2]) and torch.equal(ptarget[3], ptarget[2])  # one draw for the pair
    assert not torch.equal(plain[3], plain[2])
    # the pair's first clip and the clips before it get exactly the unpaired draws
    assert torch.equal(paired[:3], plain[:3]) and torch.equal(ptarget[:3], target[:3])
    assert flow_matching_loss(model, x0, text, P.cache, P.sampler, step_generator(0, 0), pairs=2).isfinite()
    x = torch.arange(6.0)
    assert share_pairs(x, 2).tolist() == [0, 1, 2, 2, 4, 4] and share_pairs(x, 0).tolist() == x.tolist()
    with pytest.raises(ValueError, match="4 pairs do not fit a batch of 6"):
        share_pairs(x, 4)


def test_the_bank_ends_each_batch_with_captioned_pairs_from_its_own_bank(tmp_path):
    ae, text = build_autoencoder("ae-tiny", seed=0).eval(), ToyTextEncoder(32, 8)
    bank = LatentBank(PAIRED, ae, text, tmp_path / "bank", batch=4, caption_dropout=1.0, quiet=True,
                      pair_folder=tmp_path / "pairs")
    assert sorted(p.name for p in (tmp_path / "pairs").iterdir()) == ["b0000.pt", "bank.json"]
    assert bank.pairs == 1 and len(bank.pair_x0) == RENDER_BATCH
    fresh = LatentData(replace(PAIRED, caption_dropout=0.0), ae, text, PAIR_SEED, RENDER_BATCH,
                       pair_motions=PAIRED.pair_motions)
    px0, ptext, pweight = fresh.batch(0)
    fresh.close()
    assert fresh.pairs == RENDER_BATCH // 2 and torch.equal(bank.pair_text, ptext)
    assert torch.equal(bank.pair_x0.float(), px0.half().float())
    for step in range(6):
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as the trainer draws them
            x0, states, weight = bank.batch(step)
        assert x0.dtype == weight.dtype == torch.float32
        assert x0.shape[0] == states.shape[0] == weight.shape[0] == 4
        assert torch.equal(states[:2], text.encode([""]).expand(2, -1, -1))  # plain clips: dropped
        i = next(k for k in range(0, RENDER_BATCH, 2) if torch.equal(px0[k].half().float(), x0[2]))
        assert torch.equal(x0[3], px0[i + 1].half().float())  # the pair's partner follows it
        assert torch.equal(states[2:], ptext[i:i + 2])  # pairs keep their captions
        assert torch.equal(weight[2:], pweight[i:i + 2].half().float())
    # a pair-less recipe draws exactly as before: the same plain clips for a step
    plain = LatentBank(replace(SMOKE, bank_batches=1), ae, text, tmp_path / "bank", batch=4,
                       caption_dropout=0.0, quiet=True)
    assert plain.pairs == 0 and plain.batch(2)[0].shape[0] == 4
    with pytest.raises(ValueError, match="2 contrast pairs do not fit a batch of 3"):
        LatentBank(replace(PAIRED, pairs_per_step=2), ae, text, tmp_path / "bank", batch=3,
                   caption_dropout=0.0, quiet=True, pair_folder=tmp_path / "pairs")
    with pytest.raises(ValueError, match="pairs_per_step needs pair_bank_batches, pair_motions or "
                                         "pair_counts, and a pair folder"):
        LatentBank(PAIRED, ae, text, tmp_path / "bank", batch=4, caption_dropout=0.0, quiet=True)
    with pytest.raises(ValueError, match="contrast pairs need an even batch, got 3"):
        LatentData(PAIRED, ae, text, PAIR_SEED, 3, pair_motions=("left",))


def test_a_stage_with_contrast_pairs_trains_from_its_two_banks(tmp_path):
    ae, text = build_autoencoder("ae-tiny", seed=0).eval(), ToyTextEncoder(32, 8)
    ae.save(tmp_path / "ae.safetensors")
    model, trainer = train_dit("mha", PAIRED, tmp_path, ae, text, quiet=True)
    assert (tmp_path / "bank" / "b0000.pt").exists() and (tmp_path / "pairs" / "b0000.pt").exists()
    assert len(trainer.log) == PAIRED.mha_train.steps and all(np.isfinite(e["loss"]) for e in trainer.log)
    with pytest.raises(ValueError, match="contrast pairs are drawn from a bank"):
        train_dit("mha", replace(PAIRED, bank_batches=0), tmp_path / "x", ae, text, quiet=True)
    # the CPU recipe of the shipped pair's contrast fine-tune
    r = RECIPES["tiny-t4-cpu-pairs"]
    assert (r.pairs_per_step, r.pair_bank_batches, r.pair_motions) == (1, 48, ("left", "right", "bouncing"))
    assert replace(r, name="tiny-t4-cpu-anchor", pairs_per_step=0, pair_bank_batches=0,
                   pair_motions=()) == RECIPES["tiny-t4-cpu-anchor"]
    # ... and of its count pairs: two pairs per batch, over those motions and every count
    c = RECIPES["tiny-t4-cpu-counts"]
    assert (c.pairs_per_step, c.pair_bank_batches, c.pair_counts) == (2, 64, (1, 2, 3, 4))
    assert replace(c, name=r.name, pairs_per_step=1, pair_bank_batches=48, pair_counts=()) == r


def test_count_pairs_alone_fill_a_bank(tmp_path):
    ae, text = build_autoencoder("ae-tiny", seed=0).eval(), ToyTextEncoder(32, 8)
    counted = replace(PAIRED, pair_motions=(), pair_counts=(1, 4))
    bank = LatentBank(counted, ae, text, tmp_path / "bank", batch=4, caption_dropout=0.0, quiet=True,
                      pair_folder=tmp_path / "pairs")
    assert bank.pairs == 1 and len(bank.pair_x0) == RENDER_BATCH
    x0, states, _ = bank.batch(0)
    assert x0.shape[0] == states.shape[0] == 4
