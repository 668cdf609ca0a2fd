"""Where the time of one stage-1 training step goes, part by part, on the device it runs on.

``train_bench.py`` says how long a step takes; this says why: rendering the clips (one core),
encoding them with the autoencoder, encoding new captions with MiniLM, the DiT's forward, its
backward and the optimizer step, each timed with the device synchronised around it, then the top
operators of one whole step by the PyTorch profiler. Written after the first GPU run (H200,
2026-12-04) took 0.33-0.37 s a step at batch 32 for a 7 M-parameter model, with rendering off the
critical path. Captions were then encoded one call each; training now encodes them in one padded
call (``MiniLMTextEncoder.encode_batched``), and the per-caption time is printed beside it.

    python scripts/train_profile.py --device cuda --batch 32 --steps 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--recipe", default="tiny")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    a = p.parse_args(argv)

    import torch

    from videomla_app.autoencoder import build_autoencoder
    from videomla_app.model import build_model
    from videomla_app.train.data import ClipRequest, render_batch
    from videomla_app.train.flow import flow_matching_loss
    from videomla_app.train.stages import dit_preset, recipe_text_encoder, recipe_with
    from videomla_app.train.loop import step_generator

    dev = torch.device(a.device)
    r = recipe_with(a.recipe, batch=a.batch)
    ae = build_autoencoder(r.ae, seed=0).to(dev).eval()
    text = recipe_text_encoder(r, dev)
    preset = dit_preset(r, "mha", ae, text)
    model = build_model(preset.model, seed=0).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    req = ClipRequest(r.frame_size, 0, a.batch, r.dit_clip_frames, ae.spatial_stride)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    encode = getattr(text, "encode_batched", text.encode)  # as LatentData does
    times: dict[str, list[float]] = {k: [] for k in ("render", "ae encode", "text encode", "forward", "backward",
                                                      "optimizer")}
    per_prompt: list[float] = []  # MiniLM's one call per caption (inference's way), for comparison

    def timed(name, fn):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        times[name].append(time.perf_counter() - t)
        return out

    def step(s: int, compare: bool = True):
        got = timed("render", lambda: render_batch(req, s))
        with torch.no_grad():
            x0 = timed("ae encode", lambda: ae.encode_clips(got.frames))
        states = timed("text encode", lambda: encode(got.captions).to(dev))
        if compare:  # not in the profiled step, whose table would count MiniLM twice
            sync()
            t = time.perf_counter()
            text.encode(got.captions)
            sync()
            per_prompt.append(time.perf_counter() - t)
        weight = 1.0 + r.object_weight * torch.from_numpy(got.cover)[:, :, None].to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = timed("forward", lambda: flow_matching_loss(model, x0, states, preset.cache, preset.sampler,
                                                               step_generator(0, s), weight=weight))
        opt.zero_grad(set_to_none=True)
        timed("backward", loss.backward)
        timed("optimizer", opt.step)

    for s in range(2):  # warm-up: allocator, autotuning, first launches
        step(10_000 + s)
    for v in [*times.values(), per_prompt]:
        v.clear()
    for s in range(a.steps):
        step(s)
    total = sum(statistics.median(v) for v in times.values())
    print(f"{a.recipe} stage-1 step on {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else dev}, "
          f"batch {a.batch}, median of {a.steps} steps")
    for k, v in times.items():
        m = statistics.median(v)
        print(f"  {k:12s} {m * 1000:8.1f} ms  {100 * m / total:5.1f} %")
    print(f"  {'sum':12s} {total * 1000:8.1f} ms")
    print(f"  (text encode one call per caption: {statistics.median(per_prompt) * 1000:.1f} ms)")

    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        step(99, compare=False)
        sync()
    key = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
