"""The on-disk dataset: a folder with `meta.json` and `.npz` shards, one list of shards per split.

    root/
      meta.json            sizes, elements, reference energies, statistics, units, settings
      settings.json        what was asked for (a resumed run must ask for the same)
      train-00000.npz ...  shards; val-*.npz, test-*.npz likewise

A shard holds consecutive structures as flat arrays: `numbers` (uint8 [atoms]), `positions`
(float64 [atoms, 3], Å), `forces` (float32 [atoms, 3], eV/Å), `energy` (float64 [S], eV, total),
`num_atoms`, `molecule` (int64 [S]), `cell` (float64 [S, 3, 3]), `pbc` (bool [S, 3]) and optional
per-structure extras (`conformer`, `temperature`, `rejected` for generated data). Shards are
written atomically (`nffk.data.io`), so a shard file that exists is complete.

Splits are by molecule: every structure carries a molecule (group) id, groups are shuffled
with the seed and cut into train/val/test, so no molecule appears in two splits. Per-element
reference energies are fitted by least squares on the training split, E ~ sum_i e_ref[Z_i],
and the statistics used for normalisation are computed on the training split after
subtracting them.
"""
import json
from pathlib import Path

import numpy as np
import torch

from nffk.data.io import atomic_save_npz, atomic_write_json
from nffk.data.structure import Structure

FORMAT = "nffk-dataset"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"validation": "val", "valid": "val", "training": "train"}
UNITS = {"positions": "Å", "energy": "eV", "forces": "eV/Å", "cell": "Å"}
PER_ATOM = ("numbers", "positions", "forces")
SPLIT_STREAM = 0x5B1175  # keeps the split's random stream apart from the sampler's


class ShardError(ValueError):
    """A shard file is missing, unreadable or inconsistent."""


# ----------------------------------------------------------------------------- shards

def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.npz"


def write_shard(path, structures: list[Structure], extras: dict | None = None) -> None:
    """Write structures (and optional per-structure extra arrays) as one shard, atomically."""
    if not structures:
        raise ValueError("a shard needs at least one structure")
    arrays = {
        "numbers": np.concatenate([s.numbers for s in structures]).astype(np.uint8),
        "positions": np.concatenate([s.positions for s in structures]).astype(np.float64),
        "forces": np.concatenate([s.forces for s in structures]).astype(np.float32),
        "energy": np.array([s.energy for s in structures], dtype=np.float64),
        "num_atoms": np.array([s.num_atoms for s in structures], dtype=np.int64),
        "molecule": np.array([s.molecule for s in structures], dtype=np.int64),
        "cell": np.stack([np.zeros((3, 3)) if s.cell is None else s.cell for s in structures]).astype(np.float64),
        "pbc": np.stack([np.zeros(3, bool) if s.pbc is None else s.pbc for s in structures]).astype(bool),
    }
    for name, values in (extras or {}).items():
        values = np.asarray(values)
        if values.shape[0] != len(structures):
            raise ValueError(f"extra {name!r} has {values.shape[0]} entries for {len(structures)} structures")
        arrays[name] = values
    atomic_save_npz(path, **arrays)


