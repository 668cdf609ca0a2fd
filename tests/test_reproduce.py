"""`scripts/reproduce_tiny.sh`: the nine CPU rounds from the H200 pair to the shipped pair, in order,
each round starting from the bf16 weights the round before made, and restartable after a failure.

A stand-in `videomla` takes the place of training (the real rounds take hours): its `train mla|twin`
writes ``<stage>.safetensors`` = the ``--<stage>-from`` weights + 1, so the final weights count the
stages they went through, and it can be told to fail part-way, leaving a checkpoint as an
interrupted stage does.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from videomla_app.train.stages import RECIPES

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "reproduce_tiny.sh"

STUB = """#!{python}
import json, os, struct, sys
from pathlib import Path
import numpy as np

def load(path):  # one tensor "w", fp32 or bf16 (read by hand: numpy has no bf16, and torch takes a second)
    raw = Path(path).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    info = json.loads(raw[8:8 + n])["w"]
    data = raw[8 + n:][slice(*info["data_offsets"])]
    if info["dtype"] == "BF16":
        return (np.frombuffer(data, np.uint16).astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(data, np.float32)

def save(path, w):
    data = w.astype(np.float32).tobytes()
    head = json.dumps({{"w": {{"dtype": "F32", "shape": [len(w)], "data_offsets": [0, len(data)]}}}}).encode()
    Path(path).write_bytes(struct.pack("<Q", len(head)) + head + data)

sys.stdin.read()  # as a program that reads its input would: the script's round list must not be it
args = sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps(args) + "\\n")
stage, out = args[1], Path(args[args.index("--out") + 1])
if stage == "ship":
    sys.exit(0)
w = load(args[args.index(f"--{{stage}}-from") + 1])
if os.environ.get("STUB_FAIL") == f"{{out.name}}/{{stage}}":
    (out / f"{{stage}}.ckpt.pt").write_bytes(b"partial")
    print("interrupted", file=sys.stderr)
    sys.exit(130)
if stage == "mla" and not (out / "bank").exists():
    (out / "bank").mkdir()
    (out / "bank" / "batch0.safetensors").write_bytes(b"clips")
