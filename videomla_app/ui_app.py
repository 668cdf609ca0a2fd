"""Layout and event wiring of the web UI (one ``gr.Blocks``); the handlers live in ``ui_run``.

Left: what to make (prompt, timeline table, examples, length, seed, model, advanced knobs).
Right: the run as it happens (status with ETA, live frame, result video) and its memory (cache vs
the dense-MHA equivalent over chunks, RSS/VRAM, per layer). Below: Extend and this tab's results.

Concurrency: generate and extend share one concurrency group of size 1 (one run per device), so
other tabs wait in the queue and see their position on the status line; Stop has no limit, so it
reaches a running job at once.
"""

import random
from types import SimpleNamespace

from .ui import offline_env

offline_env()  # before Gradio is imported: it reads these at import time

import gradio as gr  # noqa: E402

from .models import REGISTRY, assets_dir  # noqa: E402
from .ui_run import MAX_UI_SECONDS, Handlers  # noqa: E402
from .ui_views import DENSE, MLA, RESULT_COLUMNS, layer_table, note  # noqa: E402

THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="sky", neutral_hue="slate")
CSS = """
#title h1 {margin-bottom: 0}
.vm-status {min-height: 3.4em; padding: 2px 4px; line-height: 1.5}
.vm-bar {height: 8px; margin-top: 6px; border-radius: 4px; background: var(--neutral-200); overflow: hidden}
.vm-bar > div {height: 100%; background: var(--color-accent); transition: width 0.2s}
#preview img, #result video {image-rendering: pixelated; object-fit: contain}
#seed-row {align-items: flex-end}
#dice {margin-bottom: 6px}
#results td {word-break: break-all}
"""


def example_prompts() -> list[str]:
    """The evaluation's prompts: every word is in the training captions, each is read in full (no
    warning when clicked), and how well ``tiny`` follows each is published (``videomla eval``).
    Random training captions were shown before, and some ran past the 15 tokens ``tiny`` reads.
    Ordered by how often ``tiny`` follows the motion each asks for (model.json "follows"), so the
    first ones shown are those it draws as asked; the rest get the motion warning when run."""
    from . import world
    from .eval_follows import read_follows
    from .evaluate import PROMPTS

    rates = (read_follows(assets_dir() / "tiny" / "model.json") or {}).get("motion") or {}  # none: eval order
    return sorted(PROMPTS, key=lambda p: -rates.get(world.parse_prompt(p).get("motion"), 0.0))


def model_choices() -> list[tuple[str, str]]:
    """Every registered model, labelled with its tier and whether it can run here."""

    def status(e) -> str:
        if e.tier == "embedded":
            return "embedded" if (assets_dir() / e.name / "model.safetensors").exists() else "not shipped yet"
        if e.tier == "download":  # the UI never downloads: that is `videomla models download NAME`
            from .hub import missing_files

            return "CUDA GPU, downloaded" if not missing_files(e) else f"CUDA GPU, run: videomla models download {e.name}"
        return "dev"

    return [(f"{e.name} · {e.description} ({status(e)})", e.name) for e in REGISTRY.values()]


def _request_panel(model: str) -> SimpleNamespace:
    """What to make: prompt and timeline, length, seed, model, advanced knobs, Generate/Stop."""
    c = SimpleNamespace()
    c.prompt = gr.Textbox(label="Prompt", lines=2, placeholder="a red ball bouncing on a beach   "
                          "(or a timeline: 0:00 a red ball; 0:30 the ball turns blue)")
    with gr.Accordion("Prompt timeline: switch prompts during the video", open=False):
        c.rows = gr.Dataframe(value=[["", ""]], headers=["start (M:SS)", "prompt"], datatype=["str", "str"],
                              type="array", column_count=2, interactive=True, show_label=False, wrap=True,
                              column_widths=["28%", "72%"])
        gr.Markdown("Rows start later prompts (e.g. `0:30` · `the ball turns blue`); the prompt box gives "
                    "the one at 0:00. Switches land on the next chunk boundary.")
    gr.Examples([[p] for p in example_prompts()], inputs=c.prompt, label="Examples the embedded model knows")
    c.seconds = gr.Slider(1, MAX_UI_SECONDS, value=10, step=1, label="Duration (seconds)", elem_id="duration",
                          info=f"up to {MAX_UI_SECONDS // 60} minutes; the cache does not grow with length")
    with gr.Row(equal_height=False, elem_id="seed-row"):
        c.seed = gr.Number(0, label="Seed (same seed, same video)", precision=0, minimum=0, scale=3)
        c.dice = gr.Button("Randomise", size="md", scale=1, min_width=100, elem_id="dice")
    c.model = gr.Dropdown(model_choices(), value=model, label="Model")
    with gr.Accordion("Advanced", open=False):
        c.steps = gr.Number(None, label="Denoising steps per chunk", precision=0, minimum=1, maximum=50,
                            info="blank: the model's default (4 for the paper's model)")
        c.first_steps = gr.Number(None, label="Denoising steps of the first chunk", precision=0, minimum=1,
                                  maximum=50, info="blank: the model's default (16 for the embedded models); "
                                                   "the first chunk has no context to follow")
        c.guidance = gr.Number(None, label="Prompt guidance", minimum=0, maximum=20,
                               info="blank: the model's default; 1 = off (one model call per step; guided steps take ~1.2x the time)")
        c.warm_start = gr.Number(None, label="Warm start (timestep)", minimum=0, maximum=1000,
                                 info="blank: the model's default; later chunks start from the last frame noised "
                                      "to this level, skipping the steps above it; 0 = off")
        with gr.Row():
            c.window = gr.Number(None, label="Window (latent frames)", precision=0, minimum=0,
                                 info="blank: model default")
            c.sink = gr.Number(None, label="Sink (latent frames)", precision=0, minimum=0,
                               info="blank: model default")
        c.device = gr.Radio(["auto", "cpu", "cuda"], value="auto", label="Device")
        c.recache = gr.Checkbox(True, label="Re-cache the window at prompt switches")
    with gr.Row():
        c.go = gr.Button("Generate", variant="primary", scale=3)
        c.stop = gr.Button("Stop", variant="stop", interactive=False, scale=1)
    return c


