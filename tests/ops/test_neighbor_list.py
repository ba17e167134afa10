"""Neighbour lists: the reference against ase (pair SETS), the C++ kernel against the reference
(identical sorted output), sortedness/CSR, edge-vector gradients, bad input, the memory guard."""
import importlib
import io

import numpy as np
import pytest
import torch
from ase.neighborlist import primitive_neighbor_list

from nffk import _ext
from nffk.ops import NeighborList, edge_vectors, neighbor_list
from nffk.testing import assert_thread_count_independent

nl_module = importlib.import_module("nffk.ops.neighbor_list")
needs_ext = pytest.mark.skipif(not _ext.loaded(), reason="compiled extension not loaded")
BACKENDS = ["reference", pytest.param("cpu", marks=needs_ext)]


# ------------------------------------------------------------------------------------ helpers
def ase_pairs(pos, cutoff, cell=None, pbc=(False, False, False), self_interaction=False, offset=0):
    """{(i, j, S)} from ase (the independent oracle), float64 numpy in."""
    cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64)
    i, j, shift = primitive_neighbor_list("ijS", np.asarray(pbc, dtype=bool), cell, np.asarray(pos, dtype=np.float64),
                                          float(cutoff), self_interaction=self_interaction)
    return {(a + offset, b + offset, tuple(s)) for a, b, s in zip(i.tolist(), j.tolist(), shift.tolist())}


def pair_set(result: NeighborList):
    return set(zip(result.receivers.tolist(), result.senders.tolist(), map(tuple, result.shifts.tolist())))


def face_spacings(cell):
    """Distance between opposite faces of each cell (rows are lattice vectors)."""
    return 1.0 / np.linalg.norm(np.linalg.inv(cell), axis=0)


def random_cell(gen, skew=1.0):
    """A random triclinic cell; `skew` scales the off-diagonal shear (2-3 = strongly skewed)."""
    lengths = 2.5 + 6.0 * torch.rand(3, generator=gen, dtype=torch.float64)
    shear = skew * (2 * torch.rand(3, 3, generator=gen, dtype=torch.float64) - 1)
    cell = torch.diag(lengths) + shear * lengths[None, :].flip(-1).mean() * (1 - torch.eye(3, dtype=torch.float64)) / 2
    return cell[torch.randperm(3, generator=gen)] if bool(torch.rand((), generator=gen) < 0.3) else cell


def random_system(gen, max_atoms=30, skew=None, outside=0.6, min_spacing=0.8):
    """(positions, cell, pbc, cutoff): rattled atoms, some outside the cell, a random pbc mask,
    a cutoff from a tenth of the thinnest cell spacing to 2.2x it (then many images). Cells are
    scaled up to `min_spacing` between faces so that the number of images stays bounded."""
    skew = float(3.0 * torch.rand((), generator=gen)) if skew is None else skew
    cell = random_cell(gen, skew)
    cell = cell * max(1.0, min_spacing / face_spacings(cell.numpy()).min())
    n = int(torch.randint(1, max_atoms + 1, (), generator=gen))
    frac = (1 + 2 * outside) * torch.rand(n, 3, generator=gen, dtype=torch.float64) - outside
    positions = frac @ cell + 0.1 * torch.randn(n, 3, generator=gen, dtype=torch.float64)
    pbc = torch.rand(3, generator=gen) < 0.6
    spacing = face_spacings(cell.numpy()).min()
    cutoff = float(spacing * (0.1 + 2.1 * torch.rand((), generator=gen)))
    return positions, cell, pbc, cutoff


def check_sorted_csr(result: NeighborList, num_atoms):
    r, s, sh = result.receivers, result.senders, result.shifts
    assert r.dtype == s.dtype == sh.dtype == result.ptr.dtype == torch.int64
    key = torch.stack([r, s, sh[:, 0], sh[:, 1], sh[:, 2]], 1).tolist()
    assert key == sorted(key), "pairs must be sorted by (receiver, sender, shift)"
    assert len(set(map(tuple, key))) == len(key), "no duplicate pairs"
    expected_ptr = torch.zeros(num_atoms + 1, dtype=torch.int64)
    expected_ptr[1:] = torch.cumsum(torch.bincount(r, minlength=num_atoms), 0)
    assert torch.equal(result.ptr, expected_ptr)


