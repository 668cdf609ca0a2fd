"""A bank of training clips, rendered and encoded once, that every step of a stage draws from.

Why: on the 2-core CPU, rendering and encoding a batch of 8 clips takes 4.4 s and the DiT step on
it 2.8 s, so a CPU stage that renders every batch (:class:`~.stages.LatentData`) spends 60 % of its
time on data. A recipe with ``bank_batches`` renders that many batches into ``<run>/bank/`` first
(13 minutes for 190; resumable, one file per batch) and then draws each step's clips from them:
2.5x the steps per hour, each clip seen about ``steps x batch / clips`` times (5.2 for the
`tiny-t4-cpu` MLA fine-tune). The GPU recipes keep fresh clips: there, workers render ahead.

Each step draws its clips and its caption dropout from ``(PICK_SEED, step)`` alone, so a resumed
stage sees the same batches as an uninterrupted one.

A bank folder records what its clips were rendered for (``bank.json``: seeds, sizes, the pair
motions and counts, the text encoder and a digest of the autoencoder's encoder) and refuses a stage
that asks for other clips: a run started in the folder of another recipe, or a bank copied between
runs, would otherwise train on the wrong data without a word.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..atomic import replacing

BANK_SEED = 1234  # the render seed of the bank's clips (apart from the stages' own seeds)
PAIR_SEED = 2345  # the render seed of the contrast pairs' bank
PICK_SEED = 4321  # which banked clips a step draws
RENDER_BATCH = 8  # clips per bank file
RECORD = "bank.json"  # what a bank folder's clips were rendered for (:func:`bank_record`)


class LatentBank:
    """``batch(step)`` like :class:`~.stages.LatentData`: clean latents [B, F, C, h, w], token
    states [B, L, D] and the object loss weight [B, F, 1, h, w] (or None), drawn without replacement
    from the banked clips; ``caption_dropout`` of them get the empty prompt's states.

    With the recipe's ``pairs_per_step`` (P), the last 2P clips of each batch are P contrast pairs
    (``data.pair_batch``) from a second bank in ``pair_folder``, always captioned; ``pairs`` says
    how many, for the loss to give each pair one noise draw."""

    def __init__(self, recipe, ae, text_encoder, folder: Path, batch: int, caption_dropout: float,
                 workers: int = 0, quiet: bool = False, pair_folder: Path | None = None) -> None:
        self.n, self.dropout = batch, caption_dropout
        self.pairs = recipe.pairs_per_step
        if self.pairs and (pair_folder is None or not recipe.pair_bank_batches
                           or not (recipe.pair_motions or recipe.pair_counts)):
            raise ValueError(f"recipe {recipe.name!r}: pairs_per_step needs pair_bank_batches, pair_motions "
                             "or pair_counts, and a pair folder")
        if 2 * self.pairs > batch:
            raise ValueError(f"{self.pairs} contrast pairs do not fit a batch of {batch}")
        parts = _banked(recipe, ae, text_encoder, folder, workers, quiet)
        self.x0, self.text, self.weight = parts  # [N, F, C, h, w] fp16, [N, L, D], [N, F, 1, h, w] or None
        self.pair_x0 = self.pair_text = self.pair_weight = None
        if self.pairs:
            self.pair_x0, self.pair_text, self.pair_weight = _banked(recipe, ae, text_encoder, pair_folder,
                                                                     workers, quiet, pairs=True)
        self.empty = text_encoder.encode([""]).to(ae.device)  # [1, L, D]
        if len(self.x0) < batch - 2 * self.pairs:
            raise ValueError(f"a bank of {len(self.x0)} clips cannot fill a batch of {batch}")

    def __len__(self) -> int:
        return len(self.x0)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        rng = np.random.default_rng([PICK_SEED, step])
        n = self.n - 2 * self.pairs
        idx = torch.from_numpy(rng.choice(len(self.x0), n, replace=False))
        text = self.text[idx].clone()  # [n, L, D]
        if self.dropout:
            drop = torch.from_numpy(rng.random(n) < self.dropout)
            text[drop] = self.empty[0]
        x0 = self.x0[idx].float()
        weight = None if self.weight is None else self.weight[idx].float()
        if self.pairs:
            # drawn after the plain clips and their dropout; a pair is two neighbouring bank clips.
            # Joined in fp32: the trainer's CPU bf16 autocast refuses to cat fp16 tensors.
            first = 2 * torch.from_numpy(rng.choice(len(self.pair_x0) // 2, self.pairs, replace=False))
            pidx = torch.stack([first, first + 1], 1).flatten()  # [2P]
            x0 = torch.cat([x0, self.pair_x0[pidx].float()])
            text = torch.cat([text, self.pair_text[pidx]])
            if weight is not None:
                weight = torch.cat([weight, self.pair_weight[pidx].float()])
        return x0, text, weight

    def close(self) -> None:
        pass


def _banked(recipe, ae, text_encoder, folder: Path, workers: int, quiet: bool, pairs: bool = False,
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The latents [N, F, C, h, w] fp16, token states [N, L, D] and object weights (or None) of the
    recipe's bank in ``folder`` (``pairs``: its contrast pairs' bank), rendering the missing files
    first (resumable: one file per batch of :data:`RENDER_BATCH`, written atomically)."""
    from .stages import LatentData

    if pairs:
        n_files, seed, what = recipe.pair_bank_batches, PAIR_SEED, "contrast pairs"
        pair_motions, pair_counts = recipe.pair_motions, recipe.pair_counts
    else:
        n_files, seed, what, pair_motions, pair_counts = recipe.bank_batches, BANK_SEED, "clips", (), ()
    folder.mkdir(parents=True, exist_ok=True)
    _check_record(folder, bank_record(recipe, ae, text_encoder, seed, pair_motions, pair_counts))
    files = [folder / f"b{i:04d}.pt" for i in range(n_files)]
    todo = [i for i, f in enumerate(files) if not f.exists()]
    if todo:
        if not quiet:
            print(f"bank: rendering {len(todo)} of {len(files)} batches of {RENDER_BATCH} {what} "
                  f"into {folder}", flush=True)
        render = LatentData(replace(recipe, caption_dropout=0.0), ae, text_encoder, seed, RENDER_BATCH,
                            workers, pair_motions, pair_counts)
        try:
            for i in todo:
                x0, text, weight = render.batch(i)
                with replacing(files[i]) as tmp:
                    # fp16 halves the bank; its 11-bit mantissa is finer than the bf16 autocast
                    # that reads the latents (~N(0, 1))
                    torch.save({"x0": x0.to(torch.float16).cpu(), "text": text.cpu(),
                                "w": None if weight is None else weight.to(torch.float16).cpu()}, tmp)
        finally:
            render.close()
    parts = [_read(f) for f in files]
    dev = ae.device
    x0 = torch.cat([p["x0"] for p in parts]).to(dev)  # [N, F, C, h, w] fp16
    text = torch.cat([p["text"] for p in parts]).to(dev)  # [N, L, D]
    weight = None if parts[0]["w"] is None else torch.cat([p["w"] for p in parts]).to(dev)
    return x0, text, weight


