"""The QM9 molecules (133,885 small organic molecules of H, C, N, O, F; 130,831 in `qm9pack`)
with their B3LYP equilibrium geometries, read from the CSV files shipped by `qm9pack`.

`import qm9pack` itself is broken on recent setuptools (it needs `pkg_resources`), so the CSVs
are located with `importlib.util.find_spec` and parsed here. Parsing the three files (~225 MB)
takes a few seconds, so the result is cached once as a compact `.npz` (atomic numbers, positions
and offsets) in `$NFFK_CACHE_DIR` or `~/.cache/nffk`.
"""
import importlib.util
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nffk.data.io import atomic_save_npz

CSV_NAMES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
SYMBOL_TO_Z = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
CACHE_NAME = "qm9pack-v1.npz"


@dataclass
class Molecules:
    """All molecules in flat arrays: molecule i has atoms ptr[i]:ptr[i+1]."""
    numbers: np.ndarray    # int8 [atoms]
    positions: np.ndarray  # float64 [atoms, 3], Å
    ptr: np.ndarray        # int64 [molecules + 1]
    index: np.ndarray      # int64 [molecules], the QM9 (gdb9) index, used as molecule id

    def __len__(self):
        return int(self.index.shape[0])

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Atomic numbers (int64) and positions (Å) of molecule number i (0-based row, not QM9 index)."""
        a, b = self.ptr[i], self.ptr[i + 1]
        return self.numbers[a:b].astype(np.int64), self.positions[a:b].copy()


def data_folder() -> Path:
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the QM9 molecules come from the `qm9pack` package: pip install qm9pack")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    missing = [name for name in CSV_NAMES if not (folder / name).exists()]
    if missing:
        raise RuntimeError(f"qm9pack is installed but {missing} are missing from {folder}")
    return folder


def cache_dir() -> Path:
    return Path(os.environ.get("NFFK_CACHE_DIR") or Path.home() / ".cache" / "nffk")


def parse_csvs(folder: Path) -> Molecules:
    import pandas as pd  # only needed when the cache is built

    frames = [pd.read_csv(folder / name, usecols=["Index", "N_atoms", "Elements", "XYZ_Ang"])
              for name in CSV_NAMES]
    table = pd.concat(frames, ignore_index=True).sort_values("Index", kind="stable")
    counts = table["N_atoms"].to_numpy(np.int64)
    # Elements look like "['C','H','H']", positions like "[[x,y,z],[x,y,z]]": both are parsed as
    # flat comma-separated text in one call each, which is ~50x faster than a JSON parse per row.
    symbols = ",".join(text.strip("[]") for text in table["Elements"]).replace("'", "").split(",")
    numbers = np.array([SYMBOL_TO_Z[s] for s in symbols], dtype=np.int8)
    flat = ",".join(text.replace("[", "").replace("]", "") for text in table["XYZ_Ang"])
    positions = np.array(flat.split(","), dtype=np.float64).reshape(-1, 3)
    if numbers.shape[0] != counts.sum() or positions.shape[0] != counts.sum():
        raise RuntimeError(f"QM9 CSVs in {folder} are inconsistent: {counts.sum()} atoms by N_atoms, "
                           f"{numbers.shape[0]} element symbols, {positions.shape[0]} positions")
    ptr = np.concatenate([[0], np.cumsum(counts)])
    return Molecules(numbers, positions, ptr, table["Index"].to_numpy(np.int64))


def load_qm9(cache: Path | str | None = None) -> Molecules:
    """All QM9 molecules of `qm9pack`, parsed once and cached (see module docstring)."""
    path = Path(cache) if cache is not None else cache_dir() / CACHE_NAME
    if path.exists():
        try:
            with np.load(path) as f:
                return Molecules(f["numbers"], f["positions"], f["ptr"], f["index"])
        except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, never trusted
            pass
    molecules = parse_csvs(data_folder())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save_npz(path, numbers=molecules.numbers, positions=molecules.positions,
                        ptr=molecules.ptr, index=molecules.index)
    except OSError as error:  # a read-only home only costs the parse next time
        warnings.warn(f"cannot cache the parsed QM9 molecules in {path} ({error}); set NFFK_CACHE_DIR "
                      "to a writable folder to save a few seconds per run", stacklevel=2)
    return molecules
