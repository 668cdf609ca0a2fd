"""The ``videomla`` command line (Typer + Rich). Commands only parse options and render results;
the work happens in the library modules.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import InputError, RunError
from .config import get_preset

app = typer.Typer(name="videomla", help="Minute-long video generation with a latent (MLA) KV cache.",
                  rich_markup_mode="rich", context_settings={"help_option_names": ["-h", "--help"]},
                  no_args_is_help=True, pretty_exceptions_enable=False)
out = Console()
err = Console(stderr=True, soft_wrap=True)


UsageError = InputError  # one line on stderr, exit code 2
RuntimeFailure = RunError  # one line on stderr, exit code 1

def friendly(fn):
    """Turn our errors into one line on stderr and an exit code (2 usage, 1 runtime)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (UsageError, RuntimeFailure) as e:
            err.print(f"[red]error:[/red] {e}", highlight=False)
            raise typer.Exit(2 if isinstance(e, UsageError) else 1) from None

    return wrapper


@app.command()
@friendly
def info(
    model: Annotated[str, typer.Option("--model", "-m", help="Model preset to describe.")] = "videomla-1.3b",
    dtype: Annotated[str, typer.Option(help="Cache dtype: bfloat16, float16 or float32.")] = "bfloat16",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show the model config and its KV-cache budget (MLA vs dense), read from allocated tensors.

    [b]Examples[/b]
      videomla info
      videomla info --model self-forcing-1.3b --json
    """
    import torch

    from .budget import cache_budget
    from .memory import fmt_bytes

    try:
        preset = get_preset(model)
    except KeyError as e:
        raise UsageError(e.args[0]) from None
    if dtype not in ("bfloat16", "float16", "float32"):
        raise UsageError(f"unknown dtype {dtype!r}: use bfloat16, float16 or float32")
    b = cache_budget(preset, getattr(torch, dtype))
    report = {"version": __version__, "python": platform.python_version(), "torch": torch.__version__,
              "cuda": torch.cuda.is_available(), "model": model, "description": preset.description,
              "config": {"dim": preset.model.dim, "heads": preset.model.n_heads, "layers": preset.model.n_layers,
                         "head_dim": preset.model.head_dim, "ffn_dim": preset.model.ffn_dim,
                         "attn": preset.model.attn,
                         "mla": None if preset.model.mla is None else preset.model.mla.__dict__,
                         "tokens_per_frame": preset.model.tokens_per_frame,
                         "steps": list(preset.sampler.steps), "shift": preset.sampler.shift},
              "cache": b.as_dict()}
    from .planner import info_summary

    report["memory_plan"], memory_rows = info_summary(preset, getattr(torch, dtype))
    if as_json:
        out.print_json(json.dumps(report))
        return
    t = Table(title=f"{model}: {preset.description}", show_header=True)
    t.add_column("cache budget")
    t.add_column("this model", justify="right")
    t.add_column("dense MHA, same window", justify="right")
    t.add_row("scalars / token / layer", str(b.scalars_per_token_per_layer), str(b.dense_scalars_per_token_per_layer))
    t.add_row(f"bytes / token / layer ({b.dtype})", str(b.bytes_per_token_per_layer),
              str(b.dense_bytes_per_token_per_layer))
    t.add_row(f"window: {b.sink_frames} sink + {b.window_frames} + {b.chunk_frames} chunk frames "
              f"= {b.cache_tokens:,} tokens, one layer",
              fmt_bytes(b.window_bytes_per_layer), fmt_bytes(b.window_bytes_per_layer * b.dense_total_bytes
                                                          // b.total_bytes))
    t.add_row(f"all {b.layers} layers", fmt_bytes(b.total_bytes), fmt_bytes(b.dense_total_bytes))
    t.add_row("reduction", f"{100 * b.reduction:.1f} %", f"{b.dense_total_bytes / b.total_bytes:.1f}x larger")
    out.print(t)
    out.print("The cache is a fixed window: its size does not grow with video length.")
    mt = Table(title="peak GPU memory of a run (estimate, batch 1)")
    mt.add_column("term")
    mt.add_column("bytes", justify="right")
    for row in memory_rows:
        mt.add_row(*row)
    out.print(mt)


@app.command()
def bench(
    quick: Annotated[bool, typer.Option(help="Fewer repetitions.")] = False,
    as_json: Annotated[str | None, typer.Option("--json", help="Also write the results to this JSON file.")] = None,
) -> None:
    """Time one chunk forward for MHA, MLA-naive, MLA-absorb and MLA-auto on this machine (ratios).

    [b]Example[/b]
      videomla bench --quick --json bench.json
    """
    from .bench import main as bench_main

    bench_main(quick=quick, json_path=as_json)


def main() -> None:
    """Console entry point: bad input becomes one line on stderr, never a traceback (unless --debug)."""
    from typer._click import exceptions as cx  # Typer vendors its own click

    debug = "--debug" in sys.argv or os.environ.get("VIDEOMLA_DEBUG") == "1"
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
    try:
        code = app(standalone_mode=False)
    except cx.UsageError as e:
        hint = f" (see 'videomla {e.ctx.info_name} --help')" if e.ctx and e.ctx.info_name != "videomla" else ""
        err.print(f"[red]error:[/red] {e.format_message()}{hint}", highlight=False)
        code = 2
    except cx.ClickException as e:
        err.print(f"[red]error:[/red] {e.format_message()}", highlight=False)
        code = e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted")
        code = 130
    except Exception as e:
        if debug:
            raise
        err.print(f"[red]error:[/red] {type(e).__name__}: {e} (run with --debug for details)", highlight=False)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


from . import cli_eval, cli_inspect, cli_models, cli_run, cli_train, ui  # noqa: E402,F401  (register their commands)
