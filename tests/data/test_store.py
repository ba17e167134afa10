"""Splitting, reference energies and shards, on synthetic data (no xTB)."""
import numpy as np
import pytest

from nffk.data import Structure, fit_reference_energies
from nffk.data.io import atomic_save_npz, remove_temp_files
from nffk.data.store import ShardError, assign_splits, read_shard, split_sizes, write_shard


def test_reference_energies_recover_a_known_synthetic_case():
    rng = np.random.default_rng(0)
    truth = {1: -13.6, 6: -1029.8, 8: -2041.5, 9: -2713.0}
    numbers, num_atoms, energy = [], [], []
    for _ in range(200):
        n = int(rng.integers(2, 20))
        z = rng.choice(list(truth), n)
        numbers.append(z)
        num_atoms.append(n)
        energy.append(sum(truth[int(x)] for x in z))
    numbers, num_atoms = np.concatenate(numbers), np.array(num_atoms)
    fitted = fit_reference_energies(numbers, num_atoms, np.array(energy), sorted(truth))
    np.testing.assert_allclose(fitted, [truth[z] for z in sorted(truth)], rtol=1e-10)
    # with noise the fit is still the least-squares one: compare with the normal equations
    noisy = np.array(energy) + rng.normal(0, 0.5, len(energy))
    fitted = fit_reference_energies(numbers, num_atoms, noisy, sorted(truth))
    counts = np.array([[np.sum(numbers[a:b] == z) for z in sorted(truth)]
                       for a, b in zip(np.cumsum(num_atoms) - num_atoms, np.cumsum(num_atoms))], float)
    np.testing.assert_allclose(fitted, np.linalg.solve(counts.T @ counts, counts.T @ noisy), rtol=1e-9)


def test_splits_are_disjoint_complete_and_seeded():
    groups = np.repeat(np.arange(50) * 7, 3)
    a = assign_splits(groups, (0.8, 0.1, 0.1), seed=0)
    assert [len(a[s]) for s in ("train", "val", "test")] == [40, 5, 5]
    assert sorted(np.concatenate(list(a.values())).tolist()) == sorted(set(groups.tolist()))
    b = assign_splits(groups, (0.8, 0.1, 0.1), seed=0)
    c = assign_splits(groups, (0.8, 0.1, 0.1), seed=1)
    assert all(np.array_equal(a[s], b[s]) for s in a) and not np.array_equal(a["val"], c["val"])
    assert split_sizes(3, (0.8, 0.1, 0.1)) == (1, 1, 1)
    with pytest.raises(ValueError, match="fractions"):
        split_sizes(10, (0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match="too few"):
        split_sizes(2, (0.4, 0.3, 0.3))


def structure(n, rng, periodic=False):
    return Structure(numbers=rng.integers(1, 10, n), positions=rng.normal(size=(n, 3)), energy=float(rng.normal()),
                     forces=rng.normal(size=(n, 3)), cell=np.eye(3) * 5 if periodic else None,
                     pbc=np.array([True, True, False]) if periodic else None, molecule=int(rng.integers(100)))


def test_shard_round_trip_and_damage(tmp_path):
    rng = np.random.default_rng(0)
    structures = [structure(3, rng), structure(5, rng, periodic=True)]
    path = tmp_path / "train-00000.npz"
    write_shard(path, structures, extras={"tag": np.array([4, 5])})
    arrays = read_shard(path)
    assert arrays["num_atoms"].tolist() == [3, 5] and arrays["tag"].tolist() == [4, 5]
    np.testing.assert_array_equal(arrays["positions"][3:], structures[1].positions)
    assert arrays["pbc"][1].tolist() == [True, True, False] and not arrays["pbc"][0].any()
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(ShardError):
        read_shard(path)
    with pytest.raises(ValueError, match="extra"):
        write_shard(path, structures, extras={"tag": np.array([1])})


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "a.npz"
    atomic_save_npz(target, x=np.arange(3))

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")
    monkeypatch.setattr(np.lib.format, "write_array", crash)
    with pytest.raises(RuntimeError):
        atomic_save_npz(target, x=np.arange(5))
    monkeypatch.undo()
    assert np.load(target)["x"].tolist() == [0, 1, 2]  # the old file, whole
    assert list(tmp_path.iterdir()) == [target]        # and no temporary left behind
    (tmp_path / ".b.npz.99.tmp").write_bytes(b"x")
    assert remove_temp_files(tmp_path) == 1


def test_structure_validation_names_the_problem():
    rng = np.random.default_rng(0)
    s = structure(3, rng)
    s.forces = np.zeros((2, 3))
    with pytest.raises(ValueError, match="forces"):
        s.validate()
    s = structure(3, rng, periodic=True)
    s.cell = np.zeros((3, 3))
    with pytest.raises(ValueError, match="lattice"):
        s.validate()