def read_shard(path) -> dict:
    """All arrays of a shard, checked for consistency; raises ShardError if it is damaged."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
    except Exception as error:  # noqa: BLE001 - truncated zip, bad CRC, missing file...
        raise ShardError(f"cannot read shard {path}: {error}") from error
    required = ("numbers", "positions", "forces", "energy", "num_atoms", "molecule", "cell", "pbc")
    missing = [name for name in required if name not in arrays]
    if missing:
        raise ShardError(f"shard {path} lacks {missing}")
    structures, atoms = arrays["energy"].shape[0], int(arrays["num_atoms"].sum())
    if (arrays["numbers"].shape != (atoms,) or arrays["positions"].shape != (atoms, 3)
            or arrays["forces"].shape != (atoms, 3) or arrays["cell"].shape != (structures, 3, 3)
            or arrays["pbc"].shape != (structures, 3) or arrays["molecule"].shape != (structures,)
            or arrays["num_atoms"].shape != (structures,)):
        raise ShardError(f"shard {path} has inconsistent array shapes")
    return arrays


def concatenate_shards(shards: list[dict]) -> dict:
    if not shards:
        return {"numbers": np.zeros(0, np.uint8), "positions": np.zeros((0, 3)),
                "forces": np.zeros((0, 3), np.float32), "energy": np.zeros(0),
                "num_atoms": np.zeros(0, np.int64), "molecule": np.zeros(0, np.int64),
                "cell": np.zeros((0, 3, 3)), "pbc": np.zeros((0, 3), bool)}
    common = set.intersection(*(set(s) for s in shards))
    return {name: np.concatenate([s[name] for s in shards]) for name in sorted(common)}


# ----------------------------------------------------------------------------- splits

def split_sizes(count: int, fractions) -> tuple[int, int, int]:
    """Groups per split: val and test get round(fraction * count), at least one each when their
    fraction is positive and there are at least three groups; train gets the rest."""
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or fractions[0] <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split fractions must be three numbers (train, val, test) >= 0 summing to 1 "
                         f"with train > 0, got {fractions}")
    sizes = [0, 0, 0]
    for k in (1, 2):
        if fractions[k] > 0:
            sizes[k] = max(int(round(fractions[k] * count)), 1 if count >= 3 else 0)
    sizes[0] = count - sizes[1] - sizes[2]
    if sizes[0] < 1:
        raise ValueError(f"{count} molecules are too few to split with fractions {fractions}")
    return tuple(sizes)


def assign_splits(groups, fractions, seed: int) -> dict[str, np.ndarray]:
    """Split the distinct group ids (molecules) into train/val/test, deterministically from seed.
    Returns split -> sorted array of the group ids it owns."""
    unique = np.unique(np.asarray(groups, dtype=np.int64))
    order = np.random.default_rng([SPLIT_STREAM, seed]).permutation(unique.shape[0])
    n_train, n_val, _ = split_sizes(unique.shape[0], fractions)
    shuffled = unique[order]
    parts = (shuffled[:n_train], shuffled[n_train:n_train + n_val], shuffled[n_train + n_val:])
    return {split: np.sort(part) for split, part in zip(SPLITS, parts)}


# ----------------------------------------------------------------------------- references, statistics

def composition(numbers: np.ndarray, num_atoms: np.ndarray, elements) -> np.ndarray:
    """counts[s, k] = how many atoms of element elements[k] structure s has."""
    elements = np.asarray(elements, dtype=np.int64)
    column = np.full(119, -1, dtype=np.int64)
    column[elements] = np.arange(elements.shape[0])
    structure = np.repeat(np.arange(num_atoms.shape[0]), num_atoms)
    counts = np.zeros((num_atoms.shape[0], elements.shape[0]))
    np.add.at(counts, (structure, column[numbers.astype(np.int64)]), 1.0)
    return counts


def fit_reference_energies(numbers, num_atoms, energy, elements) -> np.ndarray:
    """Least-squares per-element energies e[k] minimising sum_s (E_s - sum_k counts[s,k] e[k])^2.
    When the compositions do not determine them (e.g. a single molecule) the minimum-norm
    solution is returned, which still removes the composition-dependent part of the energy."""
    counts = composition(np.asarray(numbers), np.asarray(num_atoms), elements)
    solution, *_ = np.linalg.lstsq(counts, np.asarray(energy, dtype=np.float64), rcond=None)
    return solution


def residual_energy(arrays: dict, reference: dict[int, float]) -> np.ndarray:
    table = np.zeros(119)
    for z, value in reference.items():
        table[int(z)] = value
    structure = np.repeat(np.arange(arrays["num_atoms"].shape[0]), arrays["num_atoms"])
    per_structure = np.bincount(structure, weights=table[arrays["numbers"].astype(np.int64)],
                                minlength=arrays["num_atoms"].shape[0])
    return arrays["energy"] - per_structure


def statistics(arrays: dict, reference: dict[int, float]) -> dict:
    """Normalisation statistics of a split after subtracting the reference energies."""
    if arrays["energy"].shape[0] == 0:
        return {}
    per_atom = residual_energy(arrays, reference) / arrays["num_atoms"]
    forces = arrays["forces"].astype(np.float64)
    return {
        "energy_per_atom_mean": float(per_atom.mean()),
        "energy_per_atom_std": float(per_atom.std()),
        "energy_per_atom_rms": float(np.sqrt((per_atom ** 2).mean())),
        "force_rms": float(np.sqrt((forces ** 2).mean())),
        "force_norm_mean": float(np.linalg.norm(forces, axis=1).mean()),
        "force_max": float(np.abs(forces).max()),
        "atoms_per_structure_mean": float(arrays["num_atoms"].mean()),
    }


# ----------------------------------------------------------------------------- meta

def split_shard_paths(root: Path, split: str) -> list[Path]:
    return sorted(Path(root).glob(f"{split}-[0-9][0-9][0-9][0-9][0-9].npz"))


def finalize(root, info: dict, expected_structures: int | None = None) -> dict:
    """Read every shard, fit reference energies on train, compute statistics, write meta.json.
    `info` (source, seed, settings, ...) is stored as given; with `expected_structures`, the
    number of structures that could not be labelled is recorded as `dropped_structures`."""
    root = Path(root)
    splits = {split: concatenate_shards([read_shard(p) for p in split_shard_paths(root, split)])
              for split in SPLITS}
    train = splits["train"]
    if train["energy"].shape[0] == 0:
        raise ValueError(f"{root} has no training structures")
    elements = sorted(set().union(*(np.unique(a["numbers"]).tolist() for a in splits.values())))
    train_elements = np.unique(train["numbers"]).astype(np.int64)
    fitted = fit_reference_energies(train["numbers"], train["num_atoms"], train["energy"], train_elements)
    reference = {int(z): float(e) for z, e in zip(train_elements, fitted)}
    unseen = [z for z in elements if z not in reference]
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        **info,
        "units": UNITS,
        "elements": [int(z) for z in elements],
        "elements_without_reference": unseen,  # in val/test only: their reference energy is 0
        "reference_energies": {str(z): e for z, e in reference.items()},
        "splits": {},
        "statistics": statistics(train, reference),
    }
    for split, arrays in splits.items():
        entry = {
            "structures": int(arrays["energy"].shape[0]),
            "atoms": int(arrays["num_atoms"].sum()),
            "molecules": int(np.unique(arrays["molecule"]).shape[0]),
            "shards": [p.name for p in split_shard_paths(root, split)],
        }
        if "rejected" in arrays:
            entry["rejected_attempts"] = int(arrays["rejected"].sum())
        if split != "train":  # what a model that predicts only reference energies and zero forces scores
            entry["residual_statistics"] = statistics(arrays, reference)
        meta["splits"][split] = entry
    if expected_structures is not None:
        stored = sum(entry["structures"] for entry in meta["splits"].values())
        meta["dropped_structures"] = int(expected_structures - stored)
    atomic_write_json(root / "meta.json", meta)
    return meta


def read_meta(root) -> dict:
    path = Path(root) / "meta.json"
    if not path.exists():
        hint = (" (generation was interrupted: rerun the same `nffk data generate` to finish it)"
                if (Path(root) / "settings.json").exists() else "")
        raise FileNotFoundError(f"{root} is not a finished nffk dataset: no meta.json{hint}")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not an nffk dataset (format {meta.get('format')!r})")
    if meta.get("version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path} has format version {meta['version']}; this nffk reads up to {FORMAT_VERSION}")
    return meta


# ----------------------------------------------------------------------------- in memory

class StructureDataset(torch.utils.data.Dataset):
    """The structures of one split, held in memory as flat arrays; item i is a `Structure`.

    `meta` is the dataset's meta.json (reference energies, statistics, units, sizes)."""

    def __init__(self, arrays: dict, meta: dict | None = None, split: str = "train"):
        self.arrays = arrays
        self.meta = meta or {}
        self.split = split
        self.ptr = np.concatenate([[0], np.cumsum(arrays["num_atoms"])]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.arrays["energy"].shape[0])

    def __getitem__(self, i: int) -> Structure:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} structures")
        i = int(i) % len(self)
        a, b = self.ptr[i], self.ptr[i + 1]
        pbc = self.arrays["pbc"][i]
        return Structure(
            numbers=self.arrays["numbers"][a:b].astype(np.int64),
            positions=self.arrays["positions"][a:b],
            energy=float(self.arrays["energy"][i]),
            forces=self.arrays["forces"][a:b],
            cell=self.arrays["cell"][i] if pbc.any() else None,
            pbc=pbc if pbc.any() else None,
            molecule=int(self.arrays["molecule"][i]),
        )

    @property
    def num_atoms(self) -> np.ndarray:
        return self.arrays["num_atoms"]

    @property
    def total_atoms(self) -> int:
        return int(self.ptr[-1])

    @property
    def reference_energies(self) -> dict[int, float]:
        """Element -> reference energy (eV), fitted on the training split."""
        return {int(z): e for z, e in self.meta.get("reference_energies", {}).items()}

    @property
    def statistics(self) -> dict:
        return self.meta.get("statistics", {})

    def reference_energy_table(self, size: int = 119) -> torch.Tensor:
        """Reference energies as a float64 tensor indexed by atomic number (0 where unknown)."""
        table = torch.zeros(size, dtype=torch.float64)
        for z, e in self.reference_energies.items():
            table[z] = e
        return table

    def subset(self, indices) -> "StructureDataset":
        """A new dataset of the given structures, in the given order."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise ValueError(f"indices must lie in [0, {len(self)}), got range [{indices.min()}, {indices.max()}]")
        counts = self.num_atoms[indices]
        # atom j of the subset is atom (j - first atom of its structure in the subset) + start there
        new_starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        atom_index = np.arange(int(counts.sum())) + np.repeat(self.ptr[indices] - new_starts, counts)
        arrays = {name: values[atom_index] if name in PER_ATOM else values[indices]
                  for name, values in self.arrays.items()}
        return StructureDataset(arrays, self.meta, self.split)

    def take_atoms(self, num_atoms: int) -> "StructureDataset":
        """The shortest prefix holding at least `num_atoms` atoms (data size counted in atoms).
        Shards keep all conformers of a molecule together, so a prefix is a set of molecules."""
        if num_atoms < 1:
            raise ValueError(f"num_atoms must be >= 1, got {num_atoms}")
        if num_atoms > self.total_atoms:
            raise ValueError(f"asked for {num_atoms} atoms but the {self.split} split has only {self.total_atoms}")
        count = int(np.searchsorted(self.ptr, num_atoms, side="left"))
        return self.subset(np.arange(count))

    def __repr__(self) -> str:
        return f"StructureDataset(split={self.split!r}, structures={len(self)}, atoms={self.total_atoms})"


def canonical_split(split: str) -> str:
    split = SPLIT_ALIASES.get(split, split)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} (or 'validation'), got {split!r}")
    return split


def load_dataset(root, split: str = "train") -> StructureDataset:
    """Load one split of a dataset folder written by `generate_dataset` or `import_extxyz`."""
    split = canonical_split(split)
    meta = read_meta(root)
    shards = [read_shard(Path(root) / name) for name in meta["splits"][split]["shards"]]
    return StructureDataset(concatenate_shards(shards), meta, split)
