"""A bank of training clips, rendered and encoded once, that every step of a stage draws from.

Why: on the 2-core CPU, rendering and encoding a batch of 8 clips takes 4.4 s and the DiT step on
it 2.8 s, so a CPU stage that renders every batch (:class:`~.stages.LatentData`) spends 60 % of its
time on data. A recipe with ``bank_batches`` renders that many batches into ``<run>/bank/`` first
(13 minutes for 190; resumable, one file per batch) and then draws each step's clips from them:
2.5x the steps per hour, each clip seen about ``steps x batch / clips`` times (5.2 for the
`tiny-t4-cpu` MLA fine-tune). The GPU recipes keep fresh clips: there, workers render ahead.

Each step draws its clips and its caption dropout from ``(PICK_SEED, step)`` alone, so a resumed
stage sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..atomic import replacing

BANK_SEED = 1234  # the render seed of the bank's clips (apart from the stages' own seeds)
PAIR_SEED = 2345  # the render seed of the contrast pairs' bank
PICK_SEED = 4321  # which banked clips a step draws
RENDER_BATCH = 8  # clips per bank file


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
        parts = _banked(recipe, ae, text_encoder, folder, recipe.bank_batches, BANK_SEED, (), workers, quiet)
        self.x0, self.text, self.weight = parts  # [N, F, C, h, w] fp16, [N, L, D], [N, F, 1, h, w] or None
        self.pair_x0 = self.pair_text = self.pair_weight = None
        if self.pairs:
            self.pair_x0, self.pair_text, self.pair_weight = _banked(
                recipe, ae, text_encoder, pair_folder, recipe.pair_bank_batches, PAIR_SEED,
                recipe.pair_motions, workers, quiet, "contrast pairs", recipe.pair_counts)
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


def _banked(recipe, ae, text_encoder, folder: Path, n_files: int, seed: int, pair_motions: tuple[str, ...],
            workers: int, quiet: bool, what: str = "clips", pair_counts: tuple[int, ...] = (),
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The latents [N, F, C, h, w] fp16, token states [N, L, D] and object weights (or None) of
    ``n_files`` bank files in ``folder``, rendering the missing ones first (resumable: one file per
    batch of :data:`RENDER_BATCH`, written atomically)."""
    from .stages import LatentData

    folder.mkdir(parents=True, exist_ok=True)
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
