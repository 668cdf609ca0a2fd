"""GPU check: VideoMLA vs the dense Self-Forcing baseline at full size, random weights, no downloads.

For each model of a pair (default ``videomla-1.3b,self-forcing-1.3b``), through the app's own
``StreamingPipeline`` and ``CausalDiT`` in bf16:

1. a 30-second rollout (480 pixel frames at 16 fps = 121 latent frames = 41 chunks of 3) at
   batch 1: chunk latency (CUDA events, chunks after the window is full), peak memory
   (``torch.cuda.max_memory_allocated``) and allocated memory after every chunk, whose drift
   shows the memory is flat with video length;
2. the largest batch whose chunk forward fits (doubling, then bisection to ~3 %, catching
   ``torch.cuda.OutOfMemoryError``; time-capped), against the memory planner's prediction;
3. (CUDA, diffusers installed) the Wan2.1 VAE at 480x832 with random weights: streaming decode
   peak and decoder state against the planner's constants, and chunked == whole-clip decode.

Prints a table with the MLA / dense ratios and writes everything with ``--json PATH``. Budget:
about 3-5 minutes on one H100/H200 (``--time-budget`` caps it). Without a CUDA GPU it says so and
exits 0; ``--device cpu --preset-pair test-mla,test-mha --seconds 4`` runs the same logic on the
tiny presets (the test suite does).

    python scripts/gpu_check.py --json gpu_check.json
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from videomla_app.cache import make_cache  # noqa: E402
from videomla_app.config import Preset, get_preset  # noqa: E402
from videomla_app.encoders import ToyTextEncoder  # noqa: E402
from videomla_app.model import CausalDiT  # noqa: E402
from videomla_app.pipeline import StreamingPipeline  # noqa: E402
from videomla_app.planner import max_batch, plan_memory  # noqa: E402

NO_GPU = ("gpu_check needs a CUDA GPU and none was found. For a dry run of the same logic on tiny models: "
          "python scripts/gpu_check.py --device cpu --preset-pair test-mla,test-mha --seconds 4")
FLAT_BYTES = 1 << 20  # allocated memory may move by this much over a rollout and still be "flat"


class NullVAE:
    """Decodes nothing: the check measures the DiT, the cache and the pipeline loop."""

    def __init__(self, preset: Preset) -> None:
        self.temporal_stride, self.spatial_stride = preset.video.temporal_stride, preset.video.spatial_stride
        self.latent_channels = preset.model.latent_channels
        self.hw = (preset.video.height, preset.video.width)

    def encode(self, frames):  # pragma: no cover - the check never encodes
        raise NotImplementedError

    def decoder(self) -> "NullVAE":
        return self

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        return np.zeros((0, *self.hw, 3), np.uint8)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def build_model(preset: Preset, device: torch.device, dtype: torch.dtype) -> CausalDiT:
    """Random weights (seed 0) initialised on the device itself: no minute-long CPU init of 1.3 B params."""
    torch.manual_seed(0)
    with torch.device(device):
        model = CausalDiT(preset.model)
    return model.to(dtype).eval().requires_grad_(False)


def pipeline(preset: Preset, model: CausalDiT, device: torch.device, dtype: torch.dtype,
             batch: int = 1) -> StreamingPipeline:
    m = preset.model
    return StreamingPipeline(preset, model, ToyTextEncoder(m.text_dim, preset.text_len), NullVAE(preset),
                             device=device, dtype=dtype, batch=batch)


def rollout(preset: Preset, model: CausalDiT, device: torch.device, dtype: torch.dtype,
            seconds: float) -> dict:
    """Batch 1 for ``seconds`` of video: per-chunk latency and memory, peak memory."""
    pipe = pipeline(preset, model, device, dtype)
    n = pipe.chunks_for_seconds(seconds)
    full_after = math.ceil(preset.cache.capacity_frames / preset.cache.chunk_frames)  # window full from here
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    base = _allocated(device)
    lat, mem = [], []
    it = pipe.stream("a red ball bouncing on a wooden floor", n, seed=0)
    for _ in range(n):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            ev = next(it)
            end.record()
            end.synchronize()
            lat.append(start.elapsed_time(end) / 1e3)
            mem.append(torch.cuda.memory_allocated(device))
        else:
            t0 = time.perf_counter()
            ev = next(it)
            lat.append(time.perf_counter() - t0)
            mem.append(ev.memory.rss_bytes if ev.memory else 0)
    steady = lat[max(full_after, 2):] or lat[-1:]
    after_first = mem[1:] or mem
    drift = max(after_first) - min(after_first)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    px_per_chunk = preset.cache.chunk_frames * max(1, preset.video.temporal_stride)
    return {"seconds": seconds, "chunks": n, "latency_s": lat, "memory_bytes": mem,
            "memory_kind": "cuda_allocated" if device.type == "cuda" else "process_rss",
            "chunk_latency_ms": {"median": 1e3 * statistics.median(steady), "min": 1e3 * min(steady),
                                 "max": 1e3 * max(steady), "n": len(steady)},
            "px_fps": px_per_chunk / statistics.median(steady),
            "peak_bytes": peak, "run_bytes": None if peak is None else peak - base,
            "drift_bytes": drift, "flat": drift <= (FLAT_BYTES if device.type == "cuda" else 64 * FLAT_BYTES),
            "cache_bytes": ev.memory.cache_bytes if ev.memory else None}


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower() or "allocate" in str(e)


def forward_fits(preset: Preset, model: CausalDiT, device: torch.device, dtype: torch.dtype,
                 batch: int) -> tuple[bool, str]:
    """One chunk forward at ``batch`` against a full window (the peak of a chunk: every forward of
    a chunk has these shapes). Returns (fits, why not)."""
    m, c = preset.model, preset.cache
    try:
        cache = make_cache(m, c, batch, device, dtype)
        while cache.committed < c.capacity_frames:  # bookkeeping only: the next chunk reads a full window
            cache.commit(cache.plan(cache.committed, c.chunk_frames))
        step = cache.plan(cache.committed, c.chunk_frames)
        with torch.no_grad():
            ctx = torch.randn(batch, preset.text_len, m.text_dim, device=device, dtype=dtype)
            text = model.encode_text(ctx)
            x = torch.randn(batch, c.chunk_frames, m.latent_channels, *m.latent_hw, device=device,
                            dtype=dtype)
            model(x, 500.0, text, cache, step)
        _sync(device)
        return True, ""
    except (torch.OutOfMemoryError, RuntimeError) as e:
        return False, ("oom" if _is_oom(e) else f"error: {type(e).__name__}: {str(e)[:200]}")


def largest_batch(preset: Preset, model: CausalDiT, device: torch.device, dtype: torch.dtype, *,
                  cap: int, deadline: float, fits=forward_fits) -> dict:
    """Double until a batch fails (or ``cap``), then bisect to ~3 %; stops at ``deadline`` (perf_counter)."""
    trials: list[list] = []

    def trial(b: int) -> bool:
        t0 = time.perf_counter()
        ok, why = fits(preset, model, device, dtype, b)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        trials.append([b, ok, round(time.perf_counter() - t0, 3), why])
        return ok

    lo, hi, b = 0, None, 1
    while b <= cap and time.perf_counter() < deadline:
        if not trial(b):
            hi = b
            break
        lo, b = b, b * 2
    timed_out = False
    if hi is not None:
        while hi - lo > max(1, lo // 32):
            if time.perf_counter() >= deadline:
                timed_out = True
                break
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if trial(mid) else (lo, mid)
    else:
        timed_out = b <= cap
    return {"value": lo, "first_failure": hi, "capped": hi is None and not timed_out, "timed_out": timed_out,
            "errors": [t for t in trials if t[3] not in ("", "oom")], "trials": trials}


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0


def vae_check(device: torch.device, dtype: torch.dtype, height: int = 480, width: int = 832,
              config: dict | None = None) -> dict:
    """Wan VAE (random weights; ``config`` None = Wan2.1 at full size): streaming decode memory vs
    the planner's constants, and chunked (1 + 3 + 3 latent frames) == whole-clip decode."""
    from videomla_app.planner import WAN_VAE_DECODE_SCALARS_PER_PIXEL, WAN_VAE_STATE_SCALARS_PER_PIXEL
    from videomla_app.wan_vae import WanVAE

    vae = WanVAE.from_config(config, seed=0, device=device, dtype=dtype)
    s = vae.spatial_stride
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(1, 7, vae.latent_channels, height // s, width // s, generator=g)
    dec, calls, parts = vae.decoder(), [], []
    for a, b in ((0, 1), (1, 4), (4, 7)):
        _reset_peak(device)
        before = _allocated(device)
        t0 = time.perf_counter()
        parts.append(dec.decode_tensor(lat[:, a:b]))
        _sync(device)
        calls.append({"latent_frames": b - a, "seconds": time.perf_counter() - t0,
                      "peak_new_bytes": max(0, _peak(device) - before)})
    state = sum(t.numel() * t.element_size() for t in dec.feat if isinstance(t, torch.Tensor))
    with torch.no_grad():
        whole = vae.vae.decode(vae.denormalize(lat.to(device)).to(dtype)).sample
    diff = (torch.cat(parts, 2).float() - whole.float()).abs().max().item()
    e, px = torch.empty((), dtype=dtype).element_size(), height * width
    return {"size": [height, width], "calls": calls, "state_bytes": state,
            "planned_state_bytes": WAN_VAE_STATE_SCALARS_PER_PIXEL * px * e,
            "planned_decode_bytes": WAN_VAE_DECODE_SCALARS_PER_PIXEL * px * e,
            "pixel_frames": sum(p.shape[2] for p in parts), "max_abs_diff_chunked_vs_whole": diff}


def check_model(name: str, device: torch.device, dtype: torch.dtype, args, deadline: float) -> dict:
    preset = get_preset(name)
    t0 = time.perf_counter()
    model = build_model(preset, device, dtype)
    _sync(device)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    out: dict = {"attn": preset.model.attn, "build_s": time.perf_counter() - t0, "weights_bytes": weights,
                 "params": sum(p.numel() for p in model.parameters())}
    out["rollout"] = rollout(preset, model, device, dtype, args.seconds)
    plan = plan_memory(preset, dtype=dtype, device=str(device), text_encoder="toy", vae="toy")
    out["planned_peak_bytes"] = plan.peak - plan.margin
    out["planned_activations_bytes"] = plan.dit_activations
    run = out["rollout"]["run_bytes"]
    if run is not None:  # measured transient = peak of the run - (what stays allocated during it)
        out["measured_activations_bytes"] = run - plan.kv_cache - plan.text_kv_cache
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()  # cached blocks would not count as free
        free = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_allocated(device)
        out["planned_max_batch"] = max_batch(preset, free, dtype=dtype, text_encoder="toy", vae="toy")
    out["max_batch"] = largest_batch(preset, model, device, dtype, cap=args.batch_cap, deadline=deadline)
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def _table(results: dict) -> str:
    names = list(results["models"])
    rows = [("attention", lambda r: r["attn"]),
            ("chunk latency, median ms", lambda r: f"{r['rollout']['chunk_latency_ms']['median']:.1f}"),
            ("pixel frames / s", lambda r: f"{r['rollout']['px_fps']:.1f}"),
            ("peak memory, batch 1", lambda r: _fmt(r["rollout"]["peak_bytes"])),
            ("planned (no encoders)", lambda r: _fmt(r["planned_peak_bytes"])),
            ("KV cache", lambda r: _fmt(r["rollout"]["cache_bytes"])),
            (f"memory drift over {results['seconds']:g} s", lambda r: _fmt(r["rollout"]["drift_bytes"])
             + (" (flat)" if r["rollout"]["flat"] else " (NOT flat)")),
            ("largest batch", lambda r: f"{r['max_batch']['value']}"
             + (" (cap)" if r["max_batch"]["capped"] else "")
             + (" (time cap)" if r["max_batch"]["timed_out"] else "")),
            ("planned largest batch", lambda r: str(r.get("planned_max_batch", "-")))]
    w0 = max(len(r[0]) for r in rows)
    lines = [f"{'':<{w0}}  " + "  ".join(f"{n:>20}" for n in names)]
    for label, f in rows:
        lines.append(f"{label:<{w0}}  " + "  ".join(f"{f(results['models'][n]):>20}" for n in names))
    for k, v in results["ratios"].items():
        lines.append(f"{k}: {v:.2f}" if isinstance(v, float) else f"{k}: {v}")
    return "\n".join(lines)


def _fmt(n) -> str:
    if n is None:
        return "-"
    from videomla_app.memory import fmt_bytes

    return fmt_bytes(n)


def run_check(args) -> dict:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    t_start = time.perf_counter()
    deadline_all = t_start + args.time_budget
    names = args.preset_pair.split(",")
    cpu = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    results: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
                     "dtype": args.dtype, "torch": torch.__version__, "seconds": args.seconds, "models": {}}
    for i, name in enumerate(names):  # each model gets its share of what is left for its batch search
        share = (deadline_all - time.perf_counter()) / (len(names) - i) * 0.6
        results["models"][name] = check_model(name, device, dtype, args, time.perf_counter() + share)
    m = [results["models"][n] for n in names]
    if len(m) == 2:
        a, b = m
        results["ratios"] = {
            "latency_speedup (2nd / 1st median)": b["rollout"]["chunk_latency_ms"]["median"]
            / a["rollout"]["chunk_latency_ms"]["median"],
            "batch_ratio (1st / 2nd)": a["max_batch"]["value"] / max(1, b["max_batch"]["value"])}
        pa, pb = a["rollout"]["peak_bytes"], b["rollout"]["peak_bytes"]
        if pa and pb:
            results["ratios"]["peak_memory_ratio (2nd / 1st)"] = pb / pa
    else:
        results["ratios"] = {}
    if device.type == "cuda" and not args.no_vae:
        if importlib.util.find_spec("diffusers") is None:
            results["vae"] = {"skipped": "diffusers is not installed (pip install -e '.[wan]')"}
        elif time.perf_counter() > deadline_all:
            results["vae"] = {"skipped": "time budget spent"}
        else:
            results["vae"] = vae_check(device, dtype)
    results["wall_s"] = time.perf_counter() - t_start
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--preset-pair", default="videomla-1.3b,self-forcing-1.3b",
                    help="comma-separated presets; the first is compared against the second")
    ap.add_argument("--seconds", type=float, default=30.0, help="rollout length (video seconds)")
    ap.add_argument("--batch-cap", type=int, default=None, help="largest batch tried (default 1024, CPU 4)")
    ap.add_argument("--time-budget", type=float, default=420.0, help="seconds for the whole check")
    ap.add_argument("--no-vae", action="store_true", help="skip the Wan VAE part")
    ap.add_argument("--json", dest="json_path", help="write the results to this JSON file")
    a = ap.parse_args(argv)
    if a.batch_cap is None:
        a.batch_cap = 1024 if a.device == "cuda" else 4
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(NO_GPU)
        return 0
    results = run_check(args)
    print(f"gpu_check on {results['device']} ({results['dtype']}, torch {results['torch']}), "
          f"{results['wall_s']:.0f} s")
    print(_table(results))
    if "vae" in results and "calls" in results["vae"]:
        v = results["vae"]
        peak = max(c["peak_new_bytes"] for c in v["calls"])
        print(f"Wan VAE {v['size'][0]}x{v['size'][1]}: state {_fmt(v['state_bytes'])} (planned "
              f"{_fmt(v['planned_state_bytes'])}), decode peak {_fmt(peak)} "
              f"(planned {_fmt(v['planned_decode_bytes'])}), chunked vs whole max diff "
              f"{v['max_abs_diff_chunked_vs_whole']:.3g}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
