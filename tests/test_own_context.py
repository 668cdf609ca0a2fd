"""The model's own frames as teacher-forcing context (``train/own_context.py``): each chunk redrawn by
the model from the true chunk partly noised, reading the true chunks before it; the targets stay true."""

from dataclasses import replace

import pytest
import torch

from videomla_app.config import get_preset
from videomla_app.model import build_model
from videomla_app.scheduler import FlowSampler
from videomla_app.train.flow import flow_matching_loss, flow_prediction, teacher_forcing_inputs
from videomla_app.train.loop import Trainer, TrainConfig, step_generator
from videomla_app.train.own_context import OwnContext, own_frames
from videomla_app.train.stages import RECIPES, train_dit
from videomla_app.world.spec import COLOURS, MOTIONS
from tests.helpers import toy_flow_clip

P = get_preset("test-mla")  # chunks of 2 frames; sampler steps 1000 and 833 (warped)
C = P.cache.chunk_frames


def _clip(seed: int = 0, batch: int = 2, n: int = 3 * C):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, n, P.model.latent_channels, *P.model.latent_hw, generator=g)
    text = torch.randn(batch, P.text_len, P.model.text_dim, generator=g)
    empty = torch.randn(1, P.text_len, P.model.text_dim, generator=g).expand(batch, -1, -1)
    noise = torch.randn(x0.shape, generator=g)
    return x0, text, empty, noise


@pytest.mark.parametrize("attn", ["mla", "mha"])
def test_own_frames_at_guidance_one_are_the_euler_chain_over_true_context(attn):
    """Unguided, each chunk's redraw is the sampler's Euler chain from the start step, every step
    the teacher-forcing prediction with the true clip as clean context: the same numbers the
    inference path gives (the rolling cache equals teacher forcing, tests/test_train.py)."""
    preset = get_preset(f"test-{attn}")
    model = build_model(preset.model, seed=1).eval()
    x0, text, empty, noise = _clip()
    sampler = FlowSampler(replace(preset.sampler, solver="euler"))
    steps = sampler.timesteps  # [1000, 833.3]
    got = own_frames(model, x0, text, empty, noise, preset, guidance=1.0, start=1000.0)

    n = x0.shape[1]
    inputs = teacher_forcing_inputs(model, n, preset.cache)
    x = sampler.add_noise(x0, noise, steps[0])
    with torch.no_grad():
        for t, t_next in zip(steps, [*steps[1:], 0.0]):
            tt = torch.full((2, n), t)
            v = model.forward_train(torch.cat([x0, x], 1), torch.cat([torch.zeros_like(tt), tt], 1), text,
                                    preset.cache, inputs, teacher_forcing=True)[:, n:]
            x = x + (sampler.sigma(t_next) - sampler.sigma(t)) * v
    assert torch.allclose(got, x, atol=2e-5), (got - x).abs().max()
    # a start between the steps begins at the first step below it: one step from 833 here
    one = own_frames(model, x0, text, empty, noise, preset, guidance=1.0, start=900.0)
    assert not torch.allclose(one, got)
    with pytest.raises(ValueError, match="below every sampler step"):
        own_frames(model, x0, text, empty, noise, preset, guidance=1.0, start=500.0)


def test_own_frames_use_the_guidance_and_only_the_true_chunks_before_them():
    model = build_model(P.model, seed=2).eval()
    x0, text, empty, noise = _clip(3)
    # one Euler step to 0 is affine in the guidance scale: x_t - sigma (v_e + g (v_p - v_e))
    f = {g: own_frames(model, x0, text, empty, noise, P, guidance=g, start=900.0) for g in (0.0, 1.0, 2.0)}
    assert torch.allclose(f[2.0], 2 * f[1.0] - f[0.0], atol=1e-4)
    assert not torch.allclose(f[2.0], f[1.0], atol=1e-3)
    # causal: changing the last chunk's true frames leaves the redraws of the chunks before it
    later = x0.clone()
    later[:, 2 * C:] += 1.0
    # (from 833, not 1000: at pure noise a chunk's own true frames do not enter its redraw)
    moved = own_frames(model, later, text, empty, noise, P, guidance=2.0, start=900.0)
    ref = own_frames(model, x0, text, empty, noise, P, guidance=2.0, start=900.0)
    assert torch.allclose(moved[:, :2 * C], ref[:, :2 * C], atol=1e-5)
    assert not torch.allclose(moved[:, 2 * C:], ref[:, 2 * C:], atol=1e-3)
    # the second chunk reads the first: changing the first chunk changes it
    first = x0.clone()
    first[:, :C] += 1.0
    redrawn = own_frames(model, first, text, empty, noise, P, guidance=2.0, start=900.0)
    assert not torch.allclose(redrawn[:, C:2 * C], ref[:, C:2 * C], atol=1e-3)


