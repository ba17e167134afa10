"""Graph batches: edges equal ase's neighbour list structure by structure; loader order is seeded."""
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.neighborlist import neighbor_list as ase_neighbor_list

from nffk.data import Structure, collate, make_loader
from nffk.data.store import StructureDataset, concatenate_shards, read_shard, write_shard


def random_structures(count, rng):
    out = []
    for k in range(count):
        n = int(rng.integers(1, 12))
        periodic = k % 3 == 1
        cell = np.diag(rng.uniform(3.0, 6.0, 3)) + rng.normal(0, 0.3, (3, 3)) if periodic else None
        positions = rng.uniform(0, 4, (n, 3))
        out.append(Structure(numbers=rng.integers(1, 10, n), positions=positions, energy=float(rng.normal() * 50),
                             forces=rng.normal(size=(n, 3)), cell=cell,
                             pbc=np.array([True, True, k % 2 == 0]) if periodic else None, molecule=k))
    return out


def ase_edges(s: Structure, cutoff: float) -> set:
    atoms = Atoms(numbers=s.numbers, positions=s.positions, cell=s.cell if s.cell is not None else np.zeros((3, 3)),
                  pbc=s.pbc if s.pbc is not None else False)
    i, j, shift = ase_neighbor_list("ijS", atoms, cutoff)
    return {(int(a), int(b), *map(int, c)) for a, b, c in zip(i, j, shift)}


@pytest.mark.parametrize("cutoff", [1.5, 3.0])
def test_edges_match_ase_per_structure(cutoff, seeded):
    rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=seeded)))
    structures = random_structures(9, rng)
    batch = collate(structures, cutoff, dtype=torch.float64)
    assert batch.ptr.tolist() == [0, *np.cumsum([s.num_atoms for s in structures]).tolist()]
    assert torch.equal(batch.batch, torch.repeat_interleave(torch.arange(9), batch.num_atoms))
    assert bool((batch.receivers[1:] >= batch.receivers[:-1]).all())
    assert torch.equal(batch.batch[batch.senders], batch.batch[batch.receivers])  # no edge crosses structures
    for b, s in enumerate(structures):
        start = int(batch.ptr[b])
        mine = batch.batch[batch.receivers] == b
        ours = {(int(r) - start, int(j) - start, *map(int, c)) for r, j, c in
                zip(batch.receivers[mine], batch.senders[mine], batch.shifts[mine])}
        assert ours == ase_edges(s, cutoff)
    # the documented edge vector reproduces the distances below the cutoff
    cell = batch.cell[batch.batch[batch.receivers]]
    vectors = (batch.positions[batch.senders] - batch.positions[batch.receivers]
               + torch.bmm(batch.shifts[:, None, :], cell)[:, 0])
    assert bool((vectors.norm(dim=1) < cutoff).all())


def test_fields_dtypes_and_to():
    rng = np.random.default_rng(0)
    structures = random_structures(4, rng)
    batch = collate(structures, 2.0)
    assert batch.positions.dtype == torch.get_default_dtype() and batch.energy.dtype == torch.float64
    assert batch.numbers.dtype == torch.int64 and batch.pbc.dtype == torch.bool
    assert batch.cell.shape == (4, 3, 3) and batch.forces.shape == (int(batch.num_atoms.sum()), 3)
    np.testing.assert_allclose(batch.energy.numpy(), [s.energy for s in structures])
    np.testing.assert_allclose(batch.forces.double().numpy(), np.concatenate([s.forces for s in structures]), rtol=1e-6)
    moved = batch.to("cpu", dtype=torch.float64)
    assert moved.positions.dtype == torch.float64 and moved.energy.dtype == torch.float64
    assert moved.senders.dtype == torch.int64
    batch.positions.requires_grad_()
    (batch.positions ** 2).sum().backward()
    assert batch.positions.grad is not None


def dataset_of(structures, folder):
    path = folder / "train-00000.npz"
    write_shard(path, structures)
    return StructureDataset(concatenate_shards([read_shard(path)]))


def test_loader_order_is_seeded_and_workers_agree(tmp_path):
    rng = np.random.default_rng(1)
    data = dataset_of(random_structures(20, rng), tmp_path)

    def energies(loader):
        return [b.energy.tolist() for b in loader]
    first = energies(make_loader(data, 6, 2.0, seed=3))
    assert first == energies(make_loader(data, 6, 2.0, seed=3))
    assert first != energies(make_loader(data, 6, 2.0, seed=4))
    assert first == energies(make_loader(data, 6, 2.0, seed=3, num_workers=2))
    assert sorted(sum(first, [])) == sorted(data.arrays["energy"].tolist())
    ordered = energies(make_loader(data, 6, 2.0, shuffle=False))
    assert sum(ordered, []) == data.arrays["energy"].tolist()
