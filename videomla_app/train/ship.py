"""Export a finished training run to ``assets/``: the weights the app ships and loads offline.

Layout (all safetensors, DiT weights in bf16 to keep the package small)::

    assets/ae.safetensors           the autoencoder, shared by both embedded models
    assets/tiny/model.safetensors   MLA DiT + model.json (preset name and sizes)
    assets/tiny-mha/model.safetensors  its dense twin + model.json
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..autoencoder import CausalVideoAE
from ..config import get_preset
from ..models import step_list
from .loop import read_checkpoint_log
from .stages import Recipe, stage_config

# model -> (stages whose weights it ships, the first the run has; preset field; warm-start field).
# Each ships its guidance-distilled stage 4 when there is one; older runs stopped at stage 3 or 2.
EXPORTS = {"tiny": (("mla-cfg", "mla"), "mla_preset", "warm_start"),
           "tiny-mha": (("twin-cfg", "twin", "mha"), "mha_preset", "twin_warm_start")}


def _trained_config(run_dir: Path, stage: str, recipe: Recipe) -> dict:
    """The stage's config as it ran (with the step count a --budget-minutes run chose), read from
    its checkpoint; the recipe's when the run folder has weights but no checkpoint."""
    ckpt = run_dir / f"{stage}.ckpt.pt"
    if ckpt.exists():
        return read_checkpoint_log(ckpt)["config"]
    return asdict(stage_config(recipe, stage))


def missing_weights(run_dir: Path) -> list[str]:
    """What ``ship`` needs and ``run_dir`` lacks: the autoencoder and, per model, one of its stages."""
    need = [("ae.safetensors",)] + [tuple(f"{s}.safetensors" for s in stages) for stages, _, _ in EXPORTS.values()]
    return [" or ".join(names) for names in need if not any((run_dir / n).is_file() for n in names)]


def _has(run_dir: Path, model: str) -> bool:
    return any((run_dir / f"{s}.safetensors").is_file() for s in EXPORTS[model][0])


def kept_models(run_dir: Path, assets: Path) -> list[str]:
    """The shipped models a run leaves as they are: those it has no weights of, when it has the
    other's and its autoencoder is the shipped one, byte for byte (a CPU run that goes on with one
    model, e.g. `train mla --mla-from`). Raises FileNotFoundError when the run cannot ship.

    Why byte for byte: the shipped DiTs read that autoencoder's latents; a run that trained its own
    must ship both models with it, or the kept one would decode into noise."""
    missing = missing_weights(run_dir)
    if not missing:
        return []
    lacking = [m for m in EXPORTS if not _has(run_dir, m)]
    why = ""
    if len(missing) == 1 and len(lacking) == 1:  # it has the autoencoder and one model
        ae, shipped = run_dir / "ae.safetensors", assets / "ae.safetensors"
        if (assets / lacking[0] / "model.safetensors").is_file() and shipped.is_file() \
                and ae.read_bytes() == shipped.read_bytes():
            return lacking
        why = f" (it can leave {lacking[0]} as shipped only when its ae.safetensors is the shipped one)"
    raise FileNotFoundError(f"{run_dir} holds no finished training run to ship: "
                            f"missing {'; '.join(missing)}{why}")


def ship(run_dir: Path, assets: Path, recipe: Recipe, text_encoder) -> list[Path]:
    """Copy a run's final weights into ``assets``; returns the files written.

    Why staged: the shipped files belong together (both DiTs were trained on that autoencoder's
    latents), so a run that lacks a stage, or a disk that fills up, must leave the old set whole.
    Everything is written to a folder inside ``assets`` first and moved into place only when all of
    it is there."""
    kept = kept_models(run_dir, assets)
    assets.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".ship-", dir=assets) as tmp:
        staged = _write_all(run_dir, Path(tmp), recipe, text_encoder, kept)
        mode = _new_file_mode()
        for rel in staged:
            (assets / rel).parent.mkdir(parents=True, exist_ok=True)
            # safetensors' save_file makes its files private (0600): shipped weights are read by
            # whoever runs the app, like the model.json beside them
            os.chmod(Path(tmp) / rel, mode)
            os.replace(Path(tmp) / rel, assets / rel)
    return [assets / rel for rel in staged]


