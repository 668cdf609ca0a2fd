"""The procedural world: determinism, streaming, endless motion, captions, timelines and readers."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from videomla_app import world as W
from videomla_app.world.motion import wrap_delta
from videomla_app.world.palette import PALETTE
from videomla_app.world.readers import _pool
from videomla_app.world.scenes import background
from videomla_app.world.spec import COLOURS, MOTIONS, SCENES

CLIP = 32  # frames per reader clip (2 s at 16 fps)
N_SPECS = 60


def degrade(frames: np.ndarray, factor: int = 8, sigma: float = 8.0, seed: int = 0) -> np.ndarray:
    """Mimic a generated clip: lose detail below 1/8 of the resolution (8x area-downsample, bilinear
    upsample, like an 8x autoencoder's blur) and add Gaussian noise."""
    rng = np.random.default_rng(seed)
    f, h, w, _ = frames.shape
    small = frames.astype(np.float32).reshape(f, h // factor, factor, w // factor, factor, 3).mean((2, 4))
    small = np.clip(small + 0.5, 0, 255).astype(np.uint8)
    up = np.stack([np.asarray(Image.fromarray(s).resize((w, h), Image.BILINEAR)) for s in small])
    up = up.astype(np.float32)
    return np.clip(up + rng.normal(0.0, sigma, up.shape) + 0.5, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def reader_clips():
    rng = np.random.default_rng(2024)
    specs = [W.sample_spec(rng) for _ in range(N_SPECS)]
    clips = [W.render(spec, 200, 200 + CLIP, seed=i) for i, spec in enumerate(specs)]
    return specs, clips


def _accuracy(specs, clips):
    hits = {a: 0 for a in ("scene", "colour", "count", "motion")}
    misses = []
    for spec, clip in zip(specs, clips):
        got = W.read_all(clip)
        for a in hits:
            ok = got[a] == getattr(spec, a)
            hits[a] += ok
            if not ok:
                misses.append((a, getattr(spec, a), got[a], spec))
    return {a: v / len(specs) for a, v in hits.items()}, misses


# ------------------------------------------------------------------------------------------------
# Vocabulary and captions


def test_vocabulary_size():
    assert len(W.VOCAB) >= 5
    assert all(len(words) >= 3 for words in W.VOCAB.values())
    assert sum(len(words) for words in W.VOCAB.values()) >= 40
    assert len(W.vocabulary_words()) >= 150  # synonyms the prompt parser understands


def test_unseen_words_are_what_no_caption_contains():
    rng = np.random.default_rng(3)
    assert not any(W.unseen_words(W.caption(W.sample_spec(rng), rng)) for _ in range(400))
    assert W.unseen_words("A purple Dragon, flying over snowy mountains; a dragon!") == ["dragon", "flying", "mountains"]
    assert W.unseen_words("2 red balls are bouncing and it is sunny") == ["2"]  # grammar words pass
    assert W.unseen_words("it's a red ball, don\u2019t show the 'ball's' shadow") == ["don't", "show", "shadow"]
    assert "flying" in W.vocabulary_words()  # the parser reads it (as "up"); the model never saw it


def test_a_prompt_that_names_everything_has_a_caption_in_the_training_words():
    assert W.in_caption_words("2 red spheres bouncing on the beach at golden hour, cinematic") == \
        "two red balls bouncing on a beach"
    assert W.in_caption_words("A tiny golden star spinning quickly in outer space") == \
        "a small yellow star circling around quickly in outer space"
    # a gap is not filled in: no shape here, and no count for a bare plural
    assert W.in_caption_words("a red car bouncing in the sky") is None
    assert W.in_caption_words("red balls bouncing on a beach") is None
    rng = np.random.default_rng(5)
    for _ in range(200):  # any training caption maps to its spec's canonical caption
        spec = W.sample_spec(rng)
        assert W.in_caption_words(W.caption(spec, rng)) == W.caption(spec)


def test_captions_vary_and_parse_back():
    rng = np.random.default_rng(0)
    spec = W.WorldSpec("ball", "red", "medium", 1, "bouncing", "beach")
    phrasings = {W.caption(spec, rng) for _ in range(40)}
    assert len(phrasings) >= 20
    assert W.caption(spec) == "a red ball bouncing on a beach"
    for _ in range(400):
        spec = W.sample_spec(rng)
        text = W.caption(spec, rng)
        parsed = W.parse_prompt(text)
        assert {"shape", "colour", "count", "motion", "scene"} <= set(parsed), text
        assert all(parsed[k] == getattr(spec, k) for k in parsed), (text, parsed, spec)
        assert W.spec_from_prompt(text, seed=1) == spec, text  # omitted size/speed mean the defaults


def test_parse_free_text():
    assert W.parse_prompt("two small blue squares drift across a night sky") == {
        "count": 2, "size": "small", "colour": "blue", "shape": "square", "motion": "right", "scene": "night"}
    assert W.parse_prompt("A crimson orb jumping up and down under the stars, quickly!") == {
        "colour": "red", "shape": "ball", "motion": "bouncing", "scene": "night", "speed": "fast", "count": 1}
    assert W.parse_prompt("some hearts floating up in the desert")["motion"] == "up"
    assert W.parse_prompt("a gem floating above the green meadow") == {
        "shape": "diamond", "motion": "hovering", "scene": "meadow", "count": 1}
    assert W.parse_prompt("zorbly wibble") == {}
    spec = W.spec_from_prompt("stars", seed=3)
    assert spec.shape == "star" and spec.count >= 2 and spec.size == "medium" and spec.speed == "normal"
    assert W.spec_from_prompt("stars", seed=3) == spec


# ------------------------------------------------------------------------------------------------
# Rendering


def test_deterministic_by_seed():
    spec = W.WorldSpec("star", "purple", "large", 3, "circling", "space")
    a = W.render(spec, 0, 8, seed=5)
    assert a.shape == (8, 128, 128, 3) and a.dtype == np.uint8
    assert a.tobytes() == W.render(spec, 0, 8, seed=5).tobytes()
    assert a.tobytes() != W.render(spec, 0, 8, seed=6).tobytes()
    assert not np.array_equal(a[0], a[-1])


def test_sizes():
    spec = W.WorldSpec("heart", "pink", "small", 2, "left", "meadow")
    assert W.render(spec, 0, 2, size=64).shape == (2, 64, 64, 3)
    assert W.render(spec, 0, 2, size=256).shape == (2, 256, 256, 3)
    with pytest.raises(ValueError):
        W.render(spec, 0, 2, size=100)


def test_streaming_equals_full_render():
    spec = W.WorldSpec("triangle", "orange", "medium", 3, "up", "desert", "fast")
    tl = W.Timeline.single(spec).then(40, colour="green", motion="circling").then(75, count=1, scene="night")
    full = W.render(tl, 0, 100, seed=3)
    for a, b in [(0, 37), (37, 64), (64, 100), (13, 14), (70, 90)]:
        np.testing.assert_array_equal(W.render(tl, a, b, seed=3), full[a:b])
    np.testing.assert_array_equal(np.concatenate(list(W.stream(tl, 100, chunk=24, seed=3))), full)


@pytest.mark.parametrize("motion", MOTIONS)
def test_objects_alive_at_minute_two(motion):
    spec = W.WorldSpec("square", "yellow", "medium", 2, motion, "studio", "slow")
    start = 16 * 120
    states = W.frame_states(W.Timeline.single(spec), start, start + CLIP, seed=1)
    step = np.linalg.norm(wrap_delta(np.diff(states.pos, axis=0)), axis=-1)
    assert (step > 1e-4).all(), "every object moves in every frame"
    assert (states.opacity == 1).all()
    frames = W.render(spec, start, start + CLIP, seed=1)
    assert W.read_count(frames) == 2
    assert W.read_motion(frames) == motion
    assert np.abs(frames[0].astype(int) - frames[-1]).max() > 50


def test_render_speed():
    fps = W.benchmark(n_clips=12, frames=32)
    print(f"\nrender speed at 128x128: {fps:.0f} frames/s")
    assert fps > 100


def test_palette_stands_out_from_every_scene():
    assert min(np.linalg.norm(PALETTE[i] - PALETTE[j]) for i in range(len(COLOURS)) for j in range(i)) > 80
    for scene in SCENES:
        bg = _pool(background(scene, 128)[None])[0].reshape(-1, 1, 3)
        dist = np.linalg.norm(bg - PALETTE[None], axis=-1)
        assert np.percentile(dist, 1, axis=0).min() > 70, scene


# ------------------------------------------------------------------------------------------------
# Timelines


def test_timeline_change_is_read_and_continuous():
    change = 48
    spec = W.WorldSpec("ball", "red", "medium", 2, "left", "beach")
    tl = W.Timeline.single(spec).then(change, colour="blue", motion="circling")
    frames = W.render(tl, 0, 112, seed=4)
    before = W.read_all(frames[change - CLIP:change])
    after = W.read_all(frames[change + 24:change + 24 + CLIP])
    assert (before["colour"], before["motion"]) == ("red", "left")
    assert (after["colour"], after["motion"]) == ("blue", "circling")
    assert before["count"] == after["count"] == 2

    pos = W.frame_states(tl, change - 4, change + 4, seed=4).pos
    step = np.linalg.norm(wrap_delta(np.diff(pos, axis=0)), axis=-1)  # [7, 2]
    assert step.max() < 2.0 * step[:3].max(), "no jump at the change: steps stay like before it"
    assert abs(step[3] - step[2]).max() < 0.01, "velocity is continuous across the change"


def test_timeline_from_prompts():
    tl = W.timeline_from_prompts([(0, "a red ball bouncing on a beach"), (80, "it turns blue"),
                                  (160, "three stars at sunset")], seed=0)
    assert [s for s, _ in tl.segments] == [0, 80, 160]
    assert tl.spec_at(100).colour == "blue" and tl.spec_at(100).motion == "bouncing"
    last = tl.spec_at(200)
    assert (last.shape, last.count, last.scene, last.colour) == ("star", 3, "sunset", "blue")


# ------------------------------------------------------------------------------------------------
# Readers


def test_readers_on_clean_frames(reader_clips):
    acc, misses = _accuracy(*reader_clips)
    print(f"\nclean reader accuracy over {N_SPECS} clips: {acc}")
    assert all(v >= 0.95 for v in acc.values()), misses


def test_readers_on_degraded_frames(reader_clips):
    specs, clips = reader_clips
    acc, misses = _accuracy(specs, [degrade(c, seed=i) for i, c in enumerate(clips)])
    print(f"\ndegraded (8x blur + noise 8) reader accuracy over {N_SPECS} clips: {acc}")
    assert all(v >= 0.85 for v in acc.values()), misses


def test_preview_sheet():
    from videomla_app.world.preview import contact_sheet

    img = contact_sheet()
    assert img.mode == "RGB" and img.width >= 600 and img.height >= 400


def test_stream_yields_fixed_size_chunks():
    spec = W.WorldSpec("diamond", "green", "small", 4, "right", "underwater")
    t0 = time.perf_counter()
    shapes = [chunk.shape for chunk in W.stream(spec, 16 * 8 + 5, chunk=32)]
    assert shapes == [(32, 128, 128, 3)] * 4 + [(5, 128, 128, 3)]
    assert time.perf_counter() - t0 < 5.0