save(out / f"{{stage}}.safetensors", w + 1)
"""

ROUNDS = [("g2", "tiny-t4-cpu-g2", 987, 987), ("anchor", "tiny-t4-cpu-anchor", 1027, 980),
          ("pairs", "tiny-t4-cpu-pairs", 802, 902), ("counts", "tiny-t4-cpu-counts", 643, 795),
          ("motions", "tiny-t4-cpu-motions", 553, 595), ("own750", "tiny-t4-cpu-own750", 574, 574),
          ("all", "tiny-t4-cpu-own750-all", 574, 574),
          ("chain", "tiny-t4-cpu-own750-chain", 400, 400),
          ("chain12", "tiny-t4-cpu-own750-chain12", 400, 400)]


@pytest.fixture
def env(tmp_path):
    stub = tmp_path / "videomla"
    stub.write_text(STUB.format(python=sys.executable))
    stub.chmod(0o755)
    for name, value in (("tiny", 0.0), ("mha", 100.0)):
        save_file({"w": torch.full((4,), value, dtype=torch.bfloat16)}, str(tmp_path / f"{name}.safetensors"))
    ae = tmp_path / "ae.safetensors"
    ae.write_bytes(b"autoencoder")
    return {**os.environ, "VIDEOMLA": str(stub), "PYTHON": sys.executable, "OUT": str(tmp_path / "out"),
            "TINY_FROM": str(tmp_path / "tiny.safetensors"), "MHA_FROM": str(tmp_path / "mha.safetensors"),
            "AE": str(ae), "STUB_LOG": str(tmp_path / "log.jsonl")}


def _run(env, **extra):
    return subprocess.run(["bash", str(SCRIPT)], env={**env, **extra}, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def _calls(env):
    return [json.loads(line) for line in Path(env["STUB_LOG"]).read_text().splitlines()]


def test_rounds_are_recipes_the_model_card_names():
    card = (ROOT / "assets" / "MODEL_CARD.md").read_text()
    for _, recipe, steps_mla, steps_twin in ROUNDS:
        assert recipe in RECIPES and f"--recipe {recipe} " in card
    # the card's top line lists the CPU rounds' step counts in this order
    assert "987 steps, then 1,027 / 980" in card and "802 / 902" in card and "643 / 795" in card
    assert "553 / 595" in card and "574 steps of each" in card and "574 more" in card
    top = card.split("\n\n")[1]  # the paragraph under the title
    assert top.count("400 more") == 2 and "of that on clips of four chunks" in top
    text = SCRIPT.read_text()
    for round_, recipe, steps_mla, steps_twin in ROUNDS:
        assert any(line.split() == [round_, recipe, str(steps_mla), str(steps_twin)] for line in text.splitlines())


def test_the_chain_runs_every_round_in_order_from_the_last_rounds_weights(env):
    r = _run(env, SHIP="1")
    assert r.returncode == 0, r.stderr
    calls = _calls(env)
    out = Path(env["OUT"])
    train = [c for c in calls if c[1] != "ship"]
    assert [(Path(c[c.index("--out") + 1]).name, c[1]) for c in train] == \
        [(name, s) for name, *_ in ROUNDS for s in ("mla", "twin")]
    prev = {"mla": env["TINY_FROM"], "twin": env["MHA_FROM"]}
    for i, (name, recipe, steps_mla, steps_twin) in enumerate(ROUNDS):
        for c, s, steps, shipped in ((train[2 * i], "mla", steps_mla, "tiny"),
                                     (train[2 * i + 1], "twin", steps_twin, "tiny-mha")):
            assert c[c.index("--recipe") + 1] == recipe and c[c.index("--steps") + 1] == str(steps)
            assert c[c.index(f"--{s}-from") + 1] == prev[s] and "--resume" not in c
            prev[s] = str(out / name / f"{shipped}.safetensors")
        assert (out / name / "ae.safetensors").read_bytes() == b"autoencoder"
    # each round's weights go on as bf16, as they shipped; nine rounds, +1 each
    last = out / ROUNDS[-1][0]
    tiny, mha = load_file(str(last / "tiny.safetensors")), load_file(str(last / "tiny-mha.safetensors"))
    assert tiny["w"].dtype == torch.bfloat16 and tiny["w"].tolist() == [9.0] * 4
    assert mha["w"].tolist() == [109.0] * 4
    # one bank per kind of clip: the 9-frame one rendered in the first round's folder and hard-linked
    # into the other 9-frame rounds; the 12-frame round renders its own (a linked 9-frame bank would
    # be refused by its stages)
    frames = {name: RECIPES[recipe].dit_clip_frames for name, recipe, *_ in ROUNDS}
    assert sorted(set(frames.values())) == [9, 12] and frames["chain12"] == 12
    first = (out / "g2" / "bank" / "batch0.safetensors").stat().st_ino
    for name, *_ in ROUNDS:
        linked = (out / name / "bank" / "batch0.safetensors").stat().st_ino == first
        assert linked == (frames[name] == 9), name
    assert calls[-1][:2] == ["train", "ship"] and calls[-1][calls[-1].index("--out") + 1] == str(last)


def test_a_failed_stage_stops_the_chain_and_a_rerun_resumes_it(env):
    r = _run(env, STUB_FAIL="pairs/twin")
    assert r.returncode == 130 and "interrupted" in r.stderr
    out = Path(env["OUT"])
    assert (out / "pairs" / "mla.safetensors").exists() and not (out / "counts").exists()
    n = len(_calls(env))
    r = _run(env)
    assert r.returncode == 0, r.stderr
    again = _calls(env)[n:]
    # finished stages are skipped; the interrupted one continues from its checkpoint
    assert again[0][1] == "twin" and Path(again[0][again[0].index("--out") + 1]).name == "pairs"
    assert "--resume" in again[0] and all("--resume" not in c for c in again[1:])
    after = len(ROUNDS) - 3  # the rounds after "pairs"
    assert len(again) == 1 + 2 * after and "g2: mla done" in r.stdout  # pairs' twin, then both stages of each
    assert load_file(str(out / ROUNDS[-1][0] / "tiny.safetensors"))["w"].tolist() == [len(ROUNDS)] * 4
    r = _run(env)  # everything done: nothing trains again
    assert r.returncode == 0 and len(_calls(env)) == n + len(again)


def test_until_stops_after_a_round_and_bad_settings_are_one_line(env, tmp_path):
    r = _run(env, UNTIL="anchor")
    assert r.returncode == 0, r.stderr
    assert [Path(c[c.index("--out") + 1]).name for c in _calls(env)] == ["g2", "g2", "anchor", "anchor"]
    r = _run(env, UNTIL="everything")
    assert r.returncode == 2 and r.stderr.strip() == ("error: UNTIL=everything is not a round: use g2, "
                                                      "anchor, pairs, counts, motions, own750, all, chain, "
                                                      "chain12")
    r = _run(env, AE=str(tmp_path / "nope.safetensors"))
    assert r.returncode == 2 and r.stderr.strip() == f"error: no autoencoder at {tmp_path / 'nope.safetensors'}"
