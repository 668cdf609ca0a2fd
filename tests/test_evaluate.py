"""`videomla eval`: the metrics are right on rendered ground truth and react to each kind of failure;
model runs, the rank analysis and the CLI work end to end on the untrained dev models."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from videomla_app import world
from videomla_app.config import get_preset
from videomla_app.evaluate import (PROMPT_SPECS, PROMPTS, evaluate_frames, evaluate_model, evaluate_stream,
                                   format_table, rank_analysis)
from videomla_app.eval_metrics import SCORES, segment_bounds
from videomla_app.model import build_model

FPS, SIZE = 16, 64


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny dev models run much faster (and steadier) on one thread when the cores are shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _truth(i: int, seconds: float = 8.0, **changes) -> np.ndarray:
    spec = PROMPT_SPECS[i].with_(**changes)
    return world.render(spec, 0, round(seconds * FPS), size=SIZE, seed=i, fps=FPS)


def test_prompt_set_names_every_attribute_and_covers_the_vocabulary():
    assert len(PROMPTS) == 8 and len(set(PROMPTS)) == 8
    for text, spec in zip(PROMPTS, PROMPT_SPECS):
        named = world.parse_prompt(text)
        assert {k: named[k] for k in ("colour", "count", "motion", "scene")} == {
            "colour": spec.colour, "count": spec.count, "motion": spec.motion, "scene": spec.scene}
        assert world.spec_from_prompt(text, 123) == spec
    for attr in ("colour", "count", "motion", "shape"):
        assert {getattr(s, attr) for s in PROMPT_SPECS} == set(
            world.spec.COUNTS if attr == "count" else world.VOCAB[attr])


@pytest.mark.parametrize("i", range(len(PROMPTS)))
def test_ground_truth_scores_full_marks(i):
    segs = evaluate_frames(_truth(i), PROMPTS[i], FPS, segment_s=4, seed=i)
    assert [(s.start_s, s.end_s) for s in segs] == [(0, 4), (4, 8)]
    for s in segs:
        assert s.adherence >= 95 and s.quality >= 90, s
        assert s.dynamics >= 95 and s.count_stability >= 95 and s.no_flicker >= 95, s
        assert s.readings == {"colour": PROMPT_SPECS[i].colour, "count": PROMPT_SPECS[i].count,
                              "motion": PROMPT_SPECS[i].motion, "scene": PROMPT_SPECS[i].scene}


def test_frozen_video_has_no_dynamics():
    frames = _truth(0, 6)
    frozen = np.repeat(frames[:1], len(frames), axis=0)
    s = evaluate_frames(frozen, PROMPTS[0], FPS, seed=0)[0]
    assert s.dynamics == 0 and s.displacement == 0
    assert s.motion == 0  # a bouncing prompt frozen in place reads as hovering


def test_wrong_colour_loses_colour_adherence_only():
    s = evaluate_frames(_truth(0, 6, colour="blue"), PROMPTS[0], FPS, seed=0)[0]  # the prompt says red
    assert s.colour <= 5 and s.readings["colour"] == "blue"
    assert s.scene >= 95 and s.motion >= 95 and s.count >= 95


def test_noise_has_low_quality_and_flickers():
    noise = np.random.default_rng(0).integers(0, 256, (6 * FPS, SIZE, SIZE, 3), dtype=np.uint8)
    s = evaluate_frames(noise, PROMPTS[1], FPS, seed=1)[0]
    assert s.quality < 10 and s.no_flicker < 10 and s.scene == 0


def test_streaming_in_chunks_equals_one_pass_and_holds_one_segment():
    frames = _truth(2, 7)
    whole = evaluate_frames(frames, PROMPTS[2], FPS, segment_s=3, seed=2)
    chunked = list(evaluate_stream((frames[a:a + 5] for a in range(0, len(frames), 5)), PROMPTS[2], FPS,
                                   len(frames), segment_s=3, seed=2))
    assert [s.as_dict() for s in chunked] == [s.as_dict() for s in whole]
    assert segment_bounds(len(frames), FPS, 3) == [(0, 48), (0 + 48, 112)]  # a 1-s tail joins its neighbour


def test_evaluate_model_on_a_dev_model(tmp_path):
    r = evaluate_model("test-mla", PROMPTS[:1], seconds=3, seed=5)
    for key in ("model", "attn", "fps", "seconds", "wall_s", "achieved_fps", "peak_rss_bytes", "process_peak_rss_bytes", "cache_bytes",
                "dense_equivalent_bytes", "prompts", "segments", "mean", "ratio"):
        assert key in r, key
    assert r["attn"] == "mla" and r["cache_bytes"] < r["dense_equivalent_bytes"]
    assert r["frames_generated"] >= 3 * r["fps"] and r["prompts"][0]["seed"] == 5
    seg = r["prompts"][0]["segments"][0]
    assert seg["frames"] == 3 * r["fps"] and set(SCORES) <= set(seg)
    assert all(v is None or 0 <= v <= 100 for k, v in r["mean"].items() if k in SCORES)
    json.loads(json.dumps(r))  # every number is plain JSON
    assert format_table(r) is not None
    assert r["sampler"]["warm_start"] == 0.0 and r["sampler"]["steps"]  # the settings the numbers belong to
    warm = evaluate_model("test-mla", PROMPTS[:1], seconds=1, seed=5, warm_start=900)
    assert warm["sampler"]["warm_start"] == 900.0


def test_rank_analysis_on_small_random_models():
    dense = build_model(get_preset("test-mha").model, seed=0)
    mla_cfg = get_preset("test-mla").model
    mla = build_model(mla_cfg, seed=1)
    out = rank_analysis(dense, mla, mla_cfg)
    d_c = mla_cfg.mla.d_c
    assert out["d_c"] == d_c and len(out["layers"]) == mla_cfg.n_layers
    for row in out["layers"]:
        assert row["dense_rank"] > d_c
        assert row["spectral_init_rank"] <= d_c and row["trained_rank"] <= d_c
        assert 0 < row["dense_energy_in_d_c"] < 1


def _cli():
    from videomla_app.cli import app
    import videomla_app.cli_eval  # noqa: F401  (registers 'eval')

    return app


def test_cli_prints_table_and_writes_json(tmp_path):
    path = tmp_path / "eval.json"
    args = ["eval", "--models", "test-mla,test-mha", "--seconds", "2", "--prompts", "1", "--ranks",
            "--json", str(path)]
    r = CliRunner().invoke(_cli(), args)
    assert r.exit_code == 0, r.output
    assert "adherence %" in r.output and "count stable %" in r.output and "rank analysis" in r.output
    report = json.loads(path.read_text())
    assert report["models"] == ["test-mla", "test-mha"] and report["prompts"] == list(PROMPTS[:1])
    assert report["seeds"] == [0] and set(report["results"]) == {"test-mla", "test-mha"}
    assert report["ranks"]["mla_model"] == "test-mla" and report["ranks"]["dense_model"] == "test-mha"
    comp = report["comparison"]  # paired MLA - dense, one prompt: a difference but no error yet
    assert (comp["a"], comp["b"]) == ("test-mla", "test-mha") and "paired by prompt and seed" in r.output
    q = comp["metrics"]["quality"]
    assert q["n"] == 1 and q["sem"] is None
    assert q["mean"] == pytest.approx(report["results"]["test-mla"]["prompt_means"][0]["quality"]
                                      - report["results"]["test-mha"]["prompt_means"][0]["quality"])
    from videomla_app.train.card import eval_table

    md = eval_table(report)  # the model card's tables carry the errors and the paired difference
    assert "| mean | ± | end/start |" in md and "Paired difference test-mla − test-mha" in md


def test_ctrl_c_keeps_the_finished_videos(tmp_path, monkeypatch):
    """Ctrl-C in the second video of the first model: the report covers the one finished video, says
    it was interrupted (no paired comparison from a partial run, the second model not started), is
    written to --json, and the command exits 130. Before any video finished: nothing written, 130."""
    import videomla_app.evaluate as ev

    real = ev.load_pipeline
    calls = {"n": 0}

    def interrupting(*a, **k):
        pipe = real(*a, **k)
        stream = pipe.stream

        def stream_then_ctrl_c(*sa, **sk):
            calls["n"] += 1
            if calls["n"] == calls["stop_at"]:
                raise KeyboardInterrupt
            yield from stream(*sa, **sk)

        pipe.stream = stream_then_ctrl_c
        return pipe

    monkeypatch.setattr(ev, "load_pipeline", interrupting)
    path = tmp_path / "eval.json"
    calls["stop_at"] = 2
    r = CliRunner().invoke(_cli(), ["eval", "--models", "test-mla,test-mha", "--seconds", "1", "--prompts", "3",
                                    "--json", str(path)])
    assert r.exit_code == 130, r.output
    assert "interrupted: the report covers what finished (test-mla 1 of 3 videos, test-mha not started)" in r.output
    report = json.loads(path.read_text())
    assert report["interrupted"] and list(report["results"]) == ["test-mla"] and "comparison" not in report
    mla = report["results"]["test-mla"]
    assert mla["interrupted"] and mla["videos_planned"] == 3 and [p["seed"] for p in mla["prompts"]] == [0]
    assert mla["mean"]["quality"] == mla["prompts"][0]["segments"][0]["quality"]
    from videomla_app.train.card import eval_table

    assert "**test-mla** (MLA): 1 videos (interrupted: 1 of 3 finished)" in eval_table(report)
    (tmp_path / "d").mkdir()  # a folder as --json is refused before the eval, not after it
    r = CliRunner().invoke(_cli(), ["eval", "--models", "test-mla", "--json", str(tmp_path / "d")])
    assert r.exit_code == 2 and "is a folder: name the report file" in r.output
    (tmp_path / "d").rmdir()
    path.unlink()
    calls.update(n=0, stop_at=1)
    r = CliRunner().invoke(_cli(), ["eval", "--models", "test-mla", "--seconds", "1", "--prompts", "3",
                                    "--json", str(path)])
    assert r.exit_code == 130 and "nothing to report" in r.output and not path.exists()
    assert not list(tmp_path.iterdir())  # no temporary file left either


def test_standard_error_and_paired_difference():
    """Per-prompt means weight segments by frames; the standard error is std (n - 1) / sqrt(n); the
    paired difference pairs prompt i of one model with prompt i of the other and skips undefined
    values; pairing cancels what the prompts share."""
    from videomla_app.eval_stats import paired_difference, prompt_means, standard_error

    seg = lambda v, f: {"quality": v, "frames": f}  # noqa: E731
    a = prompt_means([{"segments": [seg(10, 1), seg(40, 2)]}, {"segments": [seg(50, 3), seg(None, 1)]},
                      {"segments": [seg(None, 3)]}], ["quality"])
    assert [p["quality"] for p in a] == [30.0, 50.0, None]
    assert standard_error([30.0, 50.0, None]) == pytest.approx(10.0)  # std 14.14 / sqrt 2
    assert standard_error([30.0]) is None
    b = [{"quality": 25.0}, {"quality": 46.0}, {"quality": 70.0}]
    d = paired_difference(a, b, ["quality"])["quality"]
    assert d["n"] == 2 and d["mean"] == pytest.approx(4.5) and d["sem"] == pytest.approx(0.5)
    # the two means are 40 +- 10 and 35.5 +- 10.5 apart, but the paired difference is 4.5 +- 0.5
    with pytest.raises(ValueError, match="same prompts"):
        paired_difference(a, b[:2], ["quality"])


def test_repeats_run_every_prompt_with_fresh_seeds_and_pair_by_video():
    """--repeats: prompt i of repeat j uses seed + i + j * prompts (repeat 0 is the plain set), and
    the errors and the paired comparison are over all videos."""
    from videomla_app.evaluate import evaluate_models, video_seeds

    assert video_seeds(2, 5, 3) == [(0, 0, 5), (1, 0, 6), (0, 1, 7), (1, 1, 8), (0, 2, 9), (1, 2, 10)]
    assert [s for *_, s in video_seeds(8, 0, 1)] == list(range(8))
    rep = evaluate_models(["test-mla", "test-mha"], PROMPTS[:2], seconds=2, seed=5, repeats=2)
    assert rep["repeats"] == 2 and rep["seeds"] == [5, 6, 7, 8]
    r = rep["results"]["test-mla"]
    assert [(v["prompt"], v["seed"], v["repeat"]) for v in r["prompts"]] == [
        (PROMPTS[0], 5, 0), (PROMPTS[1], 6, 0), (PROMPTS[0], 7, 1), (PROMPTS[1], 8, 1)]
    assert len(r["prompt_means"]) == 4 and rep["comparison"]["metrics"]["quality"]["n"] == 4
    # repeat 0 is exactly the plain run with the same seeds
    plain = evaluate_model("test-mla", PROMPTS[:2], seconds=2, seed=5)
    assert plain["prompts"] == r["prompts"][:2]
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        evaluate_model("test-mla", PROMPTS[:1], seconds=2, repeats=0)


def test_cli_rejects_bad_options():
    app = _cli()
    for args in (["--models", "test-mla", "--ranks"], ["--models", "nope"], ["--prompts", "9"],
                 ["--seconds", "0"], ["--prompts", "0"], ["--repeats", "0"], ["--repeats", "101"],
                 ["--warm-start", "-5"], ["--warm-start", "1001"], ["--first-steps", "0"],
                 ["--json", "/nonexistent/dir/eval.json"],
                 ["--dtype", "float64"], ["--device", "tpu"]):
        r = CliRunner().invoke(app, ["eval", *args])
        assert r.exit_code == 2, (args, r.output)
    # refused before any video is generated, in one line
    r = CliRunner().invoke(app, ["eval", "--models", "test-mla", "--json", "/nonexistent/dir/eval.json"])
    assert r.output.strip() == ("error: --json /nonexistent/dir/eval.json: cannot write into /nonexistent/dir "
                                "(no such folder, or not writable)")
    r = CliRunner().invoke(app, ["eval", "--models", "test-mla", "--dtype", "float64"])
    assert r.output.strip() == "error: unknown dtype 'float64': use auto, float32, bfloat16 or float16"
    r = CliRunner().invoke(app, ["eval", "--seconds", "0"])
    assert "--seconds must be more than 0 and at most 3600, got 0" in r.output


def test_cli_evaluates_the_prompts_of_a_file(tmp_path):
    """--prompt-set FILE: the user's own prompts, one per line, comments and blank lines skipped;
    a missing, empty or non-text file is refused in one line before any model runs."""
    file = tmp_path / "orange.txt"
    file.write_text("# one attribute at a time\ntwo large orange balls hovering slowly on a beach\n\n"
                    "  two large red balls hovering slowly on a beach  \n")
    path = tmp_path / "eval.json"
    r = CliRunner().invoke(_cli(), ["eval", "--models", "test-mla", "--seconds", "2", "--prompt-set", str(file),
                                    "--json", str(path)])
    assert r.exit_code == 0, r.output
    report = json.loads(path.read_text())
    assert report["prompts"] == ["two large orange balls hovering slowly on a beach",
                                 "two large red balls hovering slowly on a beach"]
    assert [p["prompt"] for p in report["results"]["test-mla"]["prompts"]] == report["prompts"]
    empty, binary = tmp_path / "empty.txt", tmp_path / "binary.txt"
    empty.write_text("# nothing yet\n\n")
    binary.write_bytes(b"\xff\xfe\x00bad")
    for arg, message in ((str(tmp_path / "missing.txt"), "--prompt-set must be one of fixed, motions, hovering "
                                                         "or a text file of prompts, one per line; got "),
                         (str(empty), f"--prompt-set {empty} holds no prompts: write one per line"),
                         (str(binary), f"--prompt-set {binary}: cannot read it as UTF-8 text")):
        r = CliRunner().invoke(_cli(), ["eval", "--models", "test-mla", "--prompt-set", arg])
        assert r.exit_code == 2 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output
