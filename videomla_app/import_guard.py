"""Keep the repository's ``kernels/`` folder from passing for the PyPI package ``kernels``.

The folder is installed as ``videomla_kernels`` (pyproject ``package-dir``), because Hugging Face's
``kernels`` package exists and transformers imports it (recent transformers depends on it). But
when the repository root is on ``sys.path`` -- ``python -m videomla_app`` run from the checkout,
or ``PYTHONPATH=.`` as ``scripts/gpu_train.sh`` sets on a machine where nothing is installed --
``import kernels`` found the folder first: transformers took it for the real package and stopped
at ``from kernels import CUDAProperties`` while loading MiniLM, so every embedded-model command
failed there, and worked when run from anywhere else.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
OUR_KERNELS = REPO_ROOT / "kernels" / "__init__.py"


def _elsewhere() -> list[str]:
    """``sys.path`` without the entries that are the repository root ('' is the working folder)."""
    return [p for p in sys.path if isinstance(p, str) and Path(p or os.getcwd()).resolve() != REPO_ROOT]


class _RealKernels(importlib.abc.MetaPathFinder):
    """Finds ``kernels`` on ``sys.path`` as if the repository root were not on it."""

    def find_spec(self, name, path=None, target=None):
        if name != "kernels":
            return None
        return importlib.machinery.PathFinder.find_spec(name, _elsewhere())


def guard_kernels_name() -> str | None:
    """When ``import kernels`` would load our folder: point it at the real package if one is
    installed ("redirected"), else block it ("blocked": a None in ``sys.modules`` makes
    ``find_spec`` answer None and the import raise ImportError, which is what the libraries'
    checks for an absent package expect). Returns None when there was nothing to do."""
    if "kernels" in sys.modules or any(isinstance(f, _RealKernels) for f in sys.meta_path):
        return None
    try:
        spec = importlib.util.find_spec("kernels")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None or Path(spec.origin).resolve() != OUR_KERNELS:
        return None
    if importlib.machinery.PathFinder.find_spec("kernels", _elsewhere()) is not None:
        sys.meta_path.insert(0, _RealKernels())
        return "redirected"
    sys.modules["kernels"] = None  # type: ignore[assignment]
    return "blocked"
