"""Training throughput of the embedded model's DiT stage, per render-worker count, in one process.

Runs stage 1 (dense twin, teacher-forcing flow matching) of a recipe from untrained weights (speed
does not depend on the weights) for ``--steps`` steps per configuration, through the same
``train_dit`` path as ``videomla train``, and prints seconds per step, clips per second and the
ratio against the first configuration (measured in the same process, because these machines are
noisy). The first ``--warmup`` steps of each run (worker start-up, first caption encodes, CUDA
autotuning) are left out.

Why: on a GPU the DiT step should be far shorter than rendering its clips on one core, and this
says by how much the render workers close that gap and how many steps a time budget buys.

    python scripts/train_bench.py --device cuda --batch 32 --workers 0,4,8 --json train_bench.json
    python scripts/train_bench.py --device cpu --recipe smoke --steps 4 --warmup 1 --workers 0,1
    python scripts/train_bench.py --device cuda --batch 32 --workers 0,8,14 --best-to workers.txt
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


def measure(recipe_name: str, device: str, batch: int | None, steps: int, warmup: int, workers: int) -> dict:
    import torch

    from videomla_app.autoencoder import build_autoencoder
    from videomla_app.train.stages import recipe_text_encoder, recipe_with, train_dit

    over = {"steps": steps + warmup, "ckpt_every": 10**9}
    if batch is not None:
        over["batch"] = batch
    r = recipe_with(recipe_name, **over)
    ae = build_autoencoder(r.ae, seed=0).to(device)
    text = recipe_text_encoder(r, device)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        _, trainer = train_dit("mha", r, Path(tmp), ae, text, quiet=True, workers=workers)
        wall = time.perf_counter() - t0
    if torch.cuda.is_available() and device == "cuda":
        torch.cuda.synchronize()
    log = trainer.log
    timed = log[warmup:]
    start = log[warmup - 1]["elapsed_s"] if warmup else 0.0
    per_step = (timed[-1]["elapsed_s"] - start) / len(timed)
    b = r.mha_train.batch
    return {"workers": workers, "batch": b, "steps_timed": len(timed), "s_per_step": per_step,
            "clips_per_s": b / per_step, "wall_s": wall, "last_loss": log[-1]["loss"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--recipe", default="tiny", help="tiny (the shipped sizes) or smoke (seconds)")
    p.add_argument("--batch", type=int, default=None, help="clips per step (default: the recipe's)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    p.add_argument("--workers", default="0,8", help="comma-separated render-worker counts; the first is the baseline")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--best-to", type=Path, default=None,
                   help="write the fastest worker count here (scripts/gpu_train.sh trains with it)")
    a = p.parse_args(argv)

    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA GPU is available", file=sys.stderr)
        return 2
    try:
        counts = [int(w) for w in a.workers.split(",")]
    except ValueError:
        print(f"error: --workers must be comma-separated integers, got {a.workers!r}", file=sys.stderr)
        return 2
    if a.steps < 1 or a.warmup < 0 or any(w < 0 for w in counts) or (a.batch is not None and a.batch < 1):
        print("error: --steps and --batch must be >= 1, --warmup and --workers >= 0", file=sys.stderr)
        return 2
    card = torch.cuda.get_device_name() if device == "cuda" else f"{platform.processor() or 'cpu'} x{os.cpu_count()}"
    rows = [measure(a.recipe, device, a.batch, a.steps, a.warmup, w) for w in counts]
    base = rows[0]["s_per_step"]
    print(f"{a.recipe} stage 1 on {card} ({device}), batch {rows[0]['batch']}, {a.steps} timed steps each")
    print(f"{'workers':>8} {'s/step':>8} {'clips/s':>8} {'vs first':>9}")
    for r in rows:
        r["ratio_vs_first"] = base / r["s_per_step"]
        print(f"{r['workers']:>8} {r['s_per_step']:>8.3f} {r['clips_per_s']:>8.1f} {r['ratio_vs_first']:>8.2f}x")
    if a.json:
        a.json.write_text(json.dumps({"device": device, "card": card, "recipe": a.recipe, "rows": rows}, indent=2))
    if a.best_to:
        best = fastest(rows)
        print(f"fastest: {best} render workers")
        a.best_to.write_text(f"{best}\n")
    return 0


def fastest(rows: list[dict]) -> int:
    """The worker count with the shortest step; on a tie (within 2 %) the fewer workers, which
    leave cores to the step itself and start faster."""
    best = min(r["s_per_step"] for r in rows)
    return min(r["workers"] for r in rows if r["s_per_step"] <= 1.02 * best)


if __name__ == "__main__":
    sys.exit(main())
