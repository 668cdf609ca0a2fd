"""scripts/gpu_train.sh, the one command a lent GPU runs, end to end on the CPU with the smoke
recipe: every stage sized to the budget, and what comes back fits the device's return limits
(at most 8 files of at most 16 MiB, at most 2 folders down) and loads as assets."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from videomla_app.train.loop import usable_cores

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_train_script_returns_loadable_assets_within_the_limits(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "DEVICE": "cpu", "RECIPE": "smoke", "BUDGET": "0.5", "KEEP_AE": "0", "BENCH_STEPS": "2",
           "EVAL_SECONDS": "1", "WORKERS": "auto", "BATCH": "2", "OUT": str(out), "RUN": str(tmp_path / "run"),
           "PYTHON": sys.executable}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_train.sh")], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["assets/ae.safetensors", "assets/tiny-mha/model.json", "assets/tiny-mha/model.safetensors",
                     "assets/tiny/model.json", "assets/tiny/model.safetensors", "eval.json", "log.txt",
                     "train_logs.json"]
    assert all((out / f).stat().st_size <= 16 * 2**20 and f.count("/") <= 2 for f in files)
    log = (out / "log.txt").read_text()
    for stage in ("ae", "mha", "mla", "twin", "mla-cfg", "twin-cfg"):
        assert re.search(rf"^{stage}: \S+ s/step, \d+ steps fit in the ", log, re.M), stage
    assert "clips/s" in log and "== done" in log  # the throughput table and the end
    # WORKERS=auto: 0, 8 and all but two cores, those that fit, measured; training uses the fastest
    many = max(1, usable_cores() - 2)
    counts = sorted({c for c in (0, 8, many) if c <= many})
    rows = re.findall(r"^ +(\d+) +\S+ +\S+ +\S+x$", log, re.M)
    fastest = re.search(r"^fastest: (\d+) render workers$", log, re.M)
    assert [int(c) for c in rows] == counts and fastest and int(fastest[1]) in counts, log
    assert f"== train all in 0.5 min ({fastest[1]} render workers)" in log
    assert re.search(r"^twin-cfg: \d+ steps in \d+ s, loss \S+ -> \S+$", log, re.M)  # the loss summary
    logs = json.loads((out / "train_logs.json").read_text())
    report = json.loads((out / "eval.json").read_text())
    assert set(report["results"]) == {"tiny", "tiny-mha"}
    spec = json.loads((out / "assets" / "tiny" / "model.json").read_text())
    assert spec["preset"] == "test-mla" and spec["train"]["steps"] == logs["mla-cfg"]["step"]

    # back here, the returned folder makes the model card: logs without checkpoints, where it trained
    assert not list(out.glob("*.ckpt.pt"))
    card_env = {**os.environ, "VIDEOMLA_ASSETS": str(out / "assets")}
    r = subprocess.run([sys.executable, "-m", "videomla_app", "train", "card", "--recipe", "smoke", "--out", str(out),
                        "--eval", str(out / "eval.json"), "--command", "BUDGET=4 bash scripts/gpu_train.sh"],
                       env=card_env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    card = (out / "assets" / "MODEL_CARD.md").read_text()
    assert f"on CPU ({usable_cores()} cores)." in card and "BUDGET=4 bash scripts/gpu_train.sh" in card
    assert "videomla train ship" not in card  # the script ships; the recipe's CPU commands are not claimed
    for stage in ("mha", "mla", "twin", "mla-cfg", "twin-cfg"):
        assert f"| {stage} | {logs[stage]['step']} | 2 |" in card
    assert (out / "assets" / "loss_curve.png").is_file() and "## Evaluation" in card


def test_gpu_train_script_that_cannot_train_ships_nothing_but_returns_its_log(tmp_path):
    """Training fails (here: a bad batch size): the script says so, exits with its code, returns
    the log and the (empty) loss logs, and leaves no assets that could pass for a trained run."""
    out = tmp_path / "out"
    env = {**os.environ, "DEVICE": "cpu", "RECIPE": "smoke", "BUDGET": "0.5", "KEEP_AE": "0", "BENCH_STEPS": "0",
           "BATCH": "0", "OUT": str(out), "RUN": str(tmp_path / "run"), "PYTHON": sys.executable}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_train.sh")], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["log.txt", "train_logs.json"]
    log = (out / "log.txt").read_text()
    assert "--batch must be between 1 and 1000000" in log
    assert "error: training did not finish (exit 2): nothing shipped" in log and "Traceback" not in log


def test_gpu_train_script_returns_stage_one_and_goes_on_from_carried_weights(tmp_path):
    """Without an eval there, the run's final stage-1 weights come back (bf16, the 8th file): no
    shipped file holds them, and the next GPU run's stage 1 goes on from them (MHA_FROM)."""
    from safetensors.torch import load_file

    base = {**os.environ, "DEVICE": "cpu", "RECIPE": "smoke", "BUDGET": "0.3", "KEEP_AE": "0", "BENCH_STEPS": "0",
            "EVAL_SECONDS": "0", "WORKERS": "0", "BATCH": "2", "PYTHON": sys.executable}

    def run(name, **env):
        out = tmp_path / name / "out"
        r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_train.sh")], capture_output=True, text=True,
                           env={**base, "OUT": str(out), "RUN": str(tmp_path / name / "run"), **env}, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        return out

    first = run("first")
    files = sorted(p.relative_to(first).as_posix() for p in first.rglob("*") if p.is_file())
    assert len(files) == 8 and "mha.safetensors" in files
    back, final = load_file(str(first / "mha.safetensors")), load_file(str(tmp_path / "first" / "run" / "mha.safetensors"))
    assert back.keys() == final.keys() and all(torch.equal(back[k], v.to(torch.bfloat16)) for k, v in final.items())
    second = run("second", MHA_FROM=str(first / "mha.safetensors"))
    assert f"stage 1 from {first / 'mha.safetensors'}" in (second / "log.txt").read_text()
    assert json.loads((second / "train_logs.json").read_text())["mha"]["init"].startswith("mha.safetensors (sha256 ")
    assert json.loads((first / "train_logs.json").read_text())["mha"]["init"] is None
