"""scripts/gpu_check.py: the whole logic on the tiny presets on the CPU, and its no-GPU exit."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message printed without a GPU")
def test_without_cuda_it_says_so_and_exits_0(gpu_check, capsys):
    assert gpu_check.main([]) == 0
    assert "needs a CUDA GPU" in capsys.readouterr().out


def test_cpu_dry_run_on_tiny_presets_writes_all_fields(gpu_check, tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--device", "cpu", "--preset-pair", "test-mla,test-mha", "--seconds", "4",
                           "--batch-cap", "4", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for line in ("chunk latency, median ms", "largest batch", "latency_speedup"):
        assert line in printed
    r = json.loads(out.read_text())
    assert set(r["models"]) == {"test-mla", "test-mha"}
    for m in r["models"].values():
        ro = m["rollout"]
        assert ro["chunks"] == 16 and len(ro["latency_s"]) == len(ro["memory_bytes"]) == 16  # 4 s x 8 fps / 2
        assert ro["chunk_latency_ms"]["median"] > 0 and ro["px_fps"] > 0
        assert "flat" in ro and "drift_bytes" in ro
        assert m["max_batch"]["value"] == 4 and m["max_batch"]["capped"]  # CPU: no OOM below the cap
        assert [t[0] for t in m["max_batch"]["trials"]] == [1, 2, 4]
        assert m["planned_peak_bytes"] > 0 and m["params"] > 0
    mla, mha = (r["models"][n]["rollout"]["cache_bytes"] for n in ("test-mla", "test-mha"))
    assert mla < mha
    assert {"latency_speedup (2nd / 1st median)", "batch_ratio (1st / 2nd)"} <= set(r["ratios"])
    assert r["device"].startswith("cpu")


def test_largest_batch_doubles_then_bisects(gpu_check):
    import time

    limit = 37
    fits = lambda preset, model, device, dtype, b: (b <= limit, "" if b <= limit else "oom")  # noqa: E731
    r = gpu_check.largest_batch(None, None, torch.device("cpu"), torch.float32, cap=1024,
                                deadline=time.perf_counter() + 60, fits=fits)
    assert r["value"] == limit and r["first_failure"] == limit + 1 and not r["capped"] and not r["timed_out"]
    assert [t[0] for t in r["trials"]][:7] == [1, 2, 4, 8, 16, 32, 64]
    cpu, f32, soon = torch.device("cpu"), torch.float32, time.perf_counter() + 60
    big = gpu_check.largest_batch(None, None, cpu, f32, cap=1024, deadline=soon,
                                  fits=lambda *a: (a[-1] <= 600, "oom"))
    assert 600 - 600 // 32 <= big["value"] <= 600  # bisection stops at ~3 %
    none = gpu_check.largest_batch(None, None, cpu, f32, cap=8, deadline=0.0, fits=fits)
    assert none["value"] == 0 and none["timed_out"]


def test_forward_fits_runs_one_full_window_chunk(gpu_check):
    from videomla_app.config import get_preset

    p = get_preset("test-mla")
    model = gpu_check.build_model(p, torch.device("cpu"), torch.float32)
    assert gpu_check.forward_fits(p, model, torch.device("cpu"), torch.float32, 3) == (True, "")


def test_vae_check_logic_on_a_tiny_wan_vae(gpu_check):
    pytest.importorskip("diffusers")
    from test_wan import TINY_VAE

    r = gpu_check.vae_check(torch.device("cpu"), torch.float32, 32, 48, config=TINY_VAE)
    assert r["pixel_frames"] == 25 and r["max_abs_diff_chunked_vs_whole"] <= 1e-6
    assert r["state_bytes"] > 0 and [c["latent_frames"] for c in r["calls"]] == [1, 3, 3]
