"""The shipped embedded models (assets/tiny, assets/tiny-mha): they load offline, draw the prompted
scene, look like the world they were trained on and keep a small cache. These run the real trained
weights, so they fail if a re-export or a code change breaks the pictures, not just the shapes.

What the weights do not do yet (objects' count follows the prompt only rarely, and bouncing
motions seldom; see assets/MODEL_CARD.md) is not asserted here: the tests pin what users can rely
on today.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from videomla_app import world
from videomla_app.eval_metrics import evaluate_segment
from videomla_app.models import assets_dir, load_pipeline, step_list
from videomla_app.train.stages import RECIPES

# Prompts of the evaluation set with very different scenes; each is checked on both models.
CASES = [
    (world.WorldSpec("ball", "red", "medium", 1, "bouncing", "day"), 0),
    (world.WorldSpec("star", "yellow", "medium", 3, "circling", "space", "fast"), 2),
    (world.WorldSpec("heart", "pink", "medium", 2, "up", "sunset"), 4),
]
OTHER_SCENE = {"day": "night", "space": "beach", "sunset": "snow"}
# The fast yellow stars were a known failure of the CPU-trained `tiny` with cold chunks (no flicker
# 61 here, 37-47 in the 2-minute eval): it piled them into one flickering blob, which its warm start
# mostly fixed. The GPU-trained `tiny` holds them steady with cold chunks (92 here at stride 1, 97 at
# the shipped stride 4), so the check below applies to every case.


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: threads only add contention on a shared 2-core runner
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def pipes():
    return {name: load_pipeline(name) for name in ("tiny", "tiny-mha")}


@pytest.mark.parametrize("name", ["tiny", "tiny-mha"])
def test_shipped_weights_are_bf16_small_and_cache_compressed(name, pipes):
    spec = json.loads((assets_dir() / name / "model.json").read_text())
    # both: the H200 run's, with five CPU fine-tunes each (stage 2 and its twin stage 3), the last
    # four with the anchored first chunk, the last three with contrast pairs (the last two over counts
    # too, the last over every moving motion), sampled with real guidance; then 574 steps each with
    # half their clips on their own redrawn frames as context (README, "The model's own frames as
    # context"), then 574 more with every clip on them (seed 1, "Every clip on its own frames"),
    # then 400 more with each chunk's context redrawn from the chunks redrawn before it ("Slow
    # hovering stops, and chained own context"), then 400 more of that on 12-frame clips, four
    # chunks deep ("Four chunks a clip"), so the pair again differs only in attention
    assert spec["text_encoder"] == "all-MiniLM-L6-v2" and spec["recipe"] == "tiny-t4-cpu-own750-chain12"
    recipe = RECIPES[spec["recipe"]]
    assert recipe.own_context_chain and recipe.own_context == 1.0 and recipe.dit_clip_frames == 12
    assert spec["train"]["seed"] == 1  # the every-clip round's draws (recipe tiny-t4-cpu-own750-r2)
    assert spec["train"]["steps"] == 400  # --steps, as both chained rounds ran
    # sampled at guidance 1.5, what the recipe ships (its redraws trained at 2): at 2 `tiny`'s slow orange
    # objects stop (README, "Guidance 1.5 for both models")
    assert spec["sampler"]["guidance"] == 1.5 == pipes[name].preset.sampler.guidance
    assert recipe.sample_guidance == 1.5 and recipe.guidance == 2.0
    pipe = pipes[name]
    # the first chunk denoised once more with its first frame held (README, "The anchored first chunk,
    # on the shipped pair"): what taught the models the direction word
    assert spec["sampler"]["anchor_first"] is True and pipe.preset.sampler.anchor_first
    # 16 steps for the first chunk, which has no context; 4 for every chunk after it (both recipes'
    # first_steps, README "The first chunk's steps")
    assert pipe.sampler.first_timesteps == [float(t) for t in step_list(16)] and len(step_list(16)) == 16
    assert pipe.sampler.timesteps == [1000.0, 750.0, 500.0, 250.0]
    # 4 video frames per latent frame (the first: 1), taken from the shipped autoencoder
    assert pipe.vae.temporal_stride == pipe.preset.video.temporal_stride == 4
    assert pipe.dtype == torch.bfloat16 and pipe.model.cfg.attn == ("mla" if name == "tiny" else "mha")
    total = sum(p.stat().st_size for p in assets_dir().rglob("*.safetensors"))
    assert total <= 30 * 2**20  # every shipped weight together
    # the window a 9-frame training clip shows its last chunk (sink 1 + 5 + chunk 3): with the presets'
    # 6 the MLA model drifted after 15 s (README, "Drift and the window"); the 12-frame round keeps it
    # (its recipe's window_frames), as the rounds before trained it
    assert spec["cache"] == {"window_frames": 5} and pipe.preset.cache.window_frames == 5
    cache = {n: sum(t.nbytes for t in p.new_state(0).cache.tensors.values()) for n, p in pipes.items()}
    assert cache["tiny-mha"] >= 6 * cache["tiny"]  # the MLA cache is >= 6x smaller at the same window


@pytest.mark.parametrize("name", ["tiny", "tiny-mha"])
@pytest.mark.parametrize("spec,seed", CASES)
def test_generation_draws_the_prompted_world(name, spec, seed, pipes):
    pipe = pipes[name]
    prompt = world.caption(spec)
    frames = np.concatenate([e.frames for e in pipe.stream(prompt, pipe.chunks_for_seconds(3.0), seed=seed)])
    assert frames.shape[1:] == (128, 128, 3) and len(frames) >= 48
    fps = pipe.preset.video.fps
    late = frames[16:]  # after the first second: the model's own context, not only the first chunk
    m = evaluate_segment(late, prompt, fps, start_frame=16, seed=seed)
    assert m.readings["scene"] == spec.scene and m.scene == 100.0
    # its colours are those of the prompt's ground truth, far from another scene's (earth mover's distance)
    other = world.caption(replace(spec, scene=OTHER_SCENE[spec.scene]))
    wrong = evaluate_segment(late, other, fps, start_frame=16, seed=seed)
    assert 2 * m.colour_emd < wrong.colour_emd, (m.colour_emd, wrong.colour_emd)
    assert m.no_flicker >= 75  # a steady picture, not per-frame noise


def test_default_model_paints_objects_in_the_prompted_colour(pipes):
    """Colour is the attribute the shipped `tiny` follows best (87 % on 16 videos × 15 s): it reads
    back the prompt's object colour on at least two of the three cases (the shipped stride-4 weights
    get all three here; the stride-1 GPU-trained ones the red ball and the yellow stars, the
    CPU-trained ones the stars and the hearts). Two, not three: bf16 on another CPU may round a
    borderline video the other way."""
    pipe = pipes["tiny"]
    hits = []
    for spec, seed in CASES:
        prompt = world.caption(spec)
        frames = np.concatenate([e.frames for e in pipe.stream(prompt, pipe.chunks_for_seconds(3.0), seed=seed)])
        m = evaluate_segment(frames[16:], prompt, pipe.preset.video.fps, start_frame=16, seed=seed)
        hits.append(m.readings["colour"] == spec.colour)
    assert sum(hits) >= 2, hits


def test_tiny_follows_straight_motions(pipes):
    """Since the anchored fine-tune the shipped `tiny` knows which way "left", "rising" and "falling"
    go (56 motion prompts x 8 s: 56, 50 and 84 %). Here 3-second videos, seeds 0 and 1: it read the
    asked direction in 5 of 6, the chained pair and the four-chunk pair in 6 (the pair before the
    anchored one: 0 of 6, reading right, up or circling instead).
    Four, not five: bf16 on another CPU may round a borderline video the other way."""
    pipe = pipes["tiny"]
    hits = []
    for spec in (world.WorldSpec("ball", "red", "medium", 1, "left", "underwater"),
                 world.WorldSpec("heart", "pink", "medium", 2, "up", "sunset"),
                 world.WorldSpec("diamond", "purple", "small", 4, "down", "snow")):
        prompt = world.caption(spec)
        for seed in (0, 1):
            chunks = pipe.chunks_for_seconds(3.0)
            frames = np.concatenate([e.frames for e in pipe.stream(prompt, chunks, seed=seed)])
            m = evaluate_segment(frames[16:], prompt, pipe.preset.video.fps, start_frame=16, seed=seed)
            hits.append(m.readings["motion"] == spec.motion)
    assert sum(hits) >= 4, hits


def test_tiny_moves_right_when_asked_to(pipes):
    """Until the contrast-pair fine-tune (README, "Contrast pairs for the direction word") the
    shipped `tiny` moved objects left for "... to the right" prompts more often than right. On these
    8 videos of 4 s (two phrasings, four worlds) it read right in 5 and left in none, after the count
    pairs 5 and 0, after the pairs over every motion 4 and 0, with its own frames as context 8 and 0
    (and so after each round since, the four-chunk pair included); the anchored pair before them 0
    and 3."""
    pipe = pipes["tiny"]
    readings = []
    worlds = ("a red ball {} in a blue sky", "two green squares {} over a grassy meadow",
              "three yellow stars {} in the night sky", "a large blue diamond {} under the sea")
    for k, base in enumerate(worlds):
        for phrase in ("gliding rightward", "moving to the right"):
            prompt = base.format(phrase)
            frames = np.concatenate([e.frames for e in pipe.stream(prompt, pipe.chunks_for_seconds(4.0),
                                                                   seed=100 + k)])
            readings.append(world.read_motion(frames[16:], world.spec_from_prompt(prompt).scene))
    assert readings.count("right") >= 3 and readings.count("left") <= 1, readings


def test_benchmark_times_the_shipped_model_cold_and_warm():
    from videomla_app.bench import _pipeline_case

    times = _pipeline_case(reps=1, device="cpu", chunks=2)
    assert set(times) == {"tiny/warm-0", "tiny/warm-750"} and all(0 < t < 60 for t in times.values())


def test_benchmark_times_guidance_as_two_calls_and_as_one_forward():
    from videomla_app.bench import _guidance_case

    times = _guidance_case(reps=1, device="cpu", chunks=2)
    assert set(times) == {"tiny/g1", "tiny/g2-two-calls", "tiny/g2-one-forward"}
    assert all(0 < t < 60 for t in times.values())


def test_model_json_sets_the_cache_geometry_and_the_user_overrides_it(tmp_path, monkeypatch):
    """model.json's "cache" gives trained weights the sink and window they were trained to read
    (the chunk stays the preset's); --window / --sink still win, and a field it cannot set is a
    one-line error naming it."""
    import shutil

    from videomla_app.config import CacheConfig
    from videomla_app.models import ModelUnavailable

    assets = tmp_path / "assets"
    (assets / "tiny").mkdir(parents=True)
    shutil.copy(assets_dir() / "ae.safetensors", assets)
    shutil.copy(assets_dir() / "tiny" / "model.safetensors", assets / "tiny")
    spec = json.loads((assets_dir() / "tiny" / "model.json").read_text())
    monkeypatch.setenv("VIDEOMLA_ASSETS", str(assets))

    def write(cache):
        (assets / "tiny" / "model.json").write_text(json.dumps({**spec, "cache": cache}))

    write({"sink_frames": 0, "window_frames": 2})
    pipe = load_pipeline("tiny")
    assert pipe.preset.cache == CacheConfig(sink_frames=0, window_frames=2, chunk_frames=3)
    assert load_pipeline("tiny", window=4).preset.cache == CacheConfig(0, 4, 3)
    frames = list(pipe.stream("a red ball bouncing in a blue sky", 3, seed=0))[-1].frames
    assert frames.shape[1:] == (128, 128, 3)  # 3 chunks: the 2-frame window has slid
    write({"chunk_frames": 2})
    with pytest.raises(ModelUnavailable, match="may set sink_frames and window_frames, not chunk_frames"):
        load_pipeline("tiny")
    write({"window_frames": "five"})
    with pytest.raises(ModelUnavailable, match="frame counts must be whole numbers 0..1000"):
        load_pipeline("tiny")
