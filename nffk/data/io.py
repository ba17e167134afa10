"""Dataset files written atomically (see nffk._files): a run killed at any moment leaves the
complete old file, the complete new file, or a stray `.*.tmp` that readers ignore and
`remove_temp_files` deletes."""
import json
import zipfile
from pathlib import Path

import numpy as np

from nffk._files import TEMP_SUFFIX, atomic_file


def _write_npz(f, arrays) -> None:
    """Like np.savez (uncompressed, loadable with np.load) but with a fixed time stamp on each
    member, so the same arrays always give the same bytes."""
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def atomic_save_npz(path, **arrays) -> None:
    with atomic_file(path, "wb") as f:
        _write_npz(f, arrays)


def atomic_write_json(path, obj) -> None:
    with atomic_file(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def remove_temp_files(folder) -> int:
    """Delete leftovers of interrupted writes in `folder`; returns how many there were."""
    leftovers = list(Path(folder).glob(f".*{TEMP_SUFFIX}"))
    for path in leftovers:
        path.unlink(missing_ok=True)
    return len(leftovers)
