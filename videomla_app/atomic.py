"""Atomic file replacement: write beside the target, then ``os.replace`` it in one step.

Why: every file videomla writes at the end of long work (a training checkpoint, a session, an
evaluation report, a converted checkpoint) must never be seen half written. A crash, a full disk
or Ctrl-C during the write leaves the previous file (or none) and no temporary file behind.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; when the block ends without an exception, it
    replaces ``path``, otherwise it is removed. The name is unique per process and thread (two UI
    workers may save at once), and the file gets the usual permissions (``mkstemp`` would make it
    private)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


__all__ = ["replacing"]