def test_own_context_swaps_the_context_of_some_clips_and_keeps_every_target():
    """The chunks read redrawn context in the picked clips only; the noisy half and its targets,
    and every draw of the loss before the swap, are the ones of plain teacher forcing."""
    model = build_model(P.model, seed=4).eval()
    x0, text, empty, _ = _clip(5, batch=8)
    seen = {}

    def spy(m, x, t, g):
        seen["out"] = own(m, x, t, g)
        return seen["out"]

    own = OwnContext(P, empty[:1], fraction=0.5, start=1000.0, guidance=2.0)
    with torch.no_grad():
        pred, target, scored = flow_prediction(model, x0, text, P.cache, P.sampler, step_generator(0, 7),
                                               context=spy)
        plain, plain_target, _ = flow_prediction(model, x0, text, P.cache, P.sampler, step_generator(0, 7))
    assert torch.equal(target, plain_target) and bool(scored.all())
    changed = [bool((seen["out"][i] != x0[i]).any()) for i in range(8)]
    assert 0 < sum(changed) < 8, changed  # a fraction of the batch
    for i in range(8):  # a clip reading true context predicts what plain teacher forcing does
        assert torch.allclose(pred[i], plain[i], atol=1e-5) != changed[i]
    # one call per step generator: the same step draws the same clips and noise again
    again = OwnContext(P, empty[:1], fraction=0.5, start=1000.0, guidance=2.0)(model, x0, text, step_generator(0, 7))
    gen = step_generator(0, 7)
    flow_prediction(model, x0, text, P.cache, P.sampler, gen)  # the loss's own draws come first
    assert not torch.equal(again, x0)
    assert torch.equal(OwnContext(P, empty[:1], 0.5, 1000.0, 2.0)(model, x0, text, gen), seen["out"])
    # contrast pairs (the batch's last 2 pairs) are picked together
    paired = OwnContext(P, empty[:1], fraction=0.5, start=1000.0, guidance=2.0, pairs=2)
    for step in range(6):
        out = paired(model, x0, text, step_generator(1, step))
        picked = [bool((out[i] != x0[i]).any()) for i in range(8)]
        assert picked[4] == picked[5] and picked[6] == picked[7], picked
    with pytest.raises(ValueError, match="fraction must be in"):
        OwnContext(P, empty[:1], fraction=0.0, start=1000.0, guidance=2.0)


def test_training_on_own_context_lowers_the_loss(tmp_path):
    """A learnable toy task (a per-clip colour plus a ramp) trained with half its clips on their own
    redrawn context still learns."""
    model = build_model(P.model, seed=0)
    empty = torch.zeros(1, P.text_len, P.model.text_dim)
    own = OwnContext(P, empty, fraction=0.5, start=1000.0, guidance=2.0)

    def loss(m, step, gen):
        x0, text = toy_flow_clip(step)  # the toy task of tests/test_train.py
        return flow_matching_loss(m, x0, text, P.cache, P.sampler, gen, context=own)

    cfg = TrainConfig(steps=40, batch=2, lr=3e-3, warmup=5, bf16=False, ckpt_every=1000)
    log = Trainer("own", model, cfg, tmp_path, loss).run(quiet=True)
    first = sum(r["loss"] for r in log[:8]) / 8
    last = sum(r["loss"] for r in log[-8:]) / 8
    assert last < 0.7 * first, (first, last)


def test_the_own_context_recipe_is_the_motion_recipe_with_half_its_clips_on_own_context(tmp_path):
    own = RECIPES["tiny-t4-cpu-own"]
    assert own.own_context == 0.5 and own.own_context_start == 500.0 and own.guidance == 2.0
    assert replace(own, name="tiny-t4-cpu-motions", own_context=0.0) == RECIPES["tiny-t4-cpu-motions"]
    assert replace(RECIPES["tiny-t4-cpu-own750"], name=own.name, own_context_start=500.0) == own
    # the second round: new noise draws (stage seed 1), nothing else
    r2, own750 = RECIPES["tiny-t4-cpu-own750-r2"], RECIPES["tiny-t4-cpu-own750"]
    assert r2.mla_train.seed == 1 != own750.mla_train.seed
    assert replace(r2, name=own750.name, mla_train=replace(r2.mla_train, seed=0)) == own750
    # and that with every clip's context redrawn
    assert replace(RECIPES["tiny-t4-cpu-own750-all"], name=r2.name, own_context=0.5) == r2
    assert all(r.own_context == 0.0 for name, r in RECIPES.items() if not name.startswith("tiny-t4-cpu-own"))
    # the smoke recipe with own context trains a stage end to end (the stage wires it in)
    from videomla_app.autoencoder import build_autoencoder
    from videomla_app.encoders import ToyTextEncoder

    smoke = replace(RECIPES["smoke"], own_context=0.5, own_context_start=1000.0, guidance=2.0)
    ae = build_autoencoder(smoke.ae)
    model, trainer = train_dit("mha", smoke, tmp_path, ae, ToyTextEncoder(32, 8), quiet=True)
    assert trainer.step == smoke.mha_train.steps and (tmp_path / "mha.safetensors").exists()
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in trainer.log)


