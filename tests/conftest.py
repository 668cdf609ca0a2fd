"""Test-wide setup: offline, deterministic, Triton interpreter on CPU-only machines.

TRITON_INTERPRET must be set before any module decorates a Triton kernel, so it is set here at
import time. The application itself never runs the interpreter: its dispatch only uses Triton
kernels when ``videomla_kernels.triton_mode() == "gpu"``.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def new_file_mode() -> int:
    """The permissions the umask gives a new file (0644 under the usual 022): what files the app
    writes for others to read must get, not ``mkstemp``'s or ``save_file``'s private 0600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask
