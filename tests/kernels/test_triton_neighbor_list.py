"""Triton cell-list neighbour list: exactly the reference's sorted output (pairs, shifts, ptr),
for periodic, mixed, open and batched systems, cells thinner than the cutoff included."""
import torch

from nffk.ops.neighbor_list import neighbor_list

TRICLINIC = [[4.0, 0.0, 0.0], [1.0, 3.5, 0.0], [0.5, 0.3, 1.2]]  # third row much thinner than the cutoff


def assert_same_as_reference(**kwargs):
    got = neighbor_list(backend="triton", return_distances=True, return_vectors=True, **kwargs)
    expected = neighbor_list(backend="reference", return_distances=True, return_vectors=True, **kwargs)
    for name, a, b in zip(got._fields, got, expected):
        assert a.shape == b.shape and a.dtype == b.dtype and a.device == b.device, name
        if a.dtype.is_floating_point:
            torch.testing.assert_close(a, b, msg=name)
        else:
            assert torch.equal(a, b), name
    return got


def test_single_systems(seeded, device):
    f64 = dict(dtype=torch.float64, device=device)
    # Few atoms: the interpreter runs one program per receiver, op by op.
    positions = (torch.rand(14, 3, generator=seeded, dtype=torch.float64) * 5).to(device)
    cube = assert_same_as_reference(positions=positions[:9], cutoff=2.6, cell=torch.eye(3, **f64) * 5)
    assert cube.senders.numel() > 0
    # Atoms outside the cell, mixed periodicity, a thin triclinic cell (many images).
    assert_same_as_reference(positions=positions[:6] - 3, cutoff=2.9, cell=torch.tensor(TRICLINIC, **f64),
                             pbc=[True, False, True])
    assert_same_as_reference(positions=positions[:4].float(), cutoff=2.2, cell=torch.tensor(TRICLINIC, **f64),
                             self_interaction=True)
    assert_same_as_reference(positions=positions, cutoff=1.7)  # open boundaries


def test_batch_with_an_empty_system(seeded, device):
    f64 = dict(dtype=torch.float64, device=device)
    positions = (torch.rand(12, 3, generator=seeded, dtype=torch.float64) * 4).to(device)
    batch = torch.tensor([0] * 4 + [2] * 5 + [3] * 3, device=device)
    cells = torch.stack([torch.eye(3, **f64) * 4, torch.tensor(TRICLINIC, **f64), torch.eye(3, **f64) * 9,
                         torch.eye(3, **f64) * 2.5])
    pbc = torch.tensor([[True] * 3, [True, True, False], [False] * 3, [True] * 3], device=device)
    out = assert_same_as_reference(positions=positions, cutoff=2.0, cell=cells, pbc=pbc, batch=batch)
    assert torch.all(batch[out.senders] == batch[out.receivers])
    empty = neighbor_list(positions[:0], 2.0, backend="triton")
    assert empty.senders.shape == (0,) and empty.ptr.tolist() == [0]