def bank_record(recipe, ae, text_encoder, seed: int, pair_motions: tuple[str, ...] = (),
                pair_counts: tuple[int, ...] = ()) -> dict:
    """Everything a bank file's contents depend on. The autoencoder enters by a digest of its
    encoder and latent statistics only: a stage-0 run that trains the decoder alone
    (``ae_frozen_encoder``) leaves the latents, and so the bank, as they were."""
    digest = hashlib.sha256()
    tensors = dict(ae.enc.state_dict(), latent_mean=ae.latent_mean, latent_std=ae.latent_std)
    for name, t in sorted(tensors.items()):
        digest.update(name.encode())
        digest.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return {"seed": seed, "render_batch": RENDER_BATCH,
            **clip_settings(recipe, pairs=bool(pair_motions or pair_counts)),
            "pair_motions": list(pair_motions), "pair_counts": list(pair_counts),
            "text_encoder": type(text_encoder).__name__, "encoder": digest.hexdigest()[:16]}


def clip_settings(recipe, pairs: bool = False) -> dict:
    """What a recipe's clips are rendered from, of all that a bank record holds: two recipes that
    agree here (and read the same autoencoder) can share a bank, which is how
    ``scripts/reproduce_tiny.sh`` decides which rounds hard-link one. ``pairs``: of its contrast
    pairs' bank, which the motion and colour weights of the independent clips do not touch. The weights enter
    only when a recipe sets them, so the records of banks rendered before they existed still hold."""
    settings = {"frame_size": recipe.frame_size, "clip_frames": recipe.dit_clip_frames,
                "object_weight": recipe.object_weight}
    for key in ("motion_weights", "colour_weights"):
        if getattr(recipe, key) and not pairs:
            settings[key] = [[v, float(w)] for v, w in getattr(recipe, key)]
    return settings


def _check_record(folder: Path, record: dict) -> None:
    """Write ``folder``'s record, or refuse a folder rendered for other clips. A folder of bank
    files from before the record existed cannot be checked: it is taken as it is."""
    from .loop import CheckpointError

    path = folder / RECORD
    if path.exists():
        try:
            held = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a readable bank record ({e}): delete the folder "
                                  "and the next run renders it again") from None
        if held != record:
            diff = ", ".join(f"{k} {held.get(k)!r} (this stage: {v!r})"
                             for k, v in record.items() if held.get(k) != v)
            raise CheckpointError(f"{folder} holds clips rendered for other settings: {diff}; delete it "
                                  "or train into another --out")
        return
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")


def _read(path: Path) -> dict:
    """One bank file; a damaged one is named, so deleting it (it is rendered again) fixes the run."""
    from .loop import CheckpointError

    try:
        part = torch.load(path, weights_only=True)
        if not (isinstance(part, dict) and {"x0", "text", "w"} <= part.keys()):
            raise ValueError("not a bank file")
    except Exception as e:  # unpickling errors have no common base class
        raise CheckpointError(f"{path} is not a readable bank file ({str(e).splitlines()[0][:80]}): delete it "
                              "and the next run renders it again") from None
    return part
