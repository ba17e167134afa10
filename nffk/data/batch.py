"""Graph batches: many structures in one disjoint graph, edges from the nffk neighbour list.

Atoms of all structures are concatenated; `batch[a]` is the structure of atom a and structure
b owns atoms ptr[b]:ptr[b+1]. Edges (sorted by receiver) satisfy

    vector = positions[senders] - positions[receivers] + shifts @ cell[batch[receivers]]

(`nffk.ops.edge_vectors` computes it, differentiably). Molecules have a zero cell and no
periodicity, so their shifts are zero.
"""
from dataclasses import dataclass, fields
from functools import partial

import numpy as np
import torch

from nffk.data.structure import Structure


@dataclass
class Batch:
    numbers: torch.Tensor    # int64 [atoms]
    positions: torch.Tensor  # [atoms, 3] Å; call positions.requires_grad_() for conservative forces
    cell: torch.Tensor       # [B, 3, 3] Å (zeros for molecules)
    pbc: torch.Tensor        # bool [B, 3]
    batch: torch.Tensor      # int64 [atoms] structure of each atom
    ptr: torch.Tensor        # int64 [B + 1]
    senders: torch.Tensor    # int64 [edges]
    receivers: torch.Tensor  # int64 [edges], sorted
    shifts: torch.Tensor     # [edges, 3] integer cell shifts, in the positions' dtype
    energy: torch.Tensor     # float64 [B] eV, total energy (float64: totals are large, labels exact)
    forces: torch.Tensor     # [atoms, 3] eV/Å
    num_atoms: torch.Tensor  # int64 [B]
    molecule: torch.Tensor   # int64 [B] molecule id of each structure

    @property
    def num_graphs(self) -> int:
        return int(self.num_atoms.shape[0])

    def to(self, device=None, dtype=None, non_blocking: bool = False) -> "Batch":
        """A copy on `device`; `dtype` converts the floating-point fields except `energy`."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            target = dtype if dtype is not None and value.is_floating_point() and f.name != "energy" else None
            moved[f.name] = value.to(device=device, dtype=target, non_blocking=non_blocking)
        return Batch(**moved)

    def pin_memory(self) -> "Batch":  # called by DataLoader(pin_memory=True)
        return Batch(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})


def collate(structures: list[Structure], cutoff: float, dtype: torch.dtype | None = None) -> Batch:
    """Concatenate structures into one `Batch` with all pairs closer than `cutoff` (Å) as edges."""
    from nffk.ops import neighbor_list

    if not structures:
        raise ValueError("collate needs at least one structure")
    dtype = dtype or torch.get_default_dtype()
    num_atoms = torch.tensor([s.num_atoms for s in structures], dtype=torch.int64)
    ptr = torch.zeros(len(structures) + 1, dtype=torch.int64)
    torch.cumsum(num_atoms, 0, out=ptr[1:])
    batch = torch.repeat_interleave(torch.arange(len(structures)), num_atoms)
    numbers = torch.from_numpy(np.concatenate([s.numbers for s in structures]).astype(np.int64))
    positions = torch.from_numpy(np.concatenate([s.positions for s in structures])).to(dtype)
    cell = torch.from_numpy(np.stack([np.zeros((3, 3)) if s.cell is None else s.cell for s in structures])).to(dtype)
    pbc = torch.from_numpy(np.stack([np.zeros(3, bool) if s.pbc is None else s.pbc for s in structures]))
    edges = neighbor_list(positions, cutoff, cell=cell, pbc=pbc, batch=batch)
    return Batch(
        numbers=numbers, positions=positions, cell=cell, pbc=pbc, batch=batch, ptr=ptr,
        senders=edges.senders, receivers=edges.receivers, shifts=edges.shifts.to(dtype),
        energy=torch.tensor([s.energy for s in structures], dtype=torch.float64),
        forces=torch.from_numpy(np.concatenate([s.forces for s in structures])).to(dtype),
        num_atoms=num_atoms, molecule=torch.tensor([s.molecule for s in structures], dtype=torch.int64),
    )


def make_loader(dataset, batch_size: int, cutoff: float, shuffle: bool = True, seed: int = 0,
                num_workers: int = 0, drop_last: bool = False, dtype: torch.dtype | None = None,
                **kwargs) -> torch.utils.data.DataLoader:
    """A DataLoader of `Batch`es. The order is a function of `seed` alone: epoch k of two loaders
    built with the same seed is the same, whatever `num_workers`. Graphs are built in the workers."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    generator = torch.Generator().manual_seed(int(seed))
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, generator=generator,
        collate_fn=partial(collate, cutoff=float(cutoff), dtype=dtype or torch.get_default_dtype()),
        num_workers=num_workers, persistent_workers=num_workers > 0, **kwargs)