def _new_file_mode() -> int:
    """The permissions the umask gives a new file (0644 under the usual 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def save_bf16(src: Path, dst: Path) -> None:
    """A stage's fp32 weights as the bf16 DiT file the app loads (half the bytes); also how
    ``scripts/gpu_train.sh`` returns its stage-1 weights for the next run to go on from."""
    weights = load_file(str(src))
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in weights.items()}, str(dst),
              metadata={"format": "videomla-dit/1"})


def _trained_cache(recipe: Recipe, preset: str) -> dict:
    """model.json's "cache": the window the weights were trained to read, when the preset's is longer.

    Why: a training clip of ``dit_clip_frames`` latent frames shows its last chunk the sink and at
    most ``dit_clip_frames - sink - chunk`` window frames (5 for the tiny recipes, whose presets keep 6),
    so a 6th window frame puts keys at a distance no step trained. On 8 prompts x 60 s the shipped
    `tiny` drifted with 6 (colour EMD to the rendered frames 6.0 -> 9.5) and held with 5
    (5.8 -> 8.0; quality +3.4 +- 2.0, paired); with 8 it fell apart (README, "Drift and the window").
    A recipe's own ``window_frames`` overrides the clips' window."""
    cache = get_preset(preset).cache
    trained = recipe.window_frames or recipe.dit_clip_frames - cache.sink_frames - cache.chunk_frames
    return {"cache": {"window_frames": trained}} if 0 <= trained < cache.window_frames else {}


def _write_all(run_dir: Path, out: Path, recipe: Recipe, text_encoder, kept: list[str]) -> list[Path]:
    """Write every shipped file under ``out`` (not those of the ``kept`` models); returns their
    paths relative to it."""
    written = []
    ae = CausalVideoAE.load(run_dir / "ae.safetensors")  # refuses a file that is not an autoencoder
    if not kept:  # else it is the shipped file already
        # the run's bytes, not a re-save: safetensors orders its metadata differently from one save to
        # the next, so re-saving an unchanged autoencoder made git see a new 3 MB binary
        shutil.copyfile(run_dir / "ae.safetensors", out / "ae.safetensors")
        written.append(Path("ae.safetensors"))
    for name, (stages, preset_field, warm_field) in EXPORTS.items():
        if name in kept:
            continue
        stage = next(s for s in stages if (run_dir / f"{s}.safetensors").is_file())
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        save_bf16(run_dir / f"{stage}.safetensors", folder / "model.safetensors")
        spec = {"preset": getattr(recipe, preset_field), "latent_channels": ae.latent_channels,
                "latent_hw": list(ae.cfg.latent_hw), "text_dim": text_encoder.text_dim,
                "text_len": text_encoder.text_len, "ae": "ae.safetensors",
                "text_encoder": "toy" if type(text_encoder).__name__ == "ToyTextEncoder" else "all-MiniLM-L6-v2",
                "recipe": recipe.name,
                "sampler": {"guidance": recipe.sample_guidance or recipe.guidance,
                            "warm_start": getattr(recipe, warm_field),
                            "context_noise": recipe.context_noise,
                            **({"anchor_first": True} if recipe.anchor_first else {}),
                            **({"first_steps": list(step_list(recipe.first_steps, "first_steps"))}
                               if recipe.first_steps else {})},
                **_trained_cache(recipe, getattr(recipe, preset_field)),
                "train": _trained_config(run_dir, stage, recipe)}
        (folder / "model.json").write_text(json.dumps(spec, indent=2) + "\n")
        written += [Path(name) / "model.safetensors", Path(name) / "model.json"]
    return written
