"""Users' own data: extended XYZ files (read with ase) with energies and forces.

rMD17-, SPICE- or OMol25-style files work as long as each frame has an energy (in the comment
line, e.g. `energy=-1234.5` or `REF_energy=...`) and per-atom forces (a `forces` or `REF_forces`
column). `import_extxyz` then builds a dataset folder exactly like the generated one: split by
molecule, per-element reference energies fitted on train, normalisation statistics, shards.
"""
from collections import Counter
from pathlib import Path

import numpy as np
from ase.units import Bohr, Hartree, kJ, kcal, mol

from nffk.data.store import assign_splits, finalize, shard_name, write_shard
from nffk.data.structure import Structure

ENERGY_UNITS = {"eV": 1.0, "meV": 1e-3, "Hartree": Hartree, "Ha": Hartree, "kcal/mol": kcal / mol,
                "kJ/mol": kJ / mol}
LENGTH_UNITS = {"Å": 1.0, "A": 1.0, "Ang": 1.0, "Angstrom": 1.0, "Bohr": Bohr}
MOLECULE_KEYS = ("molecule", "mol_id", "molecule_id", "mol_index")
MIN_GROUPS_TO_SPLIT = 10


def energy_scale(unit: str) -> float:
    if unit not in ENERGY_UNITS:
        raise ValueError(f"energy_unit must be one of {sorted(ENERGY_UNITS)}, got {unit!r}")
    return ENERGY_UNITS[unit]


def force_scale(unit: str) -> float:
    """eV/Å per `unit`, written energy/length such as 'eV/Å', 'kcal/mol/Å', 'Hartree/Bohr'."""
    energy, _, length = unit.rpartition("/")
    if energy not in ENERGY_UNITS or length not in LENGTH_UNITS:
        raise ValueError(f"force_unit must be <energy>/<length> with energy in {sorted(ENERGY_UNITS)} and "
                         f"length in {sorted(LENGTH_UNITS)}, got {unit!r}")
    return ENERGY_UNITS[energy] / LENGTH_UNITS[length]


def _energy(atoms, key: str, frame: int, path) -> float:
    if key in atoms.info:
        return float(atoms.info[key])
    if atoms.calc is not None and key in atoms.calc.results:  # ase moves `energy` into a calculator
        return float(atoms.calc.results[key])
    available = sorted(atoms.info) + (sorted(atoms.calc.results) if atoms.calc is not None else [])
    raise ValueError(f"{path}, frame {frame}: no energy under energy_key={key!r}; keys found: {available}")


def _forces(atoms, key: str, frame: int, path) -> np.ndarray:
    if key in atoms.arrays:
        return np.asarray(atoms.arrays[key], dtype=np.float64)
    if atoms.calc is not None and key in atoms.calc.results:
        return np.asarray(atoms.calc.results[key], dtype=np.float64)
    available = sorted(atoms.arrays) + (sorted(atoms.calc.results) if atoms.calc is not None else [])
    raise ValueError(f"{path}, frame {frame}: no forces under forces_key={key!r}; per-atom keys found: {available}")


def read_extxyz(path, energy_key: str = "energy", forces_key: str = "forces", molecule_key: str | None = None,
                energy_unit: str = "eV", force_unit: str = "eV/Å", index=":") -> list[Structure]:
    """Read every frame (or `index`, ase syntax) of an extended XYZ file as `Structure`s in eV, Å.

    molecule_key: a per-frame info key holding a molecule id (an integer or a name); frames
        without it, or all frames when None, get molecule = -1.
    """
    from ase.io import read

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    e_scale, f_scale = energy_scale(energy_unit), force_scale(force_unit)
    frames = read(path, index=index, format="extxyz")
    frames = frames if isinstance(frames, list) else [frames]
    names: dict = {}
    structures = []
    for k, atoms in enumerate(frames):
        pbc = np.asarray(atoms.pbc, dtype=bool)
        molecule = -1
        if molecule_key is not None and molecule_key in atoms.info:
            value = atoms.info[molecule_key]
            molecule = int(value) if isinstance(value, (int, np.integer)) else names.setdefault(str(value), len(names))
        structure = Structure(
            numbers=atoms.numbers.astype(np.int64),
            positions=atoms.positions.astype(np.float64),
            energy=_energy(atoms, energy_key, k, path) * e_scale,
            forces=_forces(atoms, forces_key, k, path) * f_scale,
            cell=atoms.cell.array.astype(np.float64) if pbc.any() else None,
            pbc=pbc if pbc.any() else None,
            molecule=molecule,
        )
        structures.append(structure.validate(f"{path}, frame {k}"))
    if not structures:
        raise ValueError(f"{path} holds no frames")
    return structures


