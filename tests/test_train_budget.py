"""`train --budget-minutes`: a stage times its first steps, then trains as many as fit, with a full
schedule, and a resume keeps that count. Time is a fake clock here, so the counts are exact."""

import json

import pytest
import torch

from videomla_app.config import get_preset
from videomla_app.model import build_model
from videomla_app.train import loop
from videomla_app.train.loop import PROBE_STEPS, Trainer, TrainConfig, sized_to

P = get_preset("test-mla")


class FakeClock:
    """time.monotonic for the loop: advances only when a training step says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(loop.time, "monotonic", c)
    return c


def _loss_taking(clock: FakeClock, seconds: float):
    """A tiny real loss (the model trains) whose step 'takes' ``seconds``; the first step takes 5x
    as long, like worker start-up or CUDA autotuning, which the timing must leave out."""

    def loss(model, step, gen):
        clock.now += seconds * (5 if step == 0 else 1)
        return sum((p.float() ** 2).mean() for p in model.parameters()) * 1e-3

    return loss


def test_sized_to_counts_the_steps_that_fit():
    cfg = TrainConfig(steps=4000, warmup=100)
    assert sized_to(cfg, 6, 0.5, 60.0).steps == 6 + 120
    assert sized_to(cfg, 6, 0.5, 60.0).warmup == 12  # a tenth of a run shorter than the recipe's
    big = sized_to(cfg, 6, 0.01, 600.0)
    assert big.steps == 60_006 and big.warmup == 100  # longer than the recipe: warm-up as the recipe's
    assert sized_to(cfg, 6, 1.0, -5.0).steps == 6  # no time left: stop where it is
    assert sized_to(cfg, 0, 1.0, 0.5).warmup == 1


def test_a_budgeted_run_times_its_first_steps_and_fills_the_budget(tmp_path, clock):
    cfg = TrainConfig(steps=4, batch=1, lr=1e-3, warmup=2, bf16=False, ckpt_every=1000)
    t = Trainer("s", build_model(P.model, seed=0), cfg, tmp_path, _loss_taking(clock, 2.0))
    t0 = clock.now
    log = t.run(quiet=True, fit_minutes=1.0)
    # 10 s first step, then PROBE_STEPS - 1 timed steps of 2 s: 60 - 10 - 10 = 40 s left = 20 steps
    assert t.sized and t.cfg.steps == PROBE_STEPS + 20 and t.step == t.cfg.steps == len(log)
    assert clock.now - t0 == pytest.approx(60.0)
    assert t.cfg.warmup == 2 and log[-1]["lr"] == pytest.approx(1e-4, rel=0.05)  # the cosine ran to its end
    state = torch.load(tmp_path / "s.ckpt.pt", weights_only=True)
    assert state["sized"] and json.loads(state["config"])["steps"] == t.cfg.steps


def test_a_budget_shorter_than_the_probe_stops_after_it(tmp_path, clock):
    cfg = TrainConfig(steps=500, batch=1, lr=1e-3, warmup=50, bf16=False, ckpt_every=1000)
    t = Trainer("s", build_model(P.model, seed=0), cfg, tmp_path, _loss_taking(clock, 2.0))
    t.run(quiet=True, fit_minutes=0.1)  # 6 s: the probe alone takes 20
    assert t.step == t.cfg.steps == PROBE_STEPS and t.cfg.warmup == 1


def test_resume_keeps_the_sized_schedule(tmp_path, clock):
    cfg = TrainConfig(steps=4, batch=1, lr=1e-3, warmup=2, bf16=False, ckpt_every=5)
    t = Trainer("s", build_model(P.model, seed=0), cfg, tmp_path, _loss_taking(clock, 2.0))
    t.run(quiet=True, max_minutes=0.5, fit_minutes=1.0)  # sized to 26 steps, stopped at 30 s
    assert t.sized and t.step < t.cfg.steps == PROBE_STEPS + 20
    again = Trainer("s", build_model(P.model, seed=1), cfg, tmp_path, _loss_taking(clock, 2.0))
    assert again.resume() and again.sized and again.cfg.steps == PROBE_STEPS + 20 and again.step == t.step
    again.run(quiet=True, fit_minutes=0.01)  # already sized: a new budget does not shrink the schedule
    assert again.step == PROBE_STEPS + 20
    plain = Trainer("u", build_model(P.model, seed=0), cfg, tmp_path, _loss_taking(clock, 2.0))
    plain.run(quiet=True, max_minutes=0.1)
    fresh = Trainer("u", build_model(P.model, seed=0), cfg, tmp_path, _loss_taking(clock, 2.0))
    assert fresh.resume() and not fresh.sized and fresh.cfg.steps == 4


def test_train_all_with_a_budget_sizes_every_stage_and_ships_their_counts(tmp_path):
    """The whole smoke recipe in a budget: every stage is sized, trains to its own count, and
    ship writes the counts that ran into model.json."""
    import os

    from typer.testing import CliRunner

    from videomla_app.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["train", "all", "--recipe", "smoke", "--out", str(tmp_path), "--budget-minutes", "0.3"])
    assert res.exit_code == 0, res.output
    assert "done" in res.output and "Traceback" not in res.output
    for s in ("ae", "mha", "mla", "twin", "mla-cfg", "twin-cfg"):
        state = torch.load(tmp_path / f"{s}.ckpt.pt", weights_only=True)
        cfg = json.loads(state["config"])
        assert state["sized"] and state["step"] == cfg["steps"] >= PROBE_STEPS, s
        assert f"{s}: " in res.output and "steps fit in" in res.output
    os.environ["VIDEOMLA_ASSETS"] = str(tmp_path / "assets")
    try:
        res = runner.invoke(app, ["train", "ship", "--recipe", "smoke", "--out", str(tmp_path)])
    finally:
        del os.environ["VIDEOMLA_ASSETS"]
    assert res.exit_code == 0, res.output
    spec = json.loads((tmp_path / "assets" / "tiny" / "model.json").read_text())
    ran = json.loads(torch.load(tmp_path / "mla-cfg.ckpt.pt", weights_only=True)["config"])
    assert spec["train"]["steps"] == ran["steps"]


def test_budget_rejects_steps_max_minutes_and_absurd_values(tmp_path):
    from typer.testing import CliRunner

    from videomla_app.cli import app

    runner = CliRunner()
    for args, msg in ((["--budget-minutes", "5", "--steps", "10"], "drop --steps"),
                      (["--budget-minutes", "5", "--max-minutes", "3"], "drop --max-minutes"),
                      (["--budget-minutes", "0"], "--budget-minutes must be between 0.1 and 100000"),
                      (["--budget-minutes", "nan"], "--budget-minutes must be between 0.1 and 100000")):
        res = runner.invoke(app, ["train", "all", "--recipe", "smoke", "--out", str(tmp_path), *args])
        assert res.exit_code != 0 and msg in res.output, (args, res.output)
        assert "Traceback" not in res.output
