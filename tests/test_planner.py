"""The memory planner: terms, their sources, and the refusal message."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from videomla_app.budget import cache_budget
from videomla_app.config import get_preset
from videomla_app.errors import RunError
from videomla_app.planner import (
    UMT5_XXL,
    WAN21_VAE_PARAMS,
    check_fits,
    dit_params,
    max_batch,
    plan_memory,
    preflight,
    umt5_encoder_params,
)

GB = 10**9


def test_breakdown_adds_up_to_the_peak():
    for name in ("videomla-1.3b", "self-forcing-1.3b", "small-mla", "test-mha"):
        p = plan_memory(get_preset(name))
        assert sum(p.breakdown().values()) == p.generate_phase
        assert p.peak == max(p.generate_phase, p.encode_phase) + p.margin
        d = p.as_dict()
        assert d["peak_bytes"] == p.peak and d["breakdown"] == p.breakdown()
        assert p.transient == max(p.dit_activations, p.vae_decode) >= p.attention_workspace


def test_cache_term_is_the_budget_of_allocated_cache_tensors():
    for name in ("videomla-1.3b", "self-forcing-1.3b", "test-mla"):
        for batch in (1, 3):
            pr = get_preset(name)
            p = plan_memory(pr, batch=batch)
            assert p.kv_cache == cache_budget(pr, torch.bfloat16, batch=batch).total_bytes
    assert plan_memory(get_preset("self-forcing-1.3b")).kv_cache == 6_038_323_200  # README: 6.04 GB


def test_parameter_counts_come_from_real_configs():
    assert dit_params(get_preset("videomla-1.3b").model) == 1_303_042_240
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = {k: v for k, v in UMT5_XXL.items() if k != "gated"}
    with torch.device("meta"):
        te = UMT5EncoderModel(UMT5Config(**cfg, feed_forward_proj="gated-gelu", tie_word_embeddings=False))
    n = sum(p.numel() for p in te.parameters())
    assert n == umt5_encoder_params(**UMT5_XXL) == 5_680_910_336  # the "5.7 B" umT5-XXL encoder
    p = plan_memory(get_preset("videomla-1.3b"))
    assert (p.text_encoder, p.vae, p.vae_params) == ("umt5-xxl", "wan2.1", WAN21_VAE_PARAMS)
    assert p.dit_weights == 2 * 1_303_042_240 and p.text_encoder_weights == 2 * n


def test_mla_plan_is_smaller_than_dense_by_the_cache_difference():
    mla = get_preset("videomla-1.3b")
    dense = replace(mla, name="dense-same-window", model=replace(mla.model, attn="mha", mla=None))
    a, b = plan_memory(mla, text_placement="cpu"), plan_memory(dense, text_placement="cpu")
    cache_diff = b.kv_cache - a.kv_cache
    assert cache_diff == cache_budget(mla).dense_total_bytes - cache_budget(mla).total_bytes > 0
    other = (b.dit_weights - a.dit_weights) + (b.transient - a.transient)  # MHA has more weights
    assert b.generate_phase - a.generate_phase == cache_diff + other
    assert a.peak < b.peak
    sf = plan_memory(get_preset("self-forcing-1.3b"), text_placement="cpu")  # 21-frame dense cache
    assert sf.peak - a.peak > 5 * GB


def test_offload_and_cpu_text_placement():
    pr = get_preset("videomla-1.3b")
    gpu, off, cpu = (plan_memory(pr, text_placement=t) for t in ("gpu", "offload", "cpu"))
    assert gpu.text_encoder_weights > 11 * GB and off.text_encoder_weights == cpu.text_encoder_weights == 0
    assert off.encode_phase > gpu.text_encoder_weights and cpu.encode_phase == 0
    assert gpu.peak > off.peak >= cpu.peak
    with pytest.raises(ValueError):
        plan_memory(pr, text_placement="disk")


def test_batch_scales_cache_and_activations_not_weights():
    pr = get_preset("self-forcing-1.3b")
    one, four = plan_memory(pr), plan_memory(pr, batch=4)
    assert four.kv_cache == 4 * one.kv_cache and four.dit_activations == 4 * one.dit_activations
    assert four.dit_weights == one.dit_weights and four.vae_decode == one.vae_decode  # decodes item 0
    mla_b = max_batch(get_preset("videomla-1.3b"), 141 * GB, text_placement="offload")
    mha_b = max_batch(pr, 141 * GB, text_placement="offload")
    assert 1 <= mha_b < 30 and mla_b > 5 * mha_b  # PAPER Fig. 7: MHA runs out of memory near B = 28


def test_refusal_names_the_terms_and_suggests_fixes():
    pr = get_preset("videomla-1.3b")
    p = plan_memory(pr)
    check_fits(p, p.peak)  # exactly enough: no error
    with pytest.raises(RunError) as e:
        check_fits(p, 8 * GB, pr)
    msg = str(e.value)
    assert "videomla-1.3b needs about" in msg and "8.00 GB is free" in msg
    assert "text encoder weights" in msg and "kv cache" in msg
    assert "--device cpu" in msg and ("offload the text encoder" in msg or "text encoder on the CPU" in msg)
    sf = get_preset("self-forcing-1.3b")
    q = plan_memory(sf, text_placement="cpu")
    with pytest.raises(RunError) as e:
        check_fits(q, q.peak - 1 * GB, sf)
    msg = str(e.value)
    assert "--window" in msg and "--model videomla-1.3b" in msg
    w = int(msg.split("--window ")[1].split()[0])
    assert 0 < w < 18 and plan_memory(replace(sf, cache=replace(sf.cache, window_frames=w)),
                                      text_placement="cpu").peak <= q.peak - 1 * GB  # it really fits
    off = plan_memory(pr, text_placement="offload")  # here encoding the prompt is the peak
    assert off.encode_phase > off.generate_phase
    with pytest.raises(RunError, match="encoding the prompt takes .*text encoder on the CPU"):
        check_fits(off, off.encode_phase, pr)
    big = plan_memory(pr, batch=64, text_placement="offload")
    with pytest.raises(RunError, match="a smaller batch"):
        check_fits(big, big.peak - 5 * GB, pr)


def test_preflight_checks_only_cuda():
    p = preflight(get_preset("videomla-1.3b"), "cpu", torch.bfloat16)  # 20 GB plan: the CPU is never refused
    assert p.device == "cpu" and p.peak > 15 * GB


def test_info_json_and_table_show_the_estimate():
    from videomla_app.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["info", "--model", "videomla-1.3b", "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)["memory_plan"]
    for key in ("peak_bytes", "peak_bytes_text_offloaded", "breakdown", "dit_params", "text_encoder_params",
                "vae_params", "kv_cache", "dit_activations", "attention_workspace", "vae_decode", "margin"):
        assert key in m, key
    assert m["peak_bytes"] == plan_memory(get_preset("videomla-1.3b")).peak > m["peak_bytes_text_offloaded"]
    assert m["kv_cache"] == json.loads(r.output)["cache"]["total_bytes"]
    r = runner.invoke(app, ["info"])
    assert r.exit_code == 0 and "peak GPU memory" in r.output and "text encoder umt5-xxl" in r.output
