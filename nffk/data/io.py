"""Atomic file writes: a file is written under a temporary name in the same folder, flushed
to disk and renamed over its final name, so a run killed at any moment leaves either the
complete old file, the complete new file, or a stray `*.tmp` that readers ignore."""
import json
import os
import zipfile
from pathlib import Path

import numpy as np

TEMP_SUFFIX = ".tmp"


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")


def _replace(temp: Path, path: Path) -> None:
    os.replace(temp, path)
    try:  # make the rename itself durable; not every file system lets a folder be opened
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _write_npz(f, arrays) -> None:
    """Like np.savez (uncompressed, loadable with np.load) but with a fixed time stamp on each
    member, so the same arrays always give the same bytes."""
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def atomic_save_npz(path, **arrays) -> None:
    path = Path(path)
    temp = _temp_path(path)
    try:
        with open(temp, "wb") as f:
            _write_npz(f, arrays)
            f.flush()
            os.fsync(f.fileno())
        _replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def atomic_write_json(path, obj) -> None:
    path = Path(path)
    temp = _temp_path(path)
    try:
        with open(temp, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        _replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def remove_temp_files(folder) -> int:
    """Delete leftovers of interrupted writes in `folder`; returns how many there were."""
    leftovers = list(Path(folder).glob(f".*{TEMP_SUFFIX}"))
    for path in leftovers:
        path.unlink(missing_ok=True)
    return len(leftovers)
