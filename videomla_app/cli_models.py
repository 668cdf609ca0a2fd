"""``videomla models``: list the registered models, download the full-size ones from the Hugging Face
hub, remove them, and print where their files are. The work happens in :mod:`videomla_app.hub`."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Column, Table

from . import models as registry
from .cli import RuntimeFailure, UsageError, app, err, friendly, out

models_app = typer.Typer(help="List, download, remove and locate models ('videomla models' alone lists them).",
                         rich_markup_mode="rich")
app.add_typer(models_app, name="models")


@models_app.callback(invoke_without_command=True)
def models(ctx: typer.Context) -> None:
    """List, download, remove and locate models. Without a command: list them.

    Downloads go to the Hugging Face cache (HF_HOME, HF_HUB_CACHE); HF_ENDPOINT, HF_HUB_OFFLINE and
    HF_TOKEN (or 'hf auth login') apply as for any Hugging Face tool.

    [b]Examples[/b]
      videomla models
      videomla models download videomla-1.3b
      videomla models path videomla-1.3b --role vae
      videomla models remove self-forcing-1.3b
    """
    if ctx.invoked_subcommand is None:
        list_models()


def _describe(e) -> dict:
    """One model's row: what it is and what of it is on this machine."""
    from . import hub
    from .config import get_preset
    from .memory import fmt_bytes

    d = {"name": e.name, "tier": e.tier, "attention": get_preset(e.preset).model.attn,
         "description": e.description, "licence": e.licence, "min_gpu_gb": e.min_gpu_gb}
    if e.tier == "dev":
        return d | {"status": "random weights", "size": "-"}
    if e.tier == "embedded":
        folder = registry.assets_dir() / e.name
        if not (folder / "model.safetensors").exists():
            return d | {"status": "not shipped yet", "size": "-"}
        return d | {"status": "shipped", "size": fmt_bytes(sum(p.stat().st_size for p in folder.iterdir()))}
    n, missing = len(e.files), len(hub.missing_files(e))
    on_disk = hub.bytes_on_disk(e)
    total, exact, complete = hub.expected_bytes(e)
    status = "downloaded" if not missing else "not downloaded" if missing == n else f"partial: {n - missing}/{n} files"
    return d | {"status": status, "size": fmt_bytes(on_disk) if not missing else hub.fmt_expected(e),
                "downloaded": not missing, "files": n, "files_present": n - missing, "bytes_on_disk": on_disk,
                "expected_bytes": total, "expected_exact": exact and complete}


@models_app.command("list")
@friendly
def list_models(as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False) -> None:
    """List the models: embedded (shipped), download (full size, CUDA, from the Hugging Face hub) and dev
    (untrained, for testing), with what is on this machine and how big it is.

    [b]Examples[/b]
      videomla models list
      videomla models list --json
    """
    from . import hub

    rows = [_describe(e) for e in registry.REGISTRY.values()]
    if as_json:
        out.print_json(json.dumps({"cache": str(hub.cache_dir()), "models": rows}))
        return
    t = Table(Column("name", no_wrap=True, min_width=max(map(len, registry.REGISTRY))), "tier", "attn", "status",
              "size", "description")
    for r in rows:
        t.add_row(r["name"], r["tier"], r["attention"], r["status"], r["size"], r["description"])
    out.print(t)
    for r in rows:
        if r["tier"] == "download":
            out.print(f"{r['name']}: needs a CUDA GPU with ≥ {r['min_gpu_gb']:g} GB; licence: {r['licence']}",
                      highlight=False, soft_wrap=True)
    out.print(f"Downloads go to {hub.cache_dir()}; get one with 'videomla models download NAME'.",
              highlight=False, soft_wrap=True)


def _entry(name: str):
    from . import hub

    return hub.get_download_entry(name)


