"""How sure an evaluation is: the spread over prompts, and paired model-vs-model differences.

A mean over 8 prompts moves by several points with the seeds alone (measured on ``tiny``, 8 prompts
x 30 s, seeds 0-7 against 100-107: 0-9 points per metric), so a table of means cannot say whether
two models are "within 2 points". Two numbers can:

- the **standard error** of a model's mean over prompts (std over per-prompt means / sqrt(n));
- the **paired difference** of two models run on the same prompts with the same seeds: per prompt
  A - B, then its mean and standard error. Pairing removes what the prompt and seed contribute to
  both models, so it resolves smaller differences than comparing two means with their own errors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def prompt_means(per_prompt: list[dict], keys: Sequence[str]) -> list[dict[str, float | None]]:
    """Each prompt's frame-weighted mean over its segments, per metric (None where never defined)."""
    out = []
    for p in per_prompt:
        row: dict[str, float | None] = {}
        for k in keys:
            pairs = [(s[k], s["frames"]) for s in p["segments"] if s.get(k) is not None]
            row[k] = float(np.average([v for v, _ in pairs], weights=[w for _, w in pairs])) if pairs else None
        out.append(row)
    return out


def standard_error(values: Sequence[float | None]) -> float | None:
    """Sample std / sqrt(n) of the values that are not None; None below two values."""
    v = [x for x in values if x is not None]
    if len(v) < 2:
        return None
    return float(np.std(v, ddof=1) / math.sqrt(len(v)))


def paired_difference(a: list[dict[str, float | None]], b: list[dict[str, float | None]],
                      keys: Sequence[str]) -> dict[str, dict[str, float | int | None]]:
    """Per metric: mean and standard error of a - b over the prompts where both are defined."""
    if len(a) != len(b):
        raise ValueError(f"paired comparison needs the same prompts: {len(a)} vs {len(b)} results")
    out = {}
    for k in keys:
        d = [x[k] - y[k] for x, y in zip(a, b) if x[k] is not None and y[k] is not None]  # type: ignore[operator]
        out[k] = {"mean": float(np.mean(d)) if d else None, "sem": standard_error(d), "n": len(d)}
    return out
