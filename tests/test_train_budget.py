"""`train --budget-minutes`: a stage times its first steps, then trains as many as fit, with a full
schedule, and a resume keeps that count. Time is a fake clock here, so the counts are exact."""

import json
import os
import re

import pytest
import torch

from videomla_app.config import get_preset
from videomla_app.model import build_model
from videomla_app.train import loop
from videomla_app.train.loop import PROBE_STEPS, Trainer, TrainConfig, sized_to, usable_cores

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
    short = sized_to(cfg, 6, 0.5, 60.0)
    assert short.steps == 6 + 120 and short.warmup == 12  # a tenth of a run shorter than the recipe's
    assert (short.warmup_from, short.warmup_rate) == (6, 0.06)  # ramping on from where the probe got
    big = sized_to(cfg, 6, 0.01, 600.0)
    assert big.steps == 60_006 and big.warmup == 100  # longer than the recipe: warm-up as the recipe's
    assert sized_to(cfg, 6, 1.0, -5.0).steps == 6  # no time left: stop where it is
    assert sized_to(TrainConfig(warmup=4), 6, 1.0, 60).warmup == 4  # the probe finished the ramp


def test_a_budgeted_run_times_its_first_steps_and_fills_the_budget(tmp_path, clock):
    cfg = TrainConfig(steps=4, batch=1, lr=1e-3, warmup=2, bf16=False, ckpt_every=1000)
    t = Trainer("s", build_model(P.model, seed=0), cfg, tmp_path, _loss_taking(clock, 2.0))
    t0 = clock.now
    log = t.run(quiet=True, fit_until=t0 + 60)
    # 10 s first step, then PROBE_STEPS - 1 timed steps of 2 s: 60 - 10 - 10 = 40 s left = 20 steps
    assert t.sized and t.cfg.steps == PROBE_STEPS + 20 and t.step == t.cfg.steps == len(log)
    assert clock.now - t0 == pytest.approx(60.0)
    assert t.cfg.warmup == 2 and log[-1]["lr"] == pytest.approx(1e-4, rel=0.05)  # the cosine ran to its end
    # the recipe has 4 steps, the probe 6: the rate does not decay (and then jump back) while probing
    assert [r["lr"] for r in log[:PROBE_STEPS]] == [5e-4] + [1e-3] * (PROBE_STEPS - 1)
    state = torch.load(tmp_path / "s.ckpt.pt", weights_only=True)
    assert state["sized"] and json.loads(state["config"])["steps"] == t.cfg.steps


def test_a_budget_shorter_than_the_probe_stops_after_it(tmp_path, clock):
    cfg = TrainConfig(steps=500, batch=1, lr=1e-3, warmup=50, bf16=False, ckpt_every=1000)
    t = Trainer("s", build_model(P.model, seed=0), cfg, tmp_path, _loss_taking(clock, 2.0))
    t.run(quiet=True, fit_until=clock.now + 6)  # the probe alone takes 20 s
    assert t.step == t.cfg.steps == PROBE_STEPS


def test_resume_keeps_the_sized_schedule_or_refits_it_to_a_new_budget(tmp_path, clock):
    import shutil

    cfg = TrainConfig(steps=4, batch=1, lr=1e-3, warmup=2, bf16=False, ckpt_every=5)
    t = Trainer("s", build_model(P.model, seed=0), cfg, tmp_path / "a", _loss_taking(clock, 2.0))
    t.run(quiet=True, max_minutes=0.5, fit_until=clock.now + 60)  # sized to 26 steps, stopped at 30 s
    assert t.sized and t.step == 11 and t.cfg.steps == PROBE_STEPS + 20
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    again = Trainer("s", build_model(P.model, seed=1), cfg, tmp_path / "a", _loss_taking(clock, 2.0))
    assert again.resume() and again.sized and again.cfg == t.cfg and again.step == 11
    again.run(quiet=True)  # no budget: the sized schedule, to its end
    assert again.step == PROBE_STEPS + 20
    # a new budget of 1 s: after one re-fit window (2 x PROBE_STEPS) the run is re-sized to stop there
    short = Trainer("s", build_model(P.model, seed=1), cfg, tmp_path / "b", _loss_taking(clock, 2.0))
    assert short.resume()
    short.run(quiet=True, fit_until=clock.now + 1)
    assert short.step == short.cfg.steps == 11 + 1 + 2 * PROBE_STEPS
    plain = Trainer("u", build_model(P.model, seed=0), cfg, tmp_path, _loss_taking(clock, 2.0))
    plain.run(quiet=True, max_minutes=0.1)
    fresh = Trainer("u", build_model(P.model, seed=0), cfg, tmp_path, _loss_taking(clock, 2.0))
    assert fresh.resume() and not fresh.sized and fresh.cfg.steps == 4


