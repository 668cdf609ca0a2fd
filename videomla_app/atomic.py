"""Atomic file replacement: write beside the target, flush it to disk, then ``os.replace`` it.

Why: every file videomla writes at the end of long work (a training checkpoint, a session, an
evaluation report, a converted checkpoint, the model card) must never be seen half written. An
exception, a full disk or Ctrl-C during the write leaves the previous file (or none) and removes
the temporary one; the data is fsynced before the rename, so a power loss leaves the old file or
the new one. A process killed outright (SIGKILL, out of memory) cannot clean up: its temporary file
is removed by the next write of the same target, so killed checkpoint saves do not pile up.

The target is replaced, not written through: it gets the permissions its writer gives a new file
(the umask's for ``write_text`` and ``torch.save``, private for safetensors' ``save_file``), and a
symlink becomes a plain file.
"""

from __future__ import annotations

import glob
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _remove_stale(path: Path) -> None:
    """Temporary files of ``path`` left by processes that no longer run."""
    for old in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = old.name[len(path.name) + 2:-4].split("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            old.unlink(missing_ok=True)


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder to write; when the block ends without an
    exception, it is synced to disk and replaces ``path``, otherwise it is removed. The name holds
    the process and thread (two UI workers may save at once, and a dead process's file is known
    by its pid); not ``mkstemp``, which would make every file private."""
    path = Path(path)
    _remove_stale(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_native_id()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


__all__ = ["replacing"]
