"""A small, resumable training loop shared by every stage.

Determinism: the batch and the noise of step ``k`` come from generators seeded with
``(seed, k)``, so a run resumed from a checkpoint continues exactly as if it had never stopped
(tested). Checkpoints hold the model, the optimizer and the loss log; they are written
atomically and loaded with ``weights_only=True`` (no pickled code). bf16 autocast on request.

Time budgets: ``run(fit_until=T)`` times the first few steps and then sets the step count to what
fits before ``time.monotonic()`` reaches T (:func:`sized_to`), so a stage ends on time with a
complete schedule on any machine -- a 2-core CPU or a GPU lent for minutes -- instead of the
recipe's CPU-sized count. The sized count is saved in the checkpoint, so a resumed run keeps its
schedule.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from ..atomic import replacing


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
    # Set by a time budget (sized_to): the first `warmup_from` steps ran on the recipe's ramp and
    # reached `warmup_rate` of lr; the ramp goes on from there to lr at step `warmup`.
    warmup_from: int = 0
    warmup_rate: float = 0.0


# Steps timed before a run is sized to a time budget; the first is left out of the timing (worker
# start-up, first caption encodes, CUDA autotuning make it slow).
PROBE_STEPS = 6


def sized_to(cfg: TrainConfig, done: int, seconds_per_step: float, seconds_left: float) -> TrainConfig:
    """``cfg`` with as many steps as fit: the ``done`` ones plus what ``seconds_left`` buys at
    ``seconds_per_step``.

    Warm-up keeps its length in steps, up to a tenth of a shorter run. The probe's steps ran on
    the recipe's ramp; when that is not over, the new ramp starts from the rate it reached and
    rises to lr over at least :data:`PROBE_STEPS` more steps, so the rate never jumps.
    """
    n = refit(cfg, done, seconds_per_step, seconds_left).steps
    rate = min(1.0, done / cfg.warmup)  # of lr, reached by the probe's last step
    if rate >= 1.0:
        return replace(cfg, steps=n)
    warmup = max(min(cfg.warmup, n // 10), done + PROBE_STEPS)
    return replace(cfg, steps=n, warmup=warmup, warmup_from=done, warmup_rate=rate)


def refit(cfg: TrainConfig, done: int, seconds_per_step: float, seconds_left: float) -> TrainConfig:
    """``cfg`` with the ``done`` steps plus what ``seconds_left`` buys at ``seconds_per_step``; only
    the step count moves (the warm-up stays), which is how a run is re-sized mid-way."""
    return replace(cfg, steps=max(done, done + int(seconds_left / max(seconds_per_step, 1e-9))))


class _Fit:
    """Fits a run to a deadline: times :data:`PROBE_STEPS` steps and sizes the run (:func:`sized_to`),
    then re-sizes it after every twentieth of what is left (at least 12 steps), from the rate since
    the last sizing (:func:`refit`). The probe alone can be fooled: render workers start with steps rendered ahead,
    so the first steps of a render-bound GPU run go faster than the rest will. Late in a run a
    re-size moves the cosine by a few percent of lr at most."""

    def __init__(self, trainer: "Trainer", until: float) -> None:
        self.t, self.until = trainer, until
        self.probe_from = trainer.step + 1  # timing starts after the first step of this run
        self.mark: tuple[int, float] | None = None  # (step, time) of the last sizing

    def after_step(self, now: float) -> str | None:
        """Called after each step; returns a line to print when it sized the run."""
        t = self.t
        if t.probing:
            if t.step == self.probe_from:
                self.mark = (t.step, now)
            elif t.step == self.probe_from + PROBE_STEPS - 1:
                per_step = (now - self.mark[1]) / (PROBE_STEPS - 1)  # type: ignore[index]
                t.cfg, t.sized, t.probing = sized_to(t.cfg, t.step, per_step, self.until - now), True, False
                self.mark = (t.step, now)
                return (f"{t.name}: {per_step:.3g} s/step, {t.cfg.steps} steps fit in the "
                        f"{max(0.0, self.until - now) / 60:.3g} min left")
            return None
        if self.mark is None:  # a resumed run that was sized before: measure from here
            self.mark = (t.step, now)
        elif t.step - self.mark[0] >= max(2 * PROBE_STEPS, (t.cfg.steps - self.mark[0]) // 20):
            per_step = (now - self.mark[1]) / (t.step - self.mark[0])
            t.cfg, self.mark = refit(t.cfg, t.step, per_step, self.until - now), (t.step, now)
        return None


class CheckpointError(ValueError):
    """A stage checkpoint that cannot be used: corrupt, truncated, not ours, or another model's.
    ``bad_file``: the bytes themselves are wrong (deleting it loses nothing), not merely unreadable."""

    def __init__(self, message: str, bad_file: bool = True) -> None:
        super().__init__(message)
        self.bad_file = bad_file


_CKPT_KEYS = ("model", "opt", "step", "elapsed", "log", "config")


def load_checkpoint(path: Path) -> dict:
    """A stage checkpoint's state, or a :class:`CheckpointError` that says what to do: a file cut
    short by a full disk or a killed copy would otherwise surface as an unpickling error or a bare
    ``KeyError`` from deep inside torch."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:  # unreadable, not bad: permissions, I/O -- nothing to delete over
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}", bad_file=False) from None
    except Exception as e:  # torch raises a zoo of types for bad bytes (UnpicklingError, RuntimeError, EOFError, ...)
        raise CheckpointError(f"{path} is not a readable training checkpoint ({type(e).__name__}: "
                              "corrupt or truncated)") from None
    if not isinstance(state, dict) or any(k not in state for k in _CKPT_KEYS):
        raise CheckpointError(f"{path} is not a VideoMLA training checkpoint (keys missing)")
    return state