@pytest.mark.parametrize("attn", ["mla", "mha"])
def test_chained_own_frames_read_the_chunks_redrawn_before_them(attn):
    """Chained, chunk k is what the unchained redraw gives it when the chunks before it are the
    chained redraws: the model reads its own slips, as a video does. The first chunk has no context
    and is the same either way; the later ones differ from reading the true chunks."""
    preset = get_preset(f"test-{attn}")
    model = build_model(preset.model, seed=6).eval()
    x0, text, empty, noise = _clip(7)
    chained = own_frames(model, x0, text, empty, noise, preset, guidance=2.0, start=1000.0, chain=True)
    plain = own_frames(model, x0, text, empty, noise, preset, guidance=2.0, start=1000.0)
    assert torch.allclose(chained[:, :C], plain[:, :C], atol=1e-5)
    assert not torch.allclose(chained[:, C:], plain[:, C:], atol=1e-3)
    for k in (1, 2):
        context = torch.cat([chained[:, :k * C], x0[:, k * C:]], 1)
        ref = own_frames(model, context, text, empty, noise, preset, guidance=2.0, start=1000.0)
        assert torch.allclose(chained[:, k * C:(k + 1) * C], ref[:, k * C:(k + 1) * C], atol=2e-5)
    # OwnContext passes it on: the chained recipe swaps in the chained redraws
    own = OwnContext(preset, empty[:1], fraction=1.0, start=1000.0, guidance=2.0, chain=True)
    g = torch.Generator().manual_seed(0)
    picked = own(model, x0, text, g)
    g = torch.Generator().manual_seed(0)
    torch.rand(2, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    again = own_frames(model, x0, text, empty, noise, preset, 2.0, 1000.0, chain=True)
    assert torch.allclose(picked, again, atol=1e-6)


def test_the_chained_recipe_is_the_every_clip_recipe_with_chained_context():
    base, chain = RECIPES["tiny-t4-cpu-own750-all"], RECIPES["tiny-t4-cpu-own750-chain"]
    assert chain.own_context_chain and not base.own_context_chain
    assert replace(chain, name=base.name, own_context_chain=False) == base
    # the only other chained recipes are the same round on 12- and 15-frame clips, keeping the
    # 9-frame window
    longer = ("tiny-t4-cpu-own750-chain12", "tiny-t4-cpu-own750-chain15")
    hover, orange = RECIPES["tiny-t4-cpu-own750-hover"], RECIPES["tiny-t4-cpu-own750-orange"]
    assert ({name for name, r in RECIPES.items() if r.own_context_chain}
            == {chain.name, *longer, hover.name, orange.name})
    # and the 12-frame round with three times the hovering clips, in a bank of its own size
    assert dict(hover.motion_weights) == {**{m: 1.0 for m in MOTIONS}, "hovering": 3.0}
    assert replace(hover, name=longer[0], bank_batches=190, motion_weights=()) == RECIPES[longer[0]]
    # and with orange three times, pink and yellow twice as often, motions uniform
    assert dict(orange.colour_weights) == {**{c: 1.0 for c in COLOURS}, "orange": 3.0, "pink": 2.0,
                                           "yellow": 2.0}
    assert replace(orange, name=longer[0], bank_batches=190, colour_weights=()) == RECIPES[longer[0]]
    for name, frames in zip(longer, (12, 15)):
        assert RECIPES[name].dit_clip_frames == frames and RECIPES[name].window_frames == 5
        assert replace(RECIPES[name], name=chain.name, dit_clip_frames=9, window_frames=0,
                       sample_guidance=0.0) == chain
        assert RECIPES[name].sample_guidance == 1.5 and RECIPES[name].guidance == 2.0
