"""``videomla ui``: the local web UI (Gradio), a thin layer over the same Recording the CLI drives.

Safety by default: it binds to 127.0.0.1, is public only with ``--share``, serves files only from
its own output folder, and makes no network call at start (analytics and hub access are switched
off here, *before* Gradio is imported, because Gradio reads them at import time). Gradio is
imported lazily so that ``videomla --help`` stays fast.

Files: ``ui_app`` (layout and event wiring), ``ui_run`` (the event handlers), ``ui_views`` (what a
run looks like on screen, without Gradio).
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from .cli import app, err, friendly, out

OFFLINE_ENV = {
    "GRADIO_ANALYTICS_ENABLED": "False",  # no usage reports, no version check
    "HF_HUB_OFFLINE": "1",  # the UI never downloads: models are pulled by the CLI
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


def offline_env() -> None:
    """Switch off every network call Gradio or the hub libraries would make (call before import)."""
    os.environ.update(OFFLINE_ENV)


def output_folder() -> Path:
    """Where this UI session writes: ``VIDEOMLA_OUTPUT_DIR`` as given (tests), else a folder per
    launch under the user's videos folder, so one session's files are easy to find and share."""
    env = os.environ.get("VIDEOMLA_OUTPUT_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_videos_dir()) / "videomla" / f"ui-{datetime.now():%Y%m%d-%H%M%S}"


def default_model() -> str:
    """The first shipped embedded model, else the untrained dev model of the same size."""
    from .models import REGISTRY, assets_dir

    for e in REGISTRY.values():
        if e.tier == "embedded" and (assets_dir() / e.name / "model.safetensors").exists():
            return e.name
    return "small-mla"


def launch(host: str = "127.0.0.1", port: int | None = None, model: str | None = None, share: bool = False,
           folder: Path | None = None, **kw):
    """Build and start the app; returns ``(demo, url, folder)``. ``kw`` goes to ``launch`` (tests pass
    ``prevent_thread_lock=True, quiet=True``)."""
    offline_env()
    from .errors import RunError
    from .models import get_entry
    from .ui_app import CSS, THEME, build_app

    model = model or default_model()
    get_entry(model)  # an unknown name fails here, with the list of known ones
    folder = Path(folder or output_folder()).resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot create the output folder {folder}: {e.strerror}") from None
    demo = build_app(model, folder)
    demo.queue(default_concurrency_limit=1)
    _, url, _ = demo.launch(server_name=host, server_port=port, share=share, allowed_paths=[str(folder)],
                            ssr_mode=False, show_error=False, theme=THEME, css=CSS, **kw)
    return demo, url, folder


@app.command()
@friendly
def ui(
    host: Annotated[str, typer.Option(help="Address to bind (0.0.0.0: the whole network).")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Port (default: the first free one from 7860).")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model selected at start.")] = None,
    share: Annotated[bool, typer.Option(help="Also make a public link through Gradio's servers.")] = False,
) -> None:
    """Open the web UI: prompt or timeline, live preview and memory, stop, extend, results.

    [b]Examples[/b]
      videomla ui
      videomla ui --port 8080 --model small-mla
    """
    from .errors import InputError, RunError

    if host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"[yellow]warning:[/yellow] listening on {host}: anyone who can reach this machine can "
                  "use the UI", highlight=False)
    try:
        demo, url, folder = launch(host, port, model, share, prevent_thread_lock=True, quiet=True)
    except ValueError as e:
        raise InputError(str(e)) from None
    except ImportError as e:
        raise RunError(f"the web UI needs {e.name or 'gradio'}: pip install gradio") from None
    except OSError as e:  # e.g. the port is taken
        raise RunError(f"cannot start the UI on {host}:{port or 7860}: {e}") from None
    try:  # from here on, Ctrl-C (even an early one) closes the server cleanly
        out.print(f"VideoMLA UI: [bold]{url}[/bold]  (videos go to {folder}; Ctrl-C to quit)",
                  highlight=False, soft_wrap=True)
        if share and getattr(demo, "share_url", None):
            out.print(f"public link: {demo.share_url}", highlight=False)
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