def test_steps_slower_than_the_probe_are_refitted_to_the_deadline(tmp_path, clock):
    """Render workers start with batches rendered ahead, so a GPU run's first steps can be faster
    than the rest: here the probe sees 1 s steps and the run then takes 3 s a step. Re-fitting as it
    goes keeps the end near the deadline (the probe's count alone would overrun 2.8x), and the rate
    never drops by more than a few percent of lr in one step."""
    cfg = TrainConfig(steps=4, batch=1, lr=1e-3, warmup=2, bf16=False, ckpt_every=1000)

    def loss(model, step, gen):
        clock.now += 1.0 if step < PROBE_STEPS + 1 else 3.0
        return sum((p.float() ** 2).mean() for p in model.parameters()) * 1e-3

    t = Trainer("s", build_model(P.model, seed=0), cfg, tmp_path, loss)
    t0 = clock.now
    t.run(quiet=True, fit_until=t0 + 600)
    first_count = PROBE_STEPS + 594  # what the probe alone would have trained
    assert t.step == t.cfg.steps < first_count / 2
    assert 580 <= clock.now - t0 <= 620, clock.now - t0
    lrs = [r["lr"] for r in t.log][2:]  # after the 2-step warm-up
    assert max(a - b for a, b in zip(lrs, lrs[1:])) < 0.1 * cfg.lr


def test_a_shortened_warmup_keeps_ramping_after_the_probe(tmp_path, clock):
    """Sized to a run whose tenth is shorter than the probe: the warm-up still ends after the probe,
    so the rate keeps rising step by step instead of jumping from the probe's few percent to full."""
    cfg = TrainConfig(steps=4000, batch=1, lr=1e-3, warmup=100, bf16=False, ckpt_every=1000)
    t = Trainer("s", build_model(P.model, seed=0), cfg, tmp_path, _loss_taking(clock, 1.0))
    log = t.run(quiet=True, fit_until=clock.now + 60)  # 5 + 5 s of probe, 50 s left: 56 steps
    assert t.cfg.steps == 56 and t.cfg.warmup == 2 * PROBE_STEPS
    lrs = [r["lr"] for r in log]
    assert lrs[:PROBE_STEPS] == pytest.approx([1e-5 * (k + 1) for k in range(PROBE_STEPS)])  # the recipe's ramp
    ramp = lrs[:t.cfg.warmup]
    assert all(0 < b - a <= 1e-3 / PROBE_STEPS for a, b in zip(ramp, ramp[1:]))  # rising, never jumping
    assert lrs[t.cfg.warmup - 1] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-4, rel=0.05)
    again = Trainer("s", build_model(P.model, seed=0), cfg, tmp_path, _loss_taking(clock, 1.0))
    assert again.resume() and again.cfg == t.cfg  # the whole sized schedule comes back


def test_train_all_with_a_budget_sizes_every_stage_and_ships_their_counts(tmp_path):
    """The whole smoke recipe in a budget: every stage is sized, trains to its own count, and
    ship writes the counts that ran into model.json."""
    from typer.testing import CliRunner

    from videomla_app.cli import app

    runner = CliRunner()
    # 0.6 min, not less: each stage's share must hold its 6-step probe even on a busy machine (at 0.3 a
    # concurrent training run made the autoencoder's probe take most of the budget)
    res = runner.invoke(app, ["train", "all", "--recipe", "smoke", "--out", str(tmp_path), "--budget-minutes", "0.6"])
    assert res.exit_code == 0, res.output
    assert "done" in res.output and "Traceback" not in res.output
    for s in ("ae", "mha", "mla", "twin", "mla-cfg", "twin-cfg"):
        state = torch.load(tmp_path / f"{s}.ckpt.pt", weights_only=True)
        cfg = json.loads(state["config"])
        assert state["sized"] and state["step"] == cfg["steps"] >= PROBE_STEPS, s
        assert re.search(rf"^{s}: \S+ s/step, \d+ steps fit in the ", res.output, re.M), s
        assert state["device"] == f"CPU ({usable_cores()} cores)"
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


def test_a_budget_that_runs_out_exits_3_and_ships_nothing(tmp_path, monkeypatch):
    """Steps far slower than the budget allows: the hard stop at 1.1x the budget ends the stage
    early, and the command fails instead of leaving a partial run looking done."""
    from typer.testing import CliRunner

    from videomla_app.cli import app

    clock = FakeClock()
    monkeypatch.setattr(loop.time, "monotonic", clock)
    real_step = Trainer._checkpoint

    def slow_checkpoint(self, t0):  # every checkpoint (each 2nd step) 'takes' a minute
        clock.now += 60
        return real_step(self, t0)

    monkeypatch.setattr(Trainer, "_checkpoint", slow_checkpoint)
    from dataclasses import replace

    from videomla_app.train import stages

    smoke = stages.RECIPES["smoke"]  # more steps than the probe, so stopping early leaves it unfinished
    monkeypatch.setitem(stages.RECIPES, "smoke", replace(smoke, ae_train=replace(smoke.ae_train, steps=40)))
    res = CliRunner().invoke(app, ["train", "ae", "--recipe", "smoke", "--out", str(tmp_path),
                                   "--budget-minutes", "1"])
    assert res.exit_code == 3, res.output
    assert "stopped before the end of stage ae" in res.output and "1-minute budget ran out" in res.output
    assert not (tmp_path / "ae.safetensors").exists() and "Traceback" not in res.output