def read_checkpoint_log(path: Path) -> dict:
    """A checkpoint's record without its weights: step, wall time, loss log, config (as it ran,
    budget-sized or not), the device it trained on and the weights it started from (``init``: None for
    the stage's own initialisation, and for checkpoints older than these fields)."""
    st = load_checkpoint(path)
    return {"step": int(st["step"]), "elapsed_s": float(st["elapsed"]), "log": json.loads(st["log"]),
            "config": json.loads(st["config"]), "device": st.get("device"), "init": st.get("init")}


def device_label(device: torch.device) -> str:
    """Where a stage trained, for the model card: 'CPU (2 cores)' or 'GPU (NVIDIA H200)'."""
    if device.type == "cuda":
        return f"GPU ({torch.cuda.get_device_name(device)})"
    return f"{device.type.upper()} ({usable_cores()} cores)"


def usable_cores() -> int:
    """The cores this process may run on: inside a container ``os.cpu_count()`` is the host's count
    (a 2-core cpuset on a 64-core host would say 64), the affinity mask is the cpuset it was given.
    (A CFS quota such as ``docker --cpus=2`` is not in the mask; nothing here reads it.)"""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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
        self.sized = False  # steps set by a time budget (saved, so a resume keeps the schedule)
        self.probing = False  # timing steps before sizing: the rate ramps but does not decay yet
        self.init: str | None = None  # the weights the run started from, when not its own init (for the card)

    @property
    def ckpt_path(self) -> Path:
        return self.out / f"{self.name}.ckpt.pt"

    def lr_at(self, step: int) -> float:
        c = self.cfg
        if step < c.warmup:
            if step < c.warmup_from:  # the probe's steps of a budget-sized run, on the recipe's ramp
                return c.lr * c.warmup_rate * (step + 1) / c.warmup_from
            return c.lr * (c.warmup_rate + (1 - c.warmup_rate) * (step + 1 - c.warmup_from) / (c.warmup - c.warmup_from))
        if self.probing:  # the length is not known yet: the recipe's count may be shorter than the probe
            return c.lr
        progress = (step - c.warmup) / max(1, c.steps - c.warmup)
        return c.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))

    def save(self) -> None:
        state = {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "step": self.step,
                 "elapsed": self.elapsed, "log": json.dumps(self.log), "config": json.dumps(asdict(self.cfg)),
                 "sized": self.sized, "device": device_label(next(self.model.parameters()).device)}
        if self.init is not None:
            state["init"] = self.init
        with replacing(self.ckpt_path) as tmp:
            torch.save(state, tmp)

    def resume(self) -> bool:
        """Load the checkpoint if there is one; returns whether it did."""
        if not self.ckpt_path.exists():
            return False
        try:
            state = load_checkpoint(self.ckpt_path)
        except CheckpointError as e:
            if not e.bad_file:
                raise
            raise CheckpointError(f"{e}: delete it to train that stage from the start") from None
        try:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["opt"])
        except (RuntimeError, ValueError) as e:  # shapes or names of another recipe's model
            raise CheckpointError(f"{self.ckpt_path} belongs to a different model (its tensors do not fit this "
                                  f"{type(self.model).__name__}; another recipe's, or another stage's file): resume with "
                                  "the recipe that wrote it, or use another --out") from None
        self.step, self.elapsed, self.log = state["step"], state["elapsed"], json.loads(state["log"])
        self.init = state.get("init")
        if state.get("sized", False):  # a budget-sized run continues its own schedule
            saved = json.loads(state["config"])
            sized = {k: saved[k] for k in ("steps", "warmup", "warmup_from", "warmup_rate") if k in saved}
            self.cfg, self.sized = replace(self.cfg, **sized), True
        return True

    def run(self, max_minutes: float | None = None, quiet: bool = False,
            fit_until: float | None = None) -> list[dict]:
        """Train until ``cfg.steps`` or ``max_minutes``; checkpoints on the way and at the end.

        ``fit_until``: a ``time.monotonic()`` deadline the run is sized to end by, after
        :data:`PROBE_STEPS` timed steps, and re-sized to as it goes (:class:`_Fit`). Without it, a
        run sized before keeps its schedule.

        Ctrl-C (SIGINT, in the main thread) finishes the current step, checkpoints it and then
        raises ``KeyboardInterrupt``, so an interrupted run loses no finished step and ``--resume``
        continues bit-exactly (an interrupt inside the optimizer update could not promise that).
        """
        t0 = time.monotonic()
        interrupted = threading.Event()
        main = threading.current_thread() is threading.main_thread()
        old = signal.signal(signal.SIGINT, lambda *_: interrupted.set()) if main else None
        try:
            self._loop(t0, max_minutes, quiet, interrupted, fit_until)
        finally:
            self.probing = False
            if main:
                signal.signal(signal.SIGINT, old)
        self._checkpoint(t0)
        self.model.eval()
        if interrupted.is_set():
            raise KeyboardInterrupt
        return self.log

    def _loop(self, t0: float, max_minutes: float | None, quiet: bool, interrupted: threading.Event,
              fit_until: float | None) -> None:
        self.model.train()
        dev_type = next(self.model.parameters()).device.type
        self.probing = fit_until is not None and not self.sized
        fit = _Fit(self, fit_until) if fit_until is not None else None
        with Progress(TextColumn(f"[bold]{self.name}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(), disable=quiet) as bar:
            task = bar.add_task(self.name, total=self.cfg.steps, completed=self.step, loss="-")
            while self.step < self.cfg.steps or self.probing:
                if interrupted.is_set() or (max_minutes is not None and (time.monotonic() - t0) / 60 >= max_minutes):
                    break
                c = self.cfg
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
                if fit is not None:
                    line = fit.after_step(time.monotonic())
                    bar.update(task, total=self.cfg.steps)
                    if line and not quiet:
                        print(line, flush=True)
                if self.step % c.ckpt_every == 0:
                    self._checkpoint(t0)

    def _checkpoint(self, t0: float) -> None:
        elapsed, self.elapsed = self.elapsed, self.elapsed + time.monotonic() - t0
        self.save()
        self.elapsed = elapsed  # the running total is recomputed from t0 until the run ends
