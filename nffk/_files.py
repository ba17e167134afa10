"""Atomic file writes, used wherever a killed run must never leave a torn file (datasets, metrics,
checkpoints, reports): the content goes to a temporary file in the same folder (`.NAME.*.tmp`,
which readers ignore), is flushed to disk and renamed over NAME, so readers see the complete old
file or the complete new one."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

TEMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_file(path, mode: str = "w", durable: bool = True):
    """`with atomic_file(path, "wb") as handle: ...` writes `path` atomically. durable: fsync the
    file and its folder, so the new content also survives a machine crash."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temp, path)
        if durable:
            _fsync_folder(path.parent)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def _fsync_folder(folder: Path) -> None:
    try:  # makes the rename itself durable; not every file system lets a folder be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
