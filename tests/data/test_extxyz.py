"""Users' extended XYZ files: read back what ase wrote, units, import into a dataset folder."""
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from ase.units import Hartree, kcal, mol

from nffk.cli import main
from nffk.data import import_extxyz, load_dataset, read_extxyz


def frames(count=30, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        n = int(rng.integers(2, 7))
        atoms = Atoms(numbers=rng.choice([1, 6, 8], n), positions=rng.normal(size=(n, 3)) * 2)
        if k % 3 == 0:
            atoms.cell = np.diag(rng.uniform(5, 8, 3))
            atoms.pbc = [True, True, k % 2 == 0]
        atoms.info["mol_id"] = k // 2  # two conformers per molecule
        atoms.calc = SinglePointCalculator(atoms, energy=float(rng.normal() * 100), forces=rng.normal(size=(n, 3)))
        out.append(atoms)
    return out


def test_round_trip_of_a_file_written_by_ase(tmp_path):
    original = frames()
    write(tmp_path / "data.xyz", original, format="extxyz")
    structures = read_extxyz(tmp_path / "data.xyz", molecule_key="mol_id")
    assert len(structures) == len(original)
    for s, atoms in zip(structures, original):
        assert np.array_equal(s.numbers, atoms.numbers)
        np.testing.assert_allclose(s.positions, atoms.positions, rtol=0, atol=1e-7)  # ase writes 8 decimals
        np.testing.assert_allclose(s.forces, atoms.get_forces(), rtol=0, atol=1e-7)  # ase writes 8 decimals
        assert s.energy == pytest.approx(atoms.get_potential_energy(), rel=1e-12)
        assert s.molecule == atoms.info["mol_id"]
        if atoms.pbc.any():
            np.testing.assert_allclose(s.cell, atoms.cell.array)
            assert s.pbc.tolist() == atoms.pbc.tolist()
        else:
            assert s.cell is None and s.pbc is None


def test_custom_keys_and_units(tmp_path):
    atoms = Atoms("OH2", positions=[[0, 0, 0], [0, 0, 0.96], [0.93, 0, -0.24]])
    atoms.info["REF_energy"] = -76.4  # Hartree
    atoms.arrays["REF_forces"] = np.array([[0.01, 0, 0], [0, 0.02, 0], [0, 0, -0.03]])  # kcal/mol/Å
    write(tmp_path / "w.xyz", [atoms], format="extxyz")
    (s,) = read_extxyz(tmp_path / "w.xyz", energy_key="REF_energy", forces_key="REF_forces",
                       energy_unit="Hartree", force_unit="kcal/mol/Å")
    assert s.energy == pytest.approx(-76.4 * Hartree)
    np.testing.assert_allclose(s.forces, atoms.arrays["REF_forces"] * kcal / mol)
    with pytest.raises(ValueError, match="energy_key='energy'"):
        read_extxyz(tmp_path / "w.xyz")
    with pytest.raises(ValueError, match="force_unit"):
        read_extxyz(tmp_path / "w.xyz", energy_key="REF_energy", forces_key="REF_forces", force_unit="eV")


def test_import_splits_by_molecule_and_keeps_the_values(tmp_path):
    original = frames(40)
    write(tmp_path / "data.xyz", original, format="extxyz")
    root = import_extxyz(tmp_path / "data.xyz", tmp_path / "ds", seed=0)
    seen = {}
    for split in ("train", "val", "test"):
        data = load_dataset(root, split)
        assert data.meta["grouped_by"] == "molecule"
        for k in range(len(data)):
            s, index = data[k], int(data.arrays["index"][k])
            atoms = original[index]
            assert s.molecule == atoms.info["mol_id"]
            np.testing.assert_allclose(s.positions, atoms.positions, atol=1e-7)
            np.testing.assert_allclose(s.forces, atoms.get_forces(), rtol=1e-6, atol=1e-7)  # float32
            assert s.energy == pytest.approx(atoms.get_potential_energy(), rel=1e-12)
            seen[index] = split
    assert sorted(seen) == list(range(40))
    by_molecule = {}
    for index, split in seen.items():
        by_molecule.setdefault(original[index].info["mol_id"], set()).add(split)
    assert all(len(splits) == 1 for splits in by_molecule.values())


def test_cli_import_and_info(tmp_path, capsys):
    original = frames(24)
    for atoms in original:
        del atoms.info["mol_id"]  # no ids in the file: "auto" groups by chemical formula
    write(tmp_path / "data.xyz", original, format="extxyz")
    assert main(["data", "import", str(tmp_path / "data.xyz"), "--out", str(tmp_path / "ds")]) == 0
    assert main(["data", "info", str(tmp_path / "ds")]) == 0
    printed = capsys.readouterr().out
    assert "reference energy" in printed and "force_rms" in printed
    formulas = {}
    for split in ("train", "val", "test"):
        data = load_dataset(tmp_path / "ds", split)
        assert data.meta["grouped_by"] == "formula"
        for s in data:
            formulas.setdefault(tuple(sorted(s.numbers.tolist())), set()).add(split)
    assert all(len(splits) == 1 for splits in formulas.values())
    import_extxyz(tmp_path / "data.xyz", tmp_path / "each", group_by="structure")
    assert len(load_dataset(tmp_path / "each", "val")) == round(0.1 * 24)
    with pytest.raises(ValueError, match="not empty"):
        import_extxyz(tmp_path / "data.xyz", tmp_path / "each")
