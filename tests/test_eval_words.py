"""Which caption words a model uses (``eval_words.py``, ``videomla eval --words``), and the
full-context and per-frame noise that give direction words something to do in training
(``train/flow.py``)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from videomla_app import world
from videomla_app.cli import app
from videomla_app.config import get_preset
from videomla_app.eval_words import SWAPS, _swapped
from videomla_app.model import build_model
from videomla_app.scheduler import FlowSampler
from videomla_app.train.flow import (anchored_timesteps, chunk_timesteps, flow_prediction, frame_timesteps,
                                     full_context_timesteps)

P = get_preset("test-mha")
BALL = world.WorldSpec("ball", "red", "medium", 1, "left", "day")


def test_each_swap_changes_exactly_its_word():
    rng = np.random.default_rng(0)
    for attr in ("colour", "shape", "count", "motion", "scene"):
        other = _swapped(BALL, attr, rng)
        assert getattr(other, attr) != getattr(BALL, attr)
        assert replace(other, **{attr: getattr(BALL, attr)}) == BALL
    assert _swapped(BALL, "direction", rng).motion == "right"
    assert _swapped(replace(BALL, motion="down"), "direction", rng).motion == "up"
    assert _swapped(replace(BALL, motion="circling"), "direction", rng) is None  # no opposite to swap in


def test_full_context_levels_are_drawn_like_the_noisy_chunks():
    sampler = FlowSampler(P.sampler)
    gen = torch.Generator().manual_seed(0)
    t_ctx = chunk_timesteps(400, 9, 3, sampler, gen, 50.0)  # [B, F], all in [0, 50]
    assert torch.equal(full_context_timesteps(t_ctx, 0.0, 3, sampler, gen), t_ctx)
    full = full_context_timesteps(t_ctx, 1.0, 3, sampler, gen)
    table = set(sampler.train_timesteps.float().tolist())
    assert set(full.unique().tolist()) <= table
    assert torch.equal(full, full[:, ::3].repeat_interleave(3, dim=1))  # one level per chunk
    assert (full > 50).float().mean() > 0.5
    half = full_context_timesteps(t_ctx, 0.5, 3, sampler, gen)
    replaced = (half != t_ctx).any(dim=1).float().mean().item()
    assert 0.4 < replaced < 0.6


def test_frame_noise_gives_picked_clips_one_level_per_frame():
    sampler = FlowSampler(P.sampler)
    gen = torch.Generator().manual_seed(0)
    t = chunk_timesteps(400, 9, 3, sampler, gen)  # [B, F], one level per chunk
    assert torch.equal(frame_timesteps(t, 0.0, sampler, gen), t)
    own = frame_timesteps(t, 1.0, sampler, gen)
    assert set(own.unique().tolist()) <= set(sampler.train_timesteps.float().tolist())
    assert (own[:, 0] != own[:, 1]).float().mean() > 0.9  # frames of one chunk now differ
    half = frame_timesteps(t, 0.5, sampler, gen)
    assert 0.4 < (half != t).any(dim=1).float().mean().item() < 0.6


def test_full_context_frame_noise_and_anchor_draws_come_after_the_others():
    """A recipe without them keeps its random stream (so earlier runs resume bit-exactly); with
    them, the same noise is drawn and only the levels change."""
    model = build_model(P.model, seed=0).eval()
    x0 = torch.randn(2, 6, P.model.latent_channels, *P.model.latent_hw, generator=torch.Generator().manual_seed(1))
    text = torch.randn(2, P.text_len, P.model.text_dim, generator=torch.Generator().manual_seed(2))

    def draw(full_context=0.0, frame_noise=0.0, anchor_first=0.0):
        with torch.no_grad():
            return flow_prediction(model, x0, text, P.cache, P.sampler, torch.Generator().manual_seed(3),
                                   full_context=full_context, frame_noise=frame_noise, anchor_first=anchor_first)

    (p0, y0, s0), (p1, y1, _), (p2, y2, _), (p3, y3, s3) = draw(), draw(1.0), draw(0.0, 1.0), draw(anchor_first=1.0)
    assert torch.equal(y0, y1) and torch.equal(y0, y2) and torch.equal(y0, y3)  # same noise, same target
    assert not torch.allclose(p0, p1)  # a different (noisier) context
    assert not torch.allclose(p0, p2)  # different levels per frame
    assert not torch.allclose(p0[:, :2], p3[:, :2])  # the first chunk sees a nearly clean first frame
    # chunk-causal: chunks after the first never see the first chunk's noisy half
    assert torch.allclose(p0[:, 2:], p3[:, 2:], atol=1e-6)
    assert s0.all() and s3[:, 1:].all() and not s3[:, 0].any()  # an anchored first frame is not scored


def test_anchored_first_frames_take_their_context_level():
    sampler = FlowSampler(P.sampler)
    gen = torch.Generator().manual_seed(0)
    t = chunk_timesteps(400, 6, 3, sampler, gen)
    t_ctx = chunk_timesteps(400, 6, 3, sampler, gen, 50.0)
    assert torch.equal(anchored_timesteps(t, t_ctx, 0.0, gen)[0], t)
    a, picked = anchored_timesteps(t, t_ctx, 0.5, gen)
    moved = a[:, 0] != t[:, 0]
    assert torch.equal(picked[:, 0], moved) and not picked[:, 1:].any()
    assert 0.4 < moved.float().mean() < 0.6  # the stated fraction of clips
    assert torch.equal(a[moved, 0], t_ctx[moved, 0]) and (a[:, 0] <= 50).sum() >= moved.sum()
    assert torch.equal(a[:, 1:], t[:, 1:])  # the rest of the first chunk keeps its level


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a shared 2-core runner
    yield
    torch.set_num_threads(n)


def test_eval_words_reports_which_words_the_shipped_model_uses(tmp_path, offline):
    path = tmp_path / "words.json"
    r = CliRunner().invoke(app, ["eval", "-m", "tiny", "--words", "3", "--prompts", "0", "--json", str(path)])
    assert r.exit_code == 0, r.output
    for attr in SWAPS:
        assert f"\n{attr} " in r.output
    words = json.loads(path.read_text())["words"]["tiny"]
    used = words["clips"]
    assert 1 <= used <= 3
    swaps = words["swaps"]
    assert all(swaps[a]["first"]["n"] == used for a in SWAPS if a != "direction")
    assert swaps["direction"]["first"]["n"] <= used  # only clips that move straight
    # the shipped model draws the prompted colour and scene: the wrong word costs it loss
    assert swaps["colour"]["first"]["mean"] > 5 and swaps["scene"]["first"]["mean"] > 5
    # how far the text encoder moves with each word, once per swap made
    assert "text change" in r.output and "in 1 token" in r.output
    text = words["text"]
    assert text["colour"]["change"]["n"] == used and text["direction"]["change"]["n"] <= used
    assert all(0 < text[a]["change"]["mean"] and 0 < text[a]["one_token"]["mean"] <= 100
               for a in SWAPS if text[a]["change"]["n"])


def test_text_change_measures_how_far_the_encoder_moves_with_a_word(offline):
    """MiniLM's token states for "drifting left" and "drifting right" differ least of the swaps
    (24 % of their norm, against 41 % for a colour) and mostly in the word's own token (80 % of
    the move, against 55 %): what ``--words`` prints next to each word."""
    from videomla_app.eval_words import _text_change
    from videomla_app.text_encoder import MiniLMTextEncoder

    te = MiniLMTextEncoder()
    s = te.encode([world.caption(BALL), world.caption(replace(BALL, motion="right")),
                   world.caption(replace(BALL, colour="blue"))]).float()  # [3, L, D]
    direction, colour = _text_change(s[0], s[1]), _text_change(s[0], s[2])
    assert direction["change"] == pytest.approx(24.1, abs=2)
    assert colour["change"] == pytest.approx(40.7, abs=2)
    assert direction["one_token"] == pytest.approx(79.7, abs=3)
    assert colour["one_token"] == pytest.approx(54.5, abs=3)
    assert _text_change(s[0], s[0]) == {"change": 0.0, "one_token": 0.0}


def test_anchored_word_use_changes_only_the_first_chunk(offline):
    """Measured as the anchored sampler makes the first chunk: its first frame nearly clean and not
    scored; the later chunks read only the context, so their numbers are the plain ones."""
    from videomla_app.eval_words import word_use
    from videomla_app.models import load_pipeline

    pipe = load_pipeline("tiny", device="cpu")
    plain, anchored = word_use(pipe, clips=2, anchored=False), word_use(pipe, clips=2, anchored=True)
    assert (plain["anchored"], anchored["anchored"]) == (False, True)
    assert anchored["loss"]["later"] == pytest.approx(plain["loss"]["later"], rel=1e-5)
    assert anchored["loss"]["first"] != pytest.approx(plain["loss"]["first"], rel=1e-3)
    # by default as the model's own sampler: the shipped `tiny` samples anchored, a plain one not
    assert pipe.preset.sampler.anchor_first and word_use(pipe, clips=1)["anchored"] is True
    pipe.preset = replace(pipe.preset, sampler=replace(pipe.preset.sampler, anchor_first=False))
    assert word_use(pipe, clips=1)["anchored"] is False


def test_eval_words_errors_are_one_line():
    r = CliRunner().invoke(app, ["eval", "-m", "small-mla", "--words", "4", "--prompts", "0"])
    assert r.exit_code == 2
    assert "--words measures models trained on the built-in world; not small-mla" in r.output
    r = CliRunner().invoke(app, ["eval", "-m", "tiny", "--words", "-1", "--prompts", "0"])
    assert r.exit_code == 2 and "--words must be between 0 and 1000 clips, got -1" in r.output
    r = CliRunner().invoke(app, ["eval", "-m", "tiny", "--prompts", "0"])
    assert r.exit_code == 2 and "--prompts 0 without --ranks or --words leaves nothing to do" in r.output


def test_ctrl_c_during_word_use_keeps_what_was_measured(tmp_path, offline, monkeypatch):
    import videomla_app.eval_words as eval_words

    real = eval_words.word_use

    def second_interrupted(pipe, clips, seed):
        if pipe.preset.name == "tiny-mha":
            raise KeyboardInterrupt
        return real(pipe, clips=clips, seed=seed)

    monkeypatch.setattr(eval_words, "word_use", second_interrupted)
    path = tmp_path / "words.json"
    r = CliRunner().invoke(app, ["eval", "-m", "tiny,tiny-mha", "--words", "1", "--prompts", "0",
                                 "--json", str(path)])
    assert r.exit_code == 130, r.output
    assert "interrupted: word use measured for tiny" in r.output
    assert list(json.loads(path.read_text())["words"]) == ["tiny"]