def _run_panel() -> SimpleNamespace:
    """The run as it happens: status, live frame, result video, memory plot and readouts."""
    c = SimpleNamespace()
    c.status = gr.HTML(note("Ready: write a prompt and press Generate."), elem_id="status")
    with gr.Row(equal_height=True):
        c.preview = gr.Image(label="Live preview (latest frame)", interactive=False, height=300,
                             elem_id="preview", buttons=[])
        c.video = gr.Video(label="Result", interactive=False, height=300, autoplay=True, loop=True,
                           elem_id="result")
    c.plot = gr.LinePlot(x="chunk", y="MB", color="cache", title="KV cache per chunk", x_title="chunk",
                         y_title="MB", color_title="", color_map={MLA: "#4f46e5", DENSE: "#f97316"},
                         y_lim=[0, None], height=250, label="KV cache per chunk", show_label=False,
                         elem_id="memory-plot")
    c.memory = gr.Markdown("Memory appears with the first chunk.", elem_id="memory")
    c.layers = gr.Dataframe(layer_table(None), label="KV cache per layer (real tensors)", interactive=False,
                            max_height=200)
    return c


def _extend_panel() -> SimpleNamespace:
    c = SimpleNamespace()
    gr.Markdown("### Extend")
    c.source = gr.Dropdown([], label="Continue this result", info="or upload a clip below")
    c.upload = gr.Video(label="…or a clip from elsewhere", sources=["upload"], height=160)
    c.seconds = gr.Slider(1, MAX_UI_SECONDS, value=5, step=1, label="Seconds to add")
    c.prompt = gr.Textbox(label="New prompt (optional)", placeholder="blank: keep the current prompt")
    c.go = gr.Button("Extend", variant="secondary")
    return c


def _results_panel(folder) -> SimpleNamespace:
    c = SimpleNamespace()
    gr.Markdown(f"### Results of this tab\nSaved in `{folder}`.")
    c.table = gr.Dataframe(headers=RESULT_COLUMNS, interactive=False, show_label=False, wrap=True,
                           elem_id="results", column_widths=["26%", "10%", "10%", "11%", "8%", "25%", "10%"])
    c.files = gr.File(label="Downloads", file_count="multiple", interactive=False)
    return c


def build_app(model: str, folder) -> gr.Blocks:
    h = Handlers(folder)
    with gr.Blocks(title="VideoMLA", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        results = gr.State([])  # this tab's results (dicts, see Handlers._result)
        gr.Markdown("# VideoMLA\nMinute-long videos from a causal video diffusion model whose KV cache is "
                    "compressed with Multi-Head Latent Attention. Each chunk appears as soon as it is made.",
                    elem_id="title")
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=340):
                req = _request_panel(model)
            with gr.Column(scale=3, min_width=420):
                run = _run_panel()
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=340):
                ext = _extend_panel()
            with gr.Column(scale=3, min_width=420):
                res = _results_panel(folder)

        buttons = [req.go, ext.go, req.stop]
        outputs = [run.preview, run.video, run.status, run.plot, run.memory, run.layers, results, res.table,
                   res.files, ext.source]
        private = {"queue": False, "api_visibility": "private"}
        device = {"concurrency_id": "device", "concurrency_limit": 1, "show_progress_on": [run.status]}
        req.go.click(h.arm, None, buttons + [run.status], **private).then(
            h.generate, [req.prompt, req.rows, req.seconds, req.seed, req.model, req.steps, req.first_steps,
                         req.guidance, req.warm_start, req.window, req.sink, req.device, req.recache, results], outputs, api_name="generate", **device,
        ).then(h.idle, None, buttons, **private)
        ext.go.click(h.arm, None, buttons + [run.status], **private).then(
            h.extend, [ext.source, ext.upload, ext.seconds, ext.prompt, req.model, req.seed, req.device,
                       results], outputs, api_name="extend", **device,
        ).then(h.idle, None, buttons, **private)
        req.stop.click(h.stop, None, None, api_name="stop", concurrency_limit=None, show_progress="hidden")
        req.dice.click(lambda: random.randrange(2**31), None, req.seed, **private)
        demo.unload(h.forget)
    return demo