def formula(numbers: np.ndarray) -> str:
    counts = Counter(numbers.tolist())
    return " ".join(f"{z}:{counts[z]}" for z in sorted(counts))


def group_ids(structures: list[Structure], group_by: str) -> tuple[np.ndarray, str]:
    """Molecule (group) id per structure, and how it was decided. `group_by` is 'molecule' (the
    ids read from the file), 'formula' (same composition = same molecule, which also groups
    isomers: conservative), 'structure' (every structure alone) or 'auto': 'molecule' if the
    file has ids, else 'formula', else 'structure' when that leaves too few groups to split."""
    if group_by == "auto":
        if all(s.molecule >= 0 for s in structures):
            group_by = "molecule"
        else:
            ids, _ = group_ids(structures, "formula")
            if np.unique(ids).shape[0] >= MIN_GROUPS_TO_SPLIT:
                return ids, "formula"
            group_by = "structure"
    if group_by == "molecule":
        if any(s.molecule < 0 for s in structures):
            raise ValueError("group_by='molecule' needs a molecule id on every frame (see molecule_key)")
        return np.array([s.molecule for s in structures], dtype=np.int64), "molecule"
    if group_by == "formula":
        seen: dict = {}
        return np.array([seen.setdefault(formula(s.numbers), len(seen)) for s in structures], np.int64), "formula"
    if group_by == "structure":
        return np.arange(len(structures), dtype=np.int64), "structure"
    raise ValueError(f"group_by must be 'auto', 'molecule', 'formula' or 'structure', got {group_by!r}")


def build_dataset(structures: list[Structure], root, seed: int = 0, fractions=(0.8, 0.1, 0.1),
                  group_by: str = "auto", shard_size: int = 4096, info: dict | None = None,
                  overwrite: bool = False) -> Path:
    """Write structures as a dataset folder: split by group, shards, reference energies, statistics."""
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise ValueError(f"{root} exists and is not empty; choose another folder or pass overwrite=True")
        import shutil
        shutil.rmtree(root)
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    root.mkdir(parents=True, exist_ok=True)
    groups, how = group_ids(structures, group_by)
    owner = assign_splits(groups, fractions, seed)
    split_of = {int(g): split for split, ids in owner.items() for g in ids}
    for split in owner:
        members = [k for k in range(len(structures)) if split_of[int(groups[k])] == split]
        for n, start in enumerate(range(0, len(members), shard_size)):
            chunk = members[start:start + shard_size]
            picked = [Structure(**{**vars(structures[k]), "molecule": int(groups[k])}) for k in chunk]
            write_shard(root / shard_name(split, n), picked, extras={"index": np.array(chunk, dtype=np.int64)})
    finalize(root, {**(info or {}), "seed": int(seed), "split_fractions": [float(f) for f in fractions],
                    "grouped_by": how, "shard_size": int(shard_size)})
    return root


def import_extxyz(path, root, energy_key: str = "energy", forces_key: str = "forces",
                  molecule_key: str | None = None, energy_unit: str = "eV", force_unit: str = "eV/Å",
                  group_by: str = "auto", seed: int = 0, fractions=(0.8, 0.1, 0.1), shard_size: int = 4096,
                  overwrite: bool = False) -> Path:
    """Build a dataset folder from an extended XYZ file (see `read_extxyz`, `build_dataset`)."""
    if molecule_key is None and group_by == "auto":
        molecule_key = _first_molecule_key(path)
    structures = read_extxyz(path, energy_key, forces_key, molecule_key, energy_unit, force_unit)
    info = {"source": f"extended XYZ file {Path(path).name}", "generator": "nffk.data.import_extxyz",
            "energy_key": energy_key, "forces_key": forces_key, "molecule_key": molecule_key,
            "input_units": {"energy": energy_unit, "forces": force_unit}}
    return build_dataset(structures, root, seed, fractions, group_by, shard_size, info, overwrite)


def _first_molecule_key(path) -> str | None:
    from ase.io import read

    first = read(path, index=0, format="extxyz")
    return next((key for key in MOLECULE_KEYS if key in first.info), None)