# ------------------------------------------------------------------- every listed case vs ase
@pytest.mark.parametrize("backend", BACKENDS)
def test_random_systems_match_ase(backend, seeded):
    """Random triclinic (incl. strongly skewed) cells, random pbc masks, atoms outside the cell,
    cutoffs larger than the cell: the same pair sets as ase."""
    for trial in range(25):
        positions, cell, pbc, cutoff = random_system(seeded, skew=3.0 if trial % 3 == 0 else None)
        self_interaction = trial % 4 == 1
        result = neighbor_list(positions, cutoff, cell, pbc, self_interaction=self_interaction, backend=backend)
        expected = ase_pairs(positions, cutoff, cell, pbc.tolist(), self_interaction)
        assert pair_set(result) == expected, f"trial {trial}: pbc={pbc.tolist()} cutoff={cutoff}"
        check_sorted_csr(result, positions.shape[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_open_boundaries(backend, seeded):
    positions = 6 * torch.rand(50, 3, generator=seeded, dtype=torch.float64)
    for cutoff in (0.5, 2.0, 20.0):  # 20: every pair
        result = neighbor_list(positions, cutoff, backend=backend)
        assert pair_set(result) == ase_pairs(positions, cutoff)
        assert result.shifts.abs().sum() == 0
    assert len(pair_set(neighbor_list(positions, 20.0, backend=backend))) == 50 * 49


@pytest.mark.parametrize("backend", BACKENDS)
def test_orthorhombic_and_triclinic(backend, seeded):
    for cell in (torch.diag(torch.tensor([7.0, 8.5, 9.0], dtype=torch.float64)),
                 torch.tensor([[6.0, 0.0, 0.0], [3.0, 5.2, 0.0], [3.0, 1.7, 4.9]], dtype=torch.float64)):
        positions = torch.rand(40, 3, generator=seeded, dtype=torch.float64) @ cell
        result = neighbor_list(positions, 3.5, cell, backend=backend)
        assert pair_set(result) == ase_pairs(positions, 3.5, cell, [True] * 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cell_smaller_than_cutoff(backend, seeded):
    """Many periodic images, in one, two or three directions."""
    for thin in ([0], [0, 2], [0, 1, 2]):
        lengths = torch.tensor([8.0, 8.0, 8.0], dtype=torch.float64)
        lengths[thin] = 1.3
        cell = torch.diag(lengths)
        cell[1, 0] = 0.6  # and a little skew
        positions = torch.rand(3, 3, generator=seeded, dtype=torch.float64) @ cell
        result = neighbor_list(positions, 4.0, cell, backend=backend)
        expected = ase_pairs(positions, 4.0, cell, [True] * 3)
        assert pair_set(result) == expected
        assert result.shifts.abs().max() >= 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_periodicity_slab_and_wire(backend, seeded):
    """pbc along some directions only; the non-periodic cell vector may even be zero."""
    slab = torch.tensor([[5.0, 0.0, 0.0], [2.0, 4.5, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    positions = torch.rand(20, 3, generator=seeded, dtype=torch.float64) * torch.tensor([5.0, 5.0, 12.0])
    result = neighbor_list(positions, 3.0, slab, [True, True, False], backend=backend)
    assert pair_set(result) == ase_pairs(positions, 3.0, slab, [True, True, False])
    assert result.shifts[:, 2].abs().sum() == 0
    wire = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.3, 0.4, 2.5]], dtype=torch.float64)
    result = neighbor_list(positions, 3.0, wire, [False, False, True], backend=backend)
    assert pair_set(result) == ase_pairs(positions, 3.0, wire, [False, False, True])


@pytest.mark.parametrize("backend", BACKENDS)
def test_atoms_far_outside_the_cell(backend, seeded):
    cell = torch.tensor([[4.0, 0.0, 0.0], [1.0, 4.0, 0.0], [0.5, 0.5, 4.0]], dtype=torch.float64)
    frac = 14 * torch.rand(12, 3, generator=seeded, dtype=torch.float64) - 7
    positions = frac @ cell
    result = neighbor_list(positions, 3.0, cell, backend=backend, return_distances=True)
    assert pair_set(result) == ase_pairs(positions, 3.0, cell, [True] * 3)
    assert bool((result.distances < 3.0).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_atom_and_no_pairs(backend):
    one = torch.zeros(1, 3, dtype=torch.float64)
    assert neighbor_list(one, 5.0, backend=backend).senders.numel() == 0
    assert pair_set(neighbor_list(one, 5.0, backend=backend, self_interaction=True)) == {(0, 0, (0, 0, 0))}
    cell = 2.0 * torch.eye(3, dtype=torch.float64)
    result = neighbor_list(one, 5.0, cell, backend=backend)  # its own images only
    assert pair_set(result) == ase_pairs(one, 5.0, cell, [True] * 3)
    assert len(pair_set(result)) > 0
    far = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]], dtype=torch.float64)
    empty = neighbor_list(far, 1.0, backend=backend, return_distances=True, return_vectors=True)
    assert empty.senders.shape == (0,) and empty.shifts.shape == (0, 3) and empty.vectors.shape == (0, 3)
    assert torch.equal(empty.ptr, torch.zeros(3, dtype=torch.int64))
    nothing = neighbor_list(torch.zeros(0, 3), 1.0, backend=backend)
    assert nothing.senders.numel() == 0 and torch.equal(nothing.ptr, torch.zeros(1, dtype=torch.int64))


def random_batch(gen, num_systems=12, float32=False, max_atoms=25):
    """Systems of different sizes, cells and pbc (one is empty, one open), concatenated; the
    cutoff (2.5) is up to twice the thinnest cell spacing."""
    positions, cells, pbcs, sizes = [], [], [], []
    cutoff = 2.5
    for s in range(num_systems):
        pos, cell, pbc, _ = random_system(gen, max_atoms=max_atoms, min_spacing=1.25)
        if s == 3:
            pos = pos[:0]
        if s == 5:
            pbc = torch.zeros(3, dtype=torch.bool)
        positions.append(pos)
        cells.append(cell)
        pbcs.append(pbc)
        sizes.append(pos.shape[0])
    batch = torch.repeat_interleave(torch.arange(num_systems), torch.tensor(sizes))
    positions = torch.cat(positions)
    return (positions.float() if float32 else positions), torch.stack(cells), torch.stack(pbcs), batch, cutoff, sizes


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_of_systems(backend, seeded):
    positions, cells, pbcs, batch, cutoff, sizes = random_batch(seeded)
    result = neighbor_list(positions, cutoff, cells, pbcs, batch=batch, backend=backend)
    expected, offset = set(), 0
    for s, n in enumerate(sizes):
        expected |= ase_pairs(positions[offset:offset + n], cutoff, cells[s], pbcs[s].tolist(), offset=offset)
        offset += n
    assert pair_set(result) == expected
    assert torch.equal(batch[result.senders], batch[result.receivers]), "no pair crosses two systems"
    check_sorted_csr(result, positions.shape[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_shared_cell_and_open_batch(backend, seeded):
    cell = torch.diag(torch.tensor([5.0, 6.0, 7.0], dtype=torch.float64))
    positions = torch.rand(30, 3, generator=seeded, dtype=torch.float64) * 6
    batch = torch.tensor([0] * 10 + [1] * 20)
    shared = neighbor_list(positions, 3.0, cell, batch=batch, backend=backend)  # [3, 3] cell for both
    expected = ase_pairs(positions[:10], 3.0, cell, [True] * 3) | ase_pairs(positions[10:], 3.0, cell, [True] * 3, offset=10)
    assert pair_set(shared) == expected
    open_batch = neighbor_list(positions, 3.0, batch=batch, backend=backend)
    assert pair_set(open_batch) == ase_pairs(positions[:10], 3.0) | ase_pairs(positions[10:], 3.0, offset=10)


# ---------------------------------------------------------------------- C++ against reference
@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_matches_reference_exactly(dtype, seeded):
    for trial in range(6):
        positions, cells, pbcs, batch, cutoff, _ = random_batch(seeded, num_systems=6, float32=dtype == torch.float32)
        self_interaction = trial % 2 == 1
        kwargs = dict(cell=cells, pbc=pbcs, batch=batch, self_interaction=self_interaction, return_distances=True,
                      return_vectors=True)
        expected = neighbor_list(positions, cutoff, backend="reference", **kwargs)
        # Best-effort poison: free same-sized buffers full of sentinels right before the kernel
        # allocates its outputs, so elements it forgets to write are unlikely to look right.
        pairs, atoms = expected.senders.shape[0], positions.shape[0]
        poison = [torch.full((pairs,), -7), torch.full((pairs,), -7), torch.full((pairs, 3), -7),
                  torch.full((atoms + 1,), -7), torch.full((pairs,), float("nan"), dtype=dtype),
                  torch.full((pairs, 3), float("nan"), dtype=dtype)]
        del poison
        got = neighbor_list(positions, cutoff, backend="cpu", **kwargs)
        for name in ("senders", "receivers", "shifts", "ptr"):
            assert torch.equal(getattr(got, name), getattr(expected, name)), name
        assert got.distances.dtype == got.vectors.dtype == dtype
        torch.testing.assert_close(got.distances, expected.distances)
        torch.testing.assert_close(got.vectors, expected.vectors)


@needs_ext
def test_cpu_large_random_system_matches_ase(seeded):
    """A few thousand atoms so that the cell list has many bins and chunks."""
    cell = torch.tensor([[30.0, 0.0, 0.0], [4.0, 28.0, 0.0], [-3.0, 2.0, 26.0]], dtype=torch.float64)
    positions = torch.rand(2500, 3, generator=seeded, dtype=torch.float64) @ cell
    result = neighbor_list(positions, 4.0, cell, [True, False, True], backend="cpu")
    assert pair_set(result) == ase_pairs(positions, 4.0, cell, [True, False, True])
    check_sorted_csr(result, 2500)


@needs_ext
def test_cpu_large_outputs_are_ordinary_tensors(seeded):
    """Outputs of a megabyte or more live in their own huge-page mappings, reused by the next
    call once freed: same pairs and distances as ase even when the reused memory is poisoned,
    and they behave like any tensor (outlive each other, grow, pickle)."""
    cell = 16.0 * torch.eye(3, dtype=torch.float64)
    positions = torch.rand(2000, 3, generator=seeded, dtype=torch.float64) * 16.0
    kwargs = dict(backend="cpu", return_distances=True, return_vectors=True)
    for tensor in neighbor_list(positions, 4.0, cell, **kwargs):  # freed right away: kept for reuse
        tensor.fill_(-7)
    del tensor
    result = neighbor_list(positions, 4.0, cell, **kwargs)
    assert result.shifts.numel() * 8 >= 2**20, "too few pairs to reach the mapped-output path"
    assert pair_set(result) == ase_pairs(positions, 4.0, cell, [True] * 3)
    check_sorted_csr(result, 2000)
    vectors = edge_vectors(positions, result.senders, result.receivers, result.shifts, cell)
    torch.testing.assert_close(result.vectors, vectors)
    torch.testing.assert_close(result.distances, vectors.norm(dim=-1))
    senders, expected = result.senders, result.senders.clone()
    del result  # the other outputs' mappings go; senders' stays
    buffer = io.BytesIO()
    torch.save(senders, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer), expected)
    senders.resize_(3 * senders.numel())  # grows into torch's own allocator
    assert torch.equal(senders[:expected.numel()], expected)


@needs_ext
def test_deterministic_across_thread_counts(seeded):
    positions, cells, pbcs, batch, cutoff, _ = random_batch(seeded, num_systems=40)
    # Big enough (> 1e5 pairs, > 1e6 candidates) that the kernel actually runs in parallel.
    big = torch.rand(4000, 3, generator=seeded, dtype=torch.float64) * 25
    assert_thread_count_independent(lambda: (
        neighbor_list(positions, cutoff, cells, pbcs, batch=batch, backend="cpu", return_distances=True),
        neighbor_list(big, 4.0, 25 * torch.eye(3, dtype=torch.float64), backend="cpu")))


@pytest.mark.parametrize("backend", BACKENDS)
def test_distances_and_vectors_consistent(backend, seeded):
    positions, cells, pbcs, batch, cutoff, _ = random_batch(seeded, num_systems=5)
    result = neighbor_list(positions, cutoff, cells, pbcs, batch=batch, backend=backend, return_distances=True,
                           return_vectors=True)
    vectors = edge_vectors(positions, result.senders, result.receivers, result.shifts, cells, batch)
    torch.testing.assert_close(result.vectors, vectors)
    torch.testing.assert_close(result.distances, vectors.norm(dim=-1))
    assert bool((result.distances < cutoff).all())
    plain = neighbor_list(positions, cutoff, cells, pbcs, batch=batch, backend=backend)
    assert plain.distances is None and plain.vectors is None


# ----------------------------------------------------------------------------- edge vectors
def test_edge_vectors_gradients(seeded):
    for _ in range(50):  # a random draw may have no pair within the cutoff: draw again
        positions, cell, _, _ = random_system(seeded, max_atoms=8, skew=1.0, min_spacing=2.0)
        result = neighbor_list(positions, 3.0, cell, backend="reference")
        if result.senders.numel() > 0:
            break
    assert result.senders.numel() > 0
    positions = positions.clone().requires_grad_(True)
    cell = cell.clone().requires_grad_(True)

    def energy_like(pos, box):
        vec = edge_vectors(pos, result.senders, result.receivers, result.shifts, box)
        return (vec.norm(dim=-1) ** 3).sum().unsqueeze(0) + vec.sin().sum()

    assert torch.autograd.gradcheck(energy_like, (positions, cell))
    assert torch.autograd.gradgradcheck(energy_like, (positions, cell))


def test_edge_vectors_batched_cell_gradients(seeded):
    positions, cells, pbcs, batch, cutoff, _ = random_batch(seeded, num_systems=3, max_atoms=5)
    result = neighbor_list(positions, cutoff, cells, pbcs, batch=batch, backend="reference")
    keep = torch.arange(0, result.senders.numel(), max(1, result.senders.numel() // 60))  # a few edges suffice
    result = NeighborList(result.senders[keep], result.receivers[keep], result.shifts[keep], result.ptr)
    positions = positions.clone().requires_grad_(True)
    cells = cells.clone().requires_grad_(True)
    fn = lambda p, c: edge_vectors(p, result.senders, result.receivers, result.shifts, c, batch)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (positions, cells))
    assert torch.autograd.gradgradcheck(fn, (positions, cells))


def test_stress_from_strain_matches_finite_difference(seeded):
    """Virial via a strain derivative: scaling positions and cell by (1 + eps) together."""
    positions, cell, _, _ = random_system(seeded, max_atoms=6, skew=0.5, outside=0.0)
    result = neighbor_list(positions, 3.0, cell, backend="reference")
    strain = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)

    def energy(eps):
        deform = torch.eye(3, dtype=torch.float64) + eps
        vec = edge_vectors(positions @ deform, result.senders, result.receivers, result.shifts, cell @ deform)
        return torch.exp(-vec.norm(dim=-1)).sum()

    (virial,) = torch.autograd.grad(energy(strain), strain)
    h = 1e-6
    for a in range(3):
        for b in range(3):
            e = torch.zeros(3, 3, dtype=torch.float64)
            e[a, b] = h
            fd = (energy(e) - energy(-e)) / (2 * h)
            torch.testing.assert_close(virial[a, b], fd, rtol=1e-5, atol=1e-8)


# ------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input(backend):
    pos = torch.rand(4, 3, dtype=torch.float64)
    cell = torch.eye(3, dtype=torch.float64) * 5
    nl = lambda *a, **k: neighbor_list(*a, backend=backend, **k)  # noqa: E731
    cases = [
        (dict(positions=pos.clone().index_fill_(0, torch.tensor([1]), float("nan")), cutoff=1.0), "positions must be finite"),
        (dict(positions=pos.clone().index_fill_(0, torch.tensor([2]), float("inf")), cutoff=1.0), "positions must be finite"),
        (dict(positions=pos, cutoff=1.0, cell=cell.clone().fill_diagonal_(float("nan"))), "cell must be finite"),
        (dict(positions=pos, cutoff=0.0), "cutoff must be a finite number > 0"),
        (dict(positions=pos, cutoff=-1.0), "cutoff must be a finite number > 0"),
        (dict(positions=pos, cutoff=float("inf")), "cutoff must be a finite number > 0"),
        (dict(positions=pos, cutoff=float("nan")), "cutoff must be a finite number > 0"),
        (dict(positions=pos, cutoff="5"), "cutoff must be a positive number"),
        (dict(positions=pos, cutoff=1.0, cell=torch.zeros(3, 3)), "singular"),
        (dict(positions=pos, cutoff=1.0, cell=torch.tensor([[1.0, 0, 0], [2.0, 0, 0], [0, 0, 1.0]])), "singular"),
        (dict(positions=pos, cutoff=1.0, cell=torch.tensor([[1.0, 0, 0], [2.0, 0, 0], [0, 0, 1.0]]),
              pbc=[True, True, False]), "singular"),
        (dict(positions=pos[:, :2], cutoff=1.0), r"positions must have shape \[num_atoms, 3\]"),
        (dict(positions=pos[0], cutoff=1.0), r"positions must have shape \[num_atoms, 3\]"),
        (dict(positions=pos.long(), cutoff=1.0), "float32 or float64"),
        (dict(positions=pos, cutoff=1.0, cell=torch.eye(2)), "cell must have shape"),
        (dict(positions=pos, cutoff=1.0, cell=cell, pbc=[True, False]), "pbc must have shape"),
        (dict(positions=pos, cutoff=1.0, cell=cell, pbc=torch.ones(3)), "pbc must hold booleans"),
        (dict(positions=pos, cutoff=1.0, pbc=True), "no cell was given"),
        (dict(positions=pos, cutoff=1.0, batch=torch.tensor([0, 0, 1])), "batch has 3 entries"),
        (dict(positions=pos, cutoff=1.0, batch=torch.tensor([0, 1, 0, 1])), "batch must be sorted"),
        (dict(positions=pos, cutoff=1.0, batch=torch.tensor([-1, 0, 0, 1])), "system indices >= 0"),
        (dict(positions=pos, cutoff=1.0, batch=torch.tensor([0.0, 0, 1, 1])), "batch must be a 1-D int64"),
        (dict(positions=pos, cutoff=1.0, cell=cell.expand(2, 3, 3), batch=torch.tensor([0, 0, 1, 2])),
         "refers to system 2"),
        (dict(positions=pos, cutoff=1.0, cell=cell.expand(2, 3, 3)), "pass a batch vector"),
        (dict(positions=pos, cutoff=1.0, cell=cell.expand(2, 3, 3), pbc=torch.ones(3, 3, dtype=torch.bool),
              batch=torch.tensor([0, 0, 1, 1])), "cell has 2 systems but pbc has 3"),
        (dict(positions=pos, cutoff=1.0, self_interaction=1), "self_interaction must be a bool"),
        (dict(positions=pos, cutoff=1.0, max_pairs=-5), "max_pairs must be"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            nl(**kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_memory_guard_fails_early_with_estimate(backend):
    cell = 10 * torch.eye(3, dtype=torch.float64)
    positions = torch.rand(2000, 3, dtype=torch.float64) * 10
    with pytest.raises(ValueError, match=r"about [0-9.e+]+ pairs .*max_pairs=2e\+08"):
        neighbor_list(positions, 1000.0, cell, backend=backend)  # ~2e13 pairs
    tiny_cell = 1e-3 * torch.eye(3, dtype=torch.float64)  # dense: 1e9 atoms per A^3
    with pytest.raises(ValueError, match="about"):
        neighbor_list(torch.zeros(2, 3, dtype=torch.float64), 5.0, tiny_cell, backend=backend)
    thin = torch.diag(torch.tensor([1000.0, 1000.0, 1e-3], dtype=torch.float64))  # 1e4 images of itself
    with pytest.raises(ValueError, match="about 1e\\+04 pairs"):
        neighbor_list(torch.zeros(1, 3, dtype=torch.float64), 5.0, thin, backend=backend, max_pairs=100)
    # The limit is a parameter, and the estimate is not wildly off for a normal request.
    small = neighbor_list(positions[:150], 3.0, cell, backend=backend)
    estimate = nl_module.estimate_pairs(positions[:150], 3.0, cell[None], torch.ones(1, 3, dtype=torch.bool),
                                        torch.tensor([0, 150]), None)
    assert 0.5 < estimate / small.senders.numel() < 2.0
    with pytest.raises(ValueError, match="max_pairs=10"):
        neighbor_list(positions[:150], 3.0, cell, backend=backend, max_pairs=10)
    # Open boundaries: the estimate is skipped while num_atoms**2 (a true bound) fits.
    with pytest.raises(ValueError, match="max_pairs=10"):
        neighbor_list(positions[:150], 3.0, backend=backend, max_pairs=10)
    everything = neighbor_list(positions[:150], 1000.0, backend=backend, max_pairs=150**2)
    assert everything.senders.numel() == 150 * 149


@needs_ext
def test_compiled_op_rejects_inconsistent_arguments():
    """The raw C++ op checks what it indexes with, whatever Python passed."""
    pos = torch.rand(4, 3, dtype=torch.float64)
    cells = torch.eye(3, dtype=torch.float64)[None]
    pbc = torch.ones(1, 3, dtype=torch.bool)
    op = torch.ops.nffk_C.neighbor_list
    with pytest.raises(ValueError, match="system_ptr must run from 0"):
        op(pos, torch.tensor([0, 9]), cells, pbc, 1.0, False, False, False)
    with pytest.raises(ValueError, match="non-decreasing"):
        op(pos, torch.tensor([0, 5, 4]), cells.expand(2, 3, 3).contiguous(), pbc.expand(2, 3).contiguous(), 1.0,
           False, False, False)
    with pytest.raises(ValueError, match="cells must be float64"):
        op(pos, torch.tensor([0, 4]), cells.float(), pbc, 1.0, False, False, False)
    with pytest.raises(ValueError, match="singular"):
        op(pos, torch.tensor([0, 4]), torch.zeros(1, 3, 3, dtype=torch.float64), pbc, 1.0, False, False, False)
    with pytest.raises(ValueError, match="cell lengths outside"):
        op(pos * 1e12, torch.tensor([0, 4]), cells, pbc, 1.0, False, False, False)


def test_positions_with_grad_and_cutoff_tensor(seeded):
    positions = torch.rand(10, 3, generator=seeded, dtype=torch.float64, requires_grad=True)
    result = neighbor_list(positions, torch.tensor(0.8), backend="reference")
    assert pair_set(result) == ase_pairs(positions.detach(), 0.8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_but_valid_inputs(backend, seeded):
    """Finite inputs at the edges of floating point: an answer, never a crash or a bad count."""
    positions = torch.rand(30, 3, generator=seeded, dtype=torch.float64)
    # A cutoff whose square underflows to 0: not even coincident atoms are closer than it.
    assert neighbor_list(positions, 1e-300, backend=backend).senders.numel() == 0
    # A cutoff whose cube overflows: every pair of an open system.
    assert neighbor_list(positions, 1e300, backend=backend).senders.numel() == 30 * 29
    # A cell so large that its determinant overflows is not singular.
    huge = neighbor_list(positions, 0.5, 1e200 * torch.eye(3, dtype=torch.float64), backend=backend)
    assert pair_set(huge) == ase_pairs(positions, 0.5)
    # Atoms 1e8 cells away from a small cell, and coordinates near the float64 limit (open).
    far = torch.tensor([[1e8, 0.0, 0.0], [0.5, 0.2, 0.0]], dtype=torch.float64)
    cell = torch.eye(3, dtype=torch.float64)
    assert pair_set(neighbor_list(far, 1.5, cell, backend=backend)) == ase_pairs(far, 1.5, cell, [True] * 3)
    wide = torch.tensor([[0.0, 0, 0], [1e300, 0, 0], [-1e300, 1e300, 0], [1.0, 0, 0]], dtype=torch.float64)
    assert pair_set(neighbor_list(wide, 2.0, backend=backend)) == {(0, 3, (0, 0, 0)), (3, 0, (0, 0, 0))}
