"""``videomla train``: reproduce the embedded model, stage by stage, resumable across runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from .cli import RuntimeFailure, UsageError, app, err, friendly, out


@app.command()
@friendly
def train(
    stage: Annotated[str, typer.Argument(help="ae, mha, mla, twin, mla-cfg, twin-cfg, all, ship (export to assets/) or card (model card).")] = "all",
    recipe: Annotated[str, typer.Option(help="Recipe: tiny (the CPU run), tiny-gpu (its budget split for minutes on a GPU), "
                                             "tiny-t4-gpu (4 video frames per latent frame), tiny-t4-anchor-gpu (that, with "
                                             "the anchored first chunk, weighted 3x), tiny-t4-cpu (more MLA fine-tune and "
                                             "distillation on the CPU, from a bank of clips), "
                                             "tiny-t4-cpu-anchor (the CPU fine-tune with the "
                                             "anchored first chunk), tiny-t4-cpu-pairs (that, with a "
                                             "left/right contrast pair in each batch), tiny-t4-cpu-counts "
                                             "(that, with count pairs too), tiny-t4-cpu-motions (that, "
                                             "with pairs over every moving motion), tiny-t4-cpu-own750 (that, "
                                             "half the clips on the model's own redrawn frames as context), "
                                             "tiny-t4-cpu-own750-all (every clip on them), "
                                             "tiny-t4-cpu-own750-chain (that, each chunk's context redrawn "
                                             "from the chunks redrawn before it), "
                                             "tiny-t4-cpu-own750-chain12 (that, on 12-frame clips; the "
                                             "shipped pair's last), tiny-t4-cpu-own750-chain15 (on 15-frame "
                                             "clips, not shipped), tiny-t4-cpu-own750-hover (three times the "
                                             "hovering clips), tiny-t4-cpu-own750-orange (orange, pink and "
                                             "yellow clips more often) or smoke (seconds).")] = "tiny",
    out_dir: Annotated[Path, typer.Option("--out", help="Working folder for checkpoints and weights.")] = Path("runs/tiny"),
    resume: Annotated[bool, typer.Option(help="Continue from the checkpoints in --out.")] = False,
    max_minutes: Annotated[float | None, typer.Option(help="Stop (and checkpoint) after this long.")] = None,
    budget_minutes: Annotated[float | None, typer.Option(
        help="Finish in about this long: every stage times its first steps and trains as many as fit "
             "in its share (instead of the recipe's step counts).")] = None,
    steps: Annotated[int | None, typer.Option(help="Override the number of steps of every stage.")] = None,
    eval_json: Annotated[Path | None, typer.Option("--eval", help="card: a `videomla eval --json` file to include.")] = None,
    notes: Annotated[Path | None, typer.Option("--notes", help="card: a markdown file of notes on the run.")] = None,
    command: Annotated[str | None, typer.Option(
        help="card: the command that trained the run (default: the recipe's CPU commands).")] = None,
    device: Annotated[str, typer.Option(help="auto (a CUDA GPU when there is one), cpu or cuda.")] = "auto",
    batch: Annotated[int | None, typer.Option(help="Override the batch size of every stage (e.g. 32 on a GPU).")] = None,
    workers: Annotated[int | None, typer.Option(help="Processes that render clips ahead of the step "
                                                     "(default: 0 on the CPU, up to 8 on a GPU).")] = None,
    mha_from: Annotated[Path | None, typer.Option(
        help="mha/all: start stage 1 from these dense weights (a run's mha.safetensors) instead of random ones.")] = None,
    mla_from: Annotated[Path | None, typer.Option(
        help="mla: go on from these MLA weights (e.g. assets/tiny/model.safetensors) instead of converting "
             "the stage-1 weights.")] = None,
    twin_from: Annotated[Path | None, typer.Option(
        help="twin: go on from these dense weights (e.g. assets/tiny-mha/model.safetensors) instead of the "
             "stage-1 weights.")] = None,
    ae_from: Annotated[Path | None, typer.Option(
        help="ae/all: start stage 0 from this autoencoder (restrided to the recipe's temporal stride).")] = None,
) -> None:
    """Train the embedded model on the procedural world (bf16 autocast, seeded, resumable).

    [b]Examples[/b]
      videomla train all --out runs/tiny --max-minutes 110        # then again with --resume
      videomla train ae --recipe smoke --out /tmp/smoke
      videomla train all --out runs/gpu --device cuda --batch 32      # a GPU: clips rendered by workers
      videomla train all --out runs/gpu --device cuda --batch 32 --budget-minutes 8   # every stage, 8 min
      videomla train all --recipe tiny-gpu --out runs/gpu --device cuda --batch 32 --budget-minutes 8 \
          --mha-from runs/tiny/mha.safetensors                     # stage 1 goes on from CPU weights
      videomla train all --recipe tiny-t4-gpu --out runs/t4 --device cuda --batch 32 --budget-minutes 8 \
          --ae-from assets/ae.safetensors --mha-from runs/tiny/mha.safetensors   # 4x temporal stride
      videomla train mla --recipe tiny-t4-cpu --out runs/cpu --mla-from assets/tiny/model.safetensors
                                                    # more stage 2 on the CPU (cp assets/ae.safetensors runs/cpu/ first)
      videomla train ship --out runs/tiny                          # copy the weights into assets/
      videomla train card --out runs/tiny --eval eval.json         # assets/MODEL_CARD.md + loss curve
      videomla train card --out gpu_out --eval gpu_out/eval.json --command "bash scripts/gpu_train.sh"
    """
    from .autoencoder import CausalVideoAE
    from .models import ModelUnavailable, assets_dir, resolve_device
    from .train.loop import CheckpointError, usable_cores
    from .train.stages import (NEEDS, RECIPES, STAGES, StartWeightsError, recipe_text_encoder, recipe_with,
                               train_ae, train_dit)

    if stage not in (*STAGES, "all", "ship", "card"):
        raise UsageError(f"unknown stage {stage!r}: use {', '.join(STAGES)}, all, ship or card")
    if recipe not in RECIPES:
        raise UsageError(f"unknown recipe {recipe!r}: use {', '.join(RECIPES)}")
    for flag, value in (("--steps", steps), ("--batch", batch)):
        if value is not None and not 1 <= value <= 1_000_000:
            raise UsageError(f"{flag} must be between 1 and 1000000, got {value}")
    if max_minutes is not None and not 0 < max_minutes <= 100_000:
        raise UsageError(f"--max-minutes must be more than 0 and at most 100000, got {max_minutes:g}")
    if budget_minutes is not None:
        if not 0.1 <= budget_minutes <= 100_000:
            raise UsageError(f"--budget-minutes must be between 0.1 and 100000, got {budget_minutes:g}")
        for flag, value in (("--steps", steps), ("--max-minutes", max_minutes)):
            if value is not None:
                raise UsageError(f"--budget-minutes sets the steps and the time: drop {flag}")
        max_minutes = budget_minutes * 1.1  # a hard stop with room for steps slower than timed
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file, not a folder")
    if workers is not None and not 0 <= workers <= 64:
        raise UsageError(f"--workers must be between 0 and 64, got {workers}")
    # flag, its weights, the stages that use it (`all` starts stages 2 and 3 from stage 1: no --mla-from
    # or --twin-from)
    for flag, path, used_by in (("--mha-from", mha_from, ("mha", "all")), ("--ae-from", ae_from, ("ae", "all")),
                                ("--mla-from", mla_from, ("mla",)), ("--twin-from", twin_from, ("twin",))):
        if path is not None:
            if stage not in used_by:
                raise UsageError(f"{flag} starts stage {used_by[0]}; stage {stage} does not use it")
            if not path.is_file():
                raise UsageError(f"{flag} {path}: no such file")
    overrides = {k: v for k, v in (("steps", steps), ("batch", batch)) if v is not None}
    r = recipe_with(recipe, **overrides) if overrides else RECIPES[recipe]
    if stage == "card":
        import json

        from .train.card import write_card

        if eval_json is not None and not eval_json.is_file():
            raise UsageError(f"--eval {eval_json}: no such file")
        if notes is not None and not notes.is_file():
            raise UsageError(f"--notes {notes}: no such file")
        try:
            report = json.loads(eval_json.read_text()) if eval_json is not None else None
        except (ValueError, UnicodeDecodeError):
            raise UsageError(f"--eval {eval_json}: not a `videomla eval --json` report (not JSON)") from None
        if report is not None and not (isinstance(report, dict) and {"results", "prompts"} <= report.keys()):
            raise UsageError(f"--eval {eval_json}: not a `videomla eval --json` report (no results)")
        text = notes.read_text() if notes is not None else None
        try:
            card = write_card(out_dir, assets_dir(), r, report, command=command, notes=text)
        except FileNotFoundError as e:
            raise UsageError(str(e)) from None
        except CheckpointError as e:
            raise RuntimeFailure(str(e)) from None
        out.print(f"wrote {card}")
        return
    if stage == "ship":
        from .train.ship import ship

        try:
            written = ship(out_dir, assets_dir(), r, recipe_text_encoder(r))
        except FileNotFoundError as e:
            raise UsageError(str(e)) from None
        except CheckpointError as e:  # the weights are there; their record of the steps that ran is not
            raise RuntimeFailure(f"{e}; ship reads the steps each stage ran from it, so nothing was shipped") from None
        for f in written:
            out.print(f"wrote {f}")
        out.print("the new weights carry no per-motion measurement, so prompts get no motion warning: "
                  "videomla eval --prompt-set motions --seconds 8 --record", highlight=False)
        return
    try:
        dev = resolve_device(device)
    except (ValueError, ModelUnavailable) as e:  # an unknown device, or cuda without a GPU
        raise UsageError(str(e)) from None
    if workers is None:
        workers = 0 if dev.type == "cpu" else max(0, min(8, usable_cores() - 2))
    todo = STAGES if stage == "all" else (stage,)
    if r.ae_frozen_encoder and ae_from is None and "ae" in todo and not (stage == "all" and (out_dir / "ae.safetensors").is_file()):
        # also on --resume: the start autoencoder's latent statistics are not in the checkpoint
        raise UsageError(f"recipe {recipe!r} trains only the decoder of an autoencoder: give it with --ae-from "
                         "(e.g. assets/ae.safetensors)")
    if stage != "all":
        rflag = "" if recipe == "tiny" else f" --recipe {recipe}"
        start = {"mla": mla_from, "twin": twin_from}.get(stage)  # weights stage 2 or 3 goes on from
        for need in NEEDS.get(stage, ()):
            if need == "mha" and start is not None:
                continue  # stage 2 or 3 starts from --mla-from / --twin-from, not from the stage-1 weights
            if not (out_dir / f"{need}.safetensors").is_file():
                if need == "ae" and start is not None:
                    # the weights went on from were trained on one autoencoder's latents: a new one
                    # would not fit them, so point at that one rather than at `train ae`
                    raise UsageError(
                        f"stage {stage} needs {out_dir / 'ae.safetensors'}: copy there the autoencoder "
                        f"{start} was trained with (for the shipped weights: mkdir -p {out_dir} && "
                        f"cp {assets_dir() / 'ae.safetensors'} {out_dir}/)")
                raise UsageError(f"stage {stage} needs {out_dir / f'{need}.safetensors'}, which stage {need} "
                                 f"writes: run 'videomla train {need}{rflag} --out {out_dir}' first (or 'train all')")
    if not resume:
        # Starting over would overwrite the checkpoint at its first save: hours of a 2-core run gone
        # because --resume was forgotten. (train all skips finished stages, so those are safe.)
        for s in todo:
            ckpt = out_dir / f"{s}.ckpt.pt"
            done = (out_dir / f"{s}.safetensors").exists()
            if ckpt.exists() and not (stage == "all" and done):
                if done:
                    raise UsageError(f"stage {s} is finished in {out_dir}: delete {ckpt.name} and {s}.safetensors "
                                     "there to train it again")
                raise UsageError(f"{ckpt} exists: add --resume to continue stage {s}, or delete it to train "
                                 "that stage from the start")
    out_dir.mkdir(parents=True, exist_ok=True)
    ae, text, t0 = None, None, time.monotonic()

    def left() -> float | None:  # --max-minutes bounds the whole command, not each stage
        return None if max_minutes is None else max(0.0, max_minutes - (time.monotonic() - t0) / 60)

    def weights(s: str) -> Path:
        return out_dir / f"{s}.safetensors"

    def deadline(s: str) -> float | None:
        """--budget-minutes: when this stage must end (a time.monotonic() value), from now, before its
        model and data are set up, so set-up counts: its part of the time left, by the recipe's
        shares among the stages still to train (a stage that ends early leaves its time to the next)."""
        if budget_minutes is None:
            return None
        rest = [s, *(x for x in todo[todo.index(s) + 1:] if not weights(x).exists())]
        now = time.monotonic()
        seconds = max(0.0, budget_minutes * 60 - (now - t0))
        return now + seconds * r.budget_share(s) / sum(r.budget_share(x) for x in rest)

    def unfinished(msg: str) -> None:
        """A stage stopped before its end: fine under --max-minutes (resume later), a failure when
        --budget-minutes promised the whole run (exit 3, so a script does not ship a partial run)."""
        if budget_minutes is None:
            out.print(f"{msg}: run again with --resume")
            return
        err.print(f"{msg}: the {budget_minutes:g}-minute budget ran out; run again with --resume")
        raise typer.Exit(3)

    s = todo[0]
    try:
        for s in todo:
            out.print(f"[bold]stage {s}[/bold] ({r.name}) -> {out_dir}")
            if s == "ae":
                if weights("ae").exists() and stage == "all":
                    continue
                until = deadline(s)
                ae = train_ae(r, out_dir, resume, left(), device=dev, workers=workers, fit_until=until,
                              ae_from=ae_from)
                if not weights("ae").exists():
                    return unfinished("stopped before the end of stage ae")
                continue
            if weights(s).exists() and stage == "all":
                continue
            until = deadline(s)
            if ae is None:
                ae = CausalVideoAE.load(out_dir / "ae.safetensors", device=dev)
            if text is None:  # loaded once, by the first stage that trains
                text = recipe_text_encoder(r, dev)
            _, trainer = train_dit(s, r, out_dir, ae, text, resume, left(), workers=workers, fit_until=until,
                                   mha_from=mha_from, mla_from=mla_from, twin_from=twin_from)
            if not weights(s).exists():
                return unfinished(f"stopped in stage {s} at step {trainer.step}")
    except CheckpointError as e:
        raise RuntimeFailure(str(e)) from None
    except StartWeightsError as e:
        raise UsageError(str(e)) from None
    except KeyboardInterrupt:  # the trainer has checkpointed its last finished step
        err.print(f"interrupted in stage {s}: its last finished step is saved; run again with --resume")
        raise typer.Exit(130) from None
    out.print("done")
