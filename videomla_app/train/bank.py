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
PICK_SEED = 4321  # which banked clips a step draws
RENDER_BATCH = 8  # clips per bank file


class LatentBank:
    """``batch(step)`` like :class:`~.stages.LatentData`: clean latents [B, F, C, h, w], token
    states [B, L, D] and the object loss weight [B, F, 1, h, w] (or None), drawn without replacement
    from the banked clips; ``caption_dropout`` of them get the empty prompt's states."""

    def __init__(self, recipe, ae, text_encoder, folder: Path, batch: int, caption_dropout: float,
                 workers: int = 0, quiet: bool = False) -> None:
        from .stages import LatentData

        self.n, self.dropout = batch, caption_dropout
        folder.mkdir(parents=True, exist_ok=True)
        files = [folder / f"b{i:04d}.pt" for i in range(recipe.bank_batches)]
        todo = [i for i, f in enumerate(files) if not f.exists()]
        if todo:
            if not quiet:
                print(f"bank: rendering {len(todo)} of {len(files)} batches of {RENDER_BATCH} clips "
                      f"into {folder}", flush=True)
            render = LatentData(replace(recipe, caption_dropout=0.0), ae, text_encoder, BANK_SEED,
                                RENDER_BATCH, workers)
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
        self.x0 = torch.cat([p["x0"] for p in parts]).to(dev)  # [N, F, C, h, w] fp16
        self.text = torch.cat([p["text"] for p in parts]).to(dev)  # [N, L, D]
        self.weight = None if parts[0]["w"] is None else torch.cat([p["w"] for p in parts]).to(dev)
        self.empty = text_encoder.encode([""]).to(dev)  # [1, L, D]
        if len(self.x0) < batch:
            raise ValueError(f"a bank of {len(self.x0)} clips cannot fill a batch of {batch}")

    def __len__(self) -> int:
        return len(self.x0)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        rng = np.random.default_rng([PICK_SEED, step])
        idx = torch.from_numpy(rng.choice(len(self.x0), self.n, replace=False))
        text = self.text[idx].clone()  # [B, L, D]
        if self.dropout:
            drop = torch.from_numpy(rng.random(self.n) < self.dropout)
            text[drop] = self.empty[0]
        weight = None if self.weight is None else self.weight[idx].float()
        return self.x0[idx].float(), text, weight

    def close(self) -> None:
        pass


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
