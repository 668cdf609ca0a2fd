"""A small, resumable training loop shared by every stage.

Determinism: the batch and the noise of step ``k`` come from generators seeded with
``(seed, k)``, so a run resumed from a checkpoint continues exactly as if it had never stopped
(tested). Checkpoints hold the model, the optimizer and the loss log; they are written
atomically and loaded with ``weights_only=True`` (no pickled code). bf16 autocast on request.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch: int = 8
    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    warmup: int = 50
    grad_clip: float = 1.0
    seed: int = 0
    bf16: bool = True  # autocast on the CPU (AMX) or GPU
    ckpt_every: int = 100
    log_every: int = 10


def step_generator(seed: int, step: int) -> torch.Generator:
    """The RNG of one step: a pure function of (seed, step), which is what makes resume exact."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


class Trainer:
    """Runs ``loss_fn(model, step, gen)`` for ``cfg.steps`` steps with AdamW and a cosine schedule."""

    def __init__(self, name: str, model: torch.nn.Module, cfg: TrainConfig, out_dir: str | Path,
                 loss_fn: Callable[[torch.nn.Module, int, torch.Generator], torch.Tensor]) -> None:
        self.name, self.model, self.cfg, self.loss_fn = name, model, cfg, loss_fn
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.step, self.log, self.elapsed = 0, [], 0.0

    @property
    def ckpt_path(self) -> Path:
        return self.out / f"{self.name}.ckpt.pt"

    def lr_at(self, step: int) -> float:
        c = self.cfg
        if step < c.warmup:
            return c.lr * (step + 1) / c.warmup
        progress = (step - c.warmup) / max(1, c.steps - c.warmup)
        return c.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))

    def save(self) -> None:
        state = {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "step": self.step,
                 "elapsed": self.elapsed, "log": json.dumps(self.log), "config": json.dumps(asdict(self.cfg))}
        tmp = self.ckpt_path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.ckpt_path)

    def resume(self) -> bool:
        """Load the checkpoint if there is one; returns whether it did."""
        if not self.ckpt_path.exists():
            return False
        state = torch.load(self.ckpt_path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.step, self.elapsed, self.log = state["step"], state["elapsed"], json.loads(state["log"])
        return True

    def run(self, max_minutes: float | None = None, quiet: bool = False) -> list[dict]:
        """Train until ``cfg.steps`` or the time budget; checkpoints on the way and at the end.

        Ctrl-C (SIGINT, in the main thread) finishes the current step, checkpoints it and then
        raises ``KeyboardInterrupt``, so an interrupted run loses no finished step and ``--resume``
        continues bit-exactly (an interrupt inside the optimizer update could not promise that).
        """
        c, t0 = self.cfg, time.monotonic()
        interrupted = threading.Event()
        main = threading.current_thread() is threading.main_thread()
        old = signal.signal(signal.SIGINT, lambda *_: interrupted.set()) if main else None
        try:
            self._loop(c, t0, max_minutes, quiet, interrupted)
        finally:
            if main:
                signal.signal(signal.SIGINT, old)
        self._checkpoint(t0)
        self.model.eval()
        if interrupted.is_set():
            raise KeyboardInterrupt
        return self.log

    def _loop(self, c: TrainConfig, t0: float, max_minutes: float | None, quiet: bool,
              interrupted: threading.Event) -> None:
        self.model.train()
        dev_type = next(self.model.parameters()).device.type
        with Progress(TextColumn(f"[bold]{self.name}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(), disable=quiet) as bar:
            task = bar.add_task(self.name, total=c.steps, completed=self.step, loss="-")
            while self.step < c.steps:
                if interrupted.is_set() or (max_minutes is not None and (time.monotonic() - t0) / 60 >= max_minutes):
                    break
                for g in self.opt.param_groups:
                    g["lr"] = self.lr_at(self.step)
                with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=c.bf16):
                    loss = self.loss_fn(self.model, self.step, step_generator(c.seed, self.step))
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
                self.opt.step()
                self.step += 1
                value = loss.item()
                self.log.append({"step": self.step, "loss": value, "lr": self.lr_at(self.step - 1),
                                 "elapsed_s": round(self.elapsed + time.monotonic() - t0, 2)})
                bar.update(task, completed=self.step, loss=f"{value:.4f}")
                if not quiet and not bar.console.is_terminal and self.step % c.log_every == 0:
                    recent = [r["loss"] for r in self.log[-c.log_every:]]
                    print(f"{self.name} step {self.step}/{c.steps} loss {sum(recent) / len(recent):.4f} "
                          f"({self.log[-1]['elapsed_s']:.0f} s)", flush=True)
                if self.step % c.ckpt_every == 0:
                    self._checkpoint(t0)

    def _checkpoint(self, t0: float) -> None:
        elapsed, self.elapsed = self.elapsed, self.elapsed + time.monotonic() - t0
        self.save()
        self.elapsed = elapsed  # the running total is recomputed from t0 until the run ends