@models_app.command()
@friendly
def download(
    names: Annotated[list[str], typer.Argument(help="Model name(s): see 'videomla models'.", show_default=False)],
) -> None:
    """Download full-size models from the Hugging Face hub into its cache.

    Each file is fetched once (a dropped connection resumes where it stopped; files already here are
    kept), then checked against the manifest's size and sha256 (a wrong file is deleted). Gated models
    need their licence accepted on the hub and a login (HF_TOKEN or 'hf auth login').

    [b]Examples[/b]
      videomla models download videomla-1.3b
      HF_HOME=/data/hf videomla models download videomla-1.3b self-forcing-1.3b
    """
    from . import hub
    from .memory import fmt_bytes

    for name in names:
        e = _entry(name)
        if e.tier != "download":
            what = "ships with videomla" if e.tier == "embedded" else "has random weights"
            out.print(f"{name} {what}: nothing to download")
            continue
        if not hub.missing_files(e):
            out.print(f"{name} is already downloaded ({fmt_bytes(hub.bytes_on_disk(e))} in {hub.cache_dir()})",
                      highlight=False, soft_wrap=True)
            continue
        if hub.offline():
            raise RuntimeFailure(hub.offline_message(name))
        err.print(f"downloading {name} ({hub.fmt_expected(e)}; licence: {e.licence}) into {hub.cache_dir()}",
                  highlight=False, soft_wrap=True)
        hub.download(e, err)
        out.print(f"done: {name}  ({len(e.files)} files, {fmt_bytes(hub.bytes_on_disk(e))} in {hub.cache_dir()})",
                  highlight=False, soft_wrap=True)


@models_app.command()
@friendly
def remove(
    name: Annotated[str, typer.Argument(help="Model name: see 'videomla models'.", show_default=False)],
    shared: Annotated[bool, typer.Option("--shared", help="Also remove files another downloaded model still "
                                                          "uses (the Wan text encoder, tokenizer and VAE).")] = False,
) -> None:
    """Delete a downloaded model's files from the Hugging Face cache.

    Files another downloaded model also needs (the Wan text encoder, tokenizer and VAE that
    videomla-1.3b and self-forcing-1.3b share) are kept unless --shared is given.

    [b]Examples[/b]
      videomla models remove self-forcing-1.3b
      videomla models remove videomla-1.3b --shared
    """
    from . import hub
    from .memory import fmt_bytes

    e = _entry(name)
    if e.tier != "download":
        raise UsageError(f"{name} is {'an embedded' if e.tier == 'embedded' else 'a dev'} model: "
                         f"it has no downloaded files to remove")
    removed, freed, kept = hub.remove(e, shared)
    if kept:
        users = sorted({u for us in kept.values() for u in us})
        out.print(f"kept {len(kept)} shared files still used by {', '.join(users)} (--shared removes them too)")
    if removed:
        out.print(f"removed {name}: {removed} files, {fmt_bytes(freed)} freed")
    elif not kept:
        out.print(f"{name} is not downloaded: nothing to remove")


@models_app.command()
@friendly
def path(
    name: Annotated[str, typer.Argument(help="Model name: see 'videomla models'.", show_default=False)],
    role: Annotated[str | None, typer.Option(help="Print only this role's path (dit, text_encoder, tokenizer, "
                                                  "vae).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Print where a model's files are: one 'role path' per line (a role of several files is their folder).

    [b]Examples[/b]
      videomla models path videomla-1.3b
      videomla models path videomla-1.3b --role dit
    """
    from . import hub

    e = _entry(name)
    if e.tier == "dev":
        raise UsageError(f"{name} is a dev model with random weights: it has no files")
    if e.tier == "embedded":
        folder = registry.assets_dir() / name
        if not (folder / "model.safetensors").exists():
            raise RuntimeFailure(f"{name}: the embedded model's weights are not shipped in this build yet")
        paths = {"folder": folder}
    else:
        if hub.missing_files(e):
            raise RuntimeFailure(f"{name} is not downloaded: run 'videomla models download {name}'")
        paths = hub.role_paths(e)
    if role is not None:
        if role not in paths:
            raise UsageError(f"{name} has no role {role!r}; it has: {', '.join(paths)}")
        typer.echo(str(paths[role]))
    elif as_json:
        typer.echo(json.dumps({k: str(v) for k, v in paths.items()}))
    else:
        for k, v in paths.items():
            typer.echo(f"{k}\t{v}")
