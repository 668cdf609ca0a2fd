"""The packed MiniLM (for a lent GPU that cannot install the package): small enough to travel,
the same token states for every training caption, and a clear refusal of anything else."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from videomla_app import text_encoder as te
from videomla_app import world
from videomla_app.text_pack import pack, unpack
from videomla_app.train.data import clip_batch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory):
    d = tmp_path_factory.mktemp("minilm")
    f = pack(te.minilm_path(), d / "packed")
    # what travels to the device is capped at 64 MiB with the ~31 MB of tracked files
    assert f.stat().st_size < 24e6
    return unpack(d / "packed", d / "model")


def test_packed_encoder_gives_the_training_captions_token_states(unpacked):
    rng = np.random.default_rng(0)
    caps = [world.caption(world.sample_spec(rng), rng) for _ in range(200)]
    caps += clip_batch(32, 7, 0, 16, 1)[1] + [""]  # the trainer's own captions, and the empty prompt
    real, packed = te.MiniLMTextEncoder(16), te.MiniLMTextEncoder(16, model_path=unpacked)
    a, b = real.encode(caps), packed.encode(caps)  # [B, 16, 384]
    assert (a - b).abs().max() < 0.02 < a.abs().max()  # fp16 rounding of the weights, nothing more
    cos = torch.nn.functional.cosine_similarity(real.embed(caps[:-1]), packed.embed(caps[:-1]))
    assert cos.min() > 0.9999


def test_packed_encoder_refuses_words_it_does_not_carry(unpacked):
    packed = te.MiniLMTextEncoder(16, model_path=unpacked)
    with pytest.raises(RuntimeError, match="knows only the world's caption words") as e:
        packed.encode(["a zebra galloping across the savanna"])
    assert "\n" not in str(e.value)


def test_videomla_minilm_names_the_model_folder(unpacked, monkeypatch, tmp_path):
    monkeypatch.setenv("VIDEOMLA_MINILM", str(unpacked))
    assert te.minilm_path() == unpacked
    monkeypatch.setenv("VIDEOMLA_MINILM", str(tmp_path))
    with pytest.raises(RuntimeError, match="no model.safetensors there"):
        te.minilm_path()


def test_script_errors_are_one_line(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "pack_minilm.py"), "unpack", str(tmp_path),
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "no packed.safetensors" in r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1
