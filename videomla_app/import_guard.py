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

# Files only our folder has: installed without -e, the `kernels` in site-packages is Hugging Face's.
OUR_FILES = ("mla_attention.py", "reference.py")


def _ours(origin: str | None) -> Path | None:
    """The folder that holds ``kernels/`` when ``origin`` is our ``kernels/__init__.py``, else None."""
    if origin is None:
        return None
    folder = Path(origin).resolve().parent
    return folder.parent if all((folder / f).is_file() for f in OUR_FILES) else None


def _elsewhere(root: Path) -> list[str]:
    """``sys.path`` without the entries that are ``root`` ('' is the working folder; a deleted one is
    skipped, as Python's import system does)."""
    out = []
    for p in sys.path:
        if not isinstance(p, str):
            continue
        try:
            if Path(p or os.getcwd()).resolve() != root:
                out.append(p)
        except OSError:
            continue
    return out


class _RealKernels(importlib.abc.MetaPathFinder):
    """Finds ``kernels`` on ``sys.path`` as if ``root`` (the folder holding ours) were not on it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def find_spec(self, name, path=None, target=None):
        if name != "kernels":
            return None
        return importlib.machinery.PathFinder.find_spec(name, _elsewhere(self.root))


def guard_kernels_name() -> str | None:
    """When ``import kernels`` would load our folder: point it at the real package if one is
    installed ("redirected"), else block it ("blocked": a None in ``sys.modules`` makes
    ``find_spec`` answer None and the import raise ImportError, which is what the libraries'
    checks for an absent package expect). Returns None when there was nothing to do; never raises
    (it runs when ``videomla_app`` is imported)."""
    if "kernels" in sys.modules or any(isinstance(f, _RealKernels) for f in sys.meta_path):
        return None
    try:
        root = _ours(getattr(importlib.util.find_spec("kernels"), "origin", None))
        if root is None:
            return None
        if importlib.machinery.PathFinder.find_spec("kernels", _elsewhere(root)) is not None:
            sys.meta_path.insert(0, _RealKernels(root))
            return "redirected"
    except (ImportError, ValueError, OSError):  # a broken path entry, a deleted working folder
        return None
    sys.modules["kernels"] = None  # type: ignore[assignment]
    return "blocked"
