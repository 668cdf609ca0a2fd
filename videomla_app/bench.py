"""CPU/GPU benchmark: one chunk forward, MHA vs MLA backends, timed in one process.

``python -m videomla_app.bench`` (or ``videomla bench``) prints, for each case, the best time of
interleaved repetitions and its ratio to dense MHA *at the same window* measured in the same run
(these machines are noisy: only same-process ratios mean anything). Cases:

- whole-model chunk forward of the small presets (embedded size) through the rolling cache, and
  the MLA cache-write pass, which stops after the last layer's K/V write;
- one 1.3B-shaped self-attention layer (d 1536, 12 heads, d_c 192 + 32): a 3-frame chunk
  (4,680 tokens) against the 1 sink + 6 window + chunk cache (15,600 keys);
- the shipped ``tiny`` end to end (denoise, cache write, decode) per chunk, with cold chunks and
  with its warm start (ratio against cold);
- the same with classifier-free guidance g = 2: unguided, the two calls per step of the reference
  form, and both prompts as one forward of twice the batch (``guided.py``; ratio against two calls).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import replace

import torch

from .cache import make_cache
from .config import get_preset
from .model import CausalDiT, build_model


def _best(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Best wall time (s) of each function over interleaved repetitions (after one warm-up)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[k].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in times.items()}


def _model_case(dtype: torch.dtype, reps: int, device: str) -> dict[str, float]:
    """One chunk forward of small-mha vs small-mla (per backend), cache full and wrapped."""
    fns = {}
    for name, backends in (("small-mha", ["sdpa"]), ("small-mla", ["naive", "absorb", "auto"])):
        p = get_preset(name)
        model = build_model(p.model, device, dtype, seed=0)
        text = model.encode_text(torch.randn(1, p.text_len, p.model.text_dim, device=device, dtype=dtype))
        cache = make_cache(p.model, p.cache, device=device, dtype=dtype)
        C = p.cache.chunk_frames
        for f0 in range(0, 4 * p.cache.capacity_frames, C):  # fill and wrap the window
            cache.commit(cache.plan(f0, C))
        step = cache.plan(cache.committed, C)
        inputs = model.attn_inputs(step, cache)
        x = torch.randn(1, C, p.model.latent_channels, *p.model.latent_hw, device=device, dtype=dtype)
        for b in backends:
            def run(model=model, b=b, text=text, cache=cache, step=step, inputs=inputs, x=x):
                model.set_attn_backend(b)
                with torch.no_grad():
                    model(x, 500.0, text, cache, step, inputs)
            fns[f"{name}/{b}"] = run
        if name == "small-mla":
            def write(model=model, text=text, cache=cache, step=step, inputs=inputs, x=x):
                model.set_attn_backend("auto")
                with torch.no_grad():
                    model.write_context(x, 0.0, text, cache, step, inputs)
            fns[f"{name}/write-pass"] = write  # the cache-write pass (stops after the last K/V write)
    return _best(fns, reps)


def _layer_case(dtype: torch.dtype, reps: int, device: str) -> dict[str, float]:
    """One 1.3B-shaped self-attention layer: a 3-frame chunk against a full, wrapped
    1 sink + 6 window + chunk cache (the dense layer reads the same window)."""
    fns = {}
    g = torch.Generator().manual_seed(0)
    for name in ("self-forcing-1.3b", "videomla-1.3b"):
        p = get_preset(name)
        cfg = replace(p.model, n_layers=1)
        model = CausalDiT(cfg).to(device, dtype).eval()  # one block; only its attention is timed
        cache = make_cache(cfg, get_preset("videomla-1.3b").cache, device=device, dtype=dtype)
        for t in cache.tensors.values():
            t.copy_(torch.randn(t.shape, generator=g) * 0.5)
        C = cache.C
        for f0 in range(0, 3 * cache.cfg.capacity_frames, C):  # wrap the ring a few times
            cache.commit(cache.plan(f0, C))
        step = cache.plan(cache.committed, C)
        inputs = model.attn_inputs(step, cache)
        attn = model.blocks[0].self_attn
        x = (torch.randn(1, step.n * cfg.tokens_per_frame, cfg.dim, generator=g) * 0.1).to(device, dtype)
        for b in (["sdpa"] if cfg.attn == "mha" else ["naive", "absorb", "auto"]):
            def run(attn=attn, b=b, x=x, inputs=inputs):
                attn.backend = b
                with torch.no_grad():
                    attn(x, inputs)
            fns[f"layer/{cfg.attn}-{b}"] = run
    return _best(fns, reps)


# The shipped models give a video's first chunk 16 steps (once per video); the timed rows give it
# the 4 of every later chunk, so that seconds per chunk stay those of a chunk in a long video.
FIRST = 4


def _pipeline_case(reps: int, device: str, chunks: int = 12) -> dict[str, float]:
    """Seconds per chunk of the shipped ``tiny`` over ``chunks`` chunks from a fresh state, cold
    (warm start 0) and with its shipped warm start; {} when the weights are not in this build.
    The first chunk runs the 4 steps of the others (``FIRST``): the rows time a steady chunk."""
    from .models import ModelUnavailable, load_pipeline

    try:
        warm = load_pipeline("tiny", device=device, first_steps=FIRST)
        if not warm.preset.sampler.warm_start:  # a build that ships it cold: time the README's 750
            warm = load_pipeline("tiny", device=device, warm_start=750.0, first_steps=FIRST)
        cold = load_pipeline("tiny", device=device, warm_start=0.0, first_steps=FIRST)
    except ModelUnavailable:
        return {}
    fns = {}
    for pipe in (cold, warm):
        def run(pipe=pipe):
            for _ in pipe.stream("a red ball bouncing on a sunny day", chunks, seed=0):
                pass
        fns[f"tiny/warm-{pipe.preset.sampler.warm_start:g}"] = run
    return {k: v / chunks for k, v in _best(fns, reps).items()}


def _guidance_case(reps: int, device: str, chunks: int = 12) -> dict[str, float]:
    """Seconds per chunk of the shipped ``tiny`` unguided and at g = 2 (two calls, one forward);
    steady chunks, as in :func:`_pipeline_case`."""
    from .models import ModelUnavailable, load_pipeline

    try:
        pipes = {"tiny/g1": load_pipeline("tiny", device=device, guidance=1.0, first_steps=FIRST),
                 "tiny/g2-two-calls": load_pipeline("tiny", device=device, guidance=2.0, first_steps=FIRST),
                 "tiny/g2-one-forward": load_pipeline("tiny", device=device, guidance=2.0, first_steps=FIRST)}
    except ModelUnavailable:
        return {}
    pipes["tiny/g2-two-calls"].paired_guidance = False
    fns = {}
    for name, pipe in pipes.items():
        def run(pipe=pipe):
            for _ in pipe.stream("a red ball bouncing on a sunny day", chunks, seed=0):
                pass
        fns[name] = run
    return {k: v / chunks for k, v in _best(fns, reps).items()}


def main(quick: bool = False, json_path: str | None = None, dtype_name: str = "bfloat16") -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, dtype_name)
    reps = 2 if quick else 5
    torch.manual_seed(0)
    results = {"device": torch.cuda.get_device_name() if device == "cuda" else f"cpu x{torch.get_num_threads()}",
               "dtype": dtype_name, "model": _model_case(dtype, reps, device),
               "layer_1.3b": _layer_case(dtype, max(2, reps // 2), device),
               "pipeline": _pipeline_case(max(2, reps // 2), device),
               "guidance": _guidance_case(max(2, reps // 2), device)}
    for group, base, what in (("model", "small-mha/sdpa", "MHA"), ("layer_1.3b", "layer/mha-sdpa", "MHA"),
                              ("pipeline", "tiny/warm-0", "cold-chunk"),
                              ("guidance", "tiny/g2-two-calls", "two-call")):
        if not results[group]:
            continue
        print(f"\n{group} ({results['device']}, {dtype_name}); ratio = {what} time / this time (>1 = faster)")
        for k, v in results[group].items():
            print(f"  {k:<22} {v * 1e3:9.1f} ms   ratio {results[group][base] / v:5.2f}")
    budget = {}
    for name in ("small-mla", "small-mha", "videomla-1.3b"):
        from .budget import cache_budget

        b = cache_budget(get_preset(name), dtype)
        budget[name] = {"cache_bytes": b.total_bytes, "dense_same_window_bytes": b.dense_total_bytes,
                        "compression": b.dense_total_bytes / b.total_bytes}
        print(f"  cache {name:<14} {b.total_bytes / 1e6:9.2f} MB vs dense {b.dense_total_bytes / 1e6:9.2f} MB"
              f"  ({b.dense_total_bytes / b.total_bytes:.1f}x smaller)")
    results["cache"] = budget
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", dest="json_path")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    a = ap.parse_args()
    main(a.quick, a.json_path, a.dtype)
