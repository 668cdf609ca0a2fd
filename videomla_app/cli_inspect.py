"""``videomla inspect``: a checkpoint's tensors and how they map onto a model (nothing is loaded
into a model, nothing in the file runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .cli import UsageError, app, friendly, out


def best_preset(tensors) -> str:
    """The preset the checkpoint fills best (most tensors filled, then fewest problems)."""
    from .checkpoint import plan_checkpoint
    from .config import PRESETS

    def score(name):
        r = plan_checkpoint(tensors, PRESETS[name].model, name)
        return (r.mapped_keys, -r.problems)

    return max(PRESETS, key=score)


def _preset_name(model: str) -> str:
    from .config import PRESETS
    from .models import REGISTRY

    if model in PRESETS:
        return model
    if model in REGISTRY:
        return REGISTRY[model].preset
    raise UsageError(f"unknown model {model!r}; known: auto, {', '.join(sorted(PRESETS))}")


@app.command()
@friendly
def inspect(
    path: Annotated[Path, typer.Argument(help="Checkpoint: .pt/.pth (read weights-only), .safetensors, or a "
                                              "folder of .safetensors shards.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model preset to map onto; 'auto' picks the one "
                                                             "the checkpoint fills best.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (every tensor).")] = False,
    problems: Annotated[bool, typer.Option("--problems", help="Only list what would stop a load.")] = False,
) -> None:
    """Show a checkpoint's tensors (name, shape, dtype) and which of our keys each one fills.

    Blocks with the same layout are folded into one row ([b]blocks.{0-29}.…[/b]). A load is refused
    unless every tensor is used and every model tensor is filled.

    [b]Examples[/b]
      videomla inspect checkpoints/self_forcing_dmd.pt
      videomla inspect model.pt --model videomla-1.3b --json
    """
    from .checkpoint import plan_checkpoint, read_checkpoint
    from .config import get_preset

    name = None if model == "auto" else _preset_name(model)
    tensors = read_checkpoint(path)
    if name is None:
        name = best_preset(tensors)
    report = plan_checkpoint(tensors, get_preset(name).model, name)
    n_params = sum(v.numel() for v in tensors.values())
    if as_json:
        out.print_json(json.dumps({**report.as_dict(), "auto_model": model == "auto",
                                   "tensor_count": len(tensors), "parameters": n_params}))
        return
    out.print(f"{path}: {len(tensors)} tensors, {n_params:,} parameters; {report.source_line()}",
              highlight=False)
    out.print(f"mapped onto: {name}" + (" (best fit)" if model == "auto" else ""), highlight=False)
    out.print(report.table(problems_only=problems))
    for n in report.notes:
        out.print(f"note: {n}", highlight=False)
    verdict = "loads" if report.ok else "would be refused (--allow-missing loads the tensors that map)"
    out.print(f"{report.summary()}: {verdict}", highlight=False)
