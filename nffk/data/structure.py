"""One labelled atomic structure, the unit every reader returns and every dataset holds.

Arrays are numpy (cheap to pickle into DataLoader workers); `nffk.data.collate` turns a list
of them into torch tensors. Units: positions and cell in Å, energy in eV, forces in eV/Å.
"""
from dataclasses import dataclass

import numpy as np


@dataclass
class Structure:
    numbers: np.ndarray            # int64 [n] atomic numbers
    positions: np.ndarray          # float64 [n, 3] Å
    energy: float                  # eV (total energy, reference energies not subtracted)
    forces: np.ndarray             # float [n, 3] eV/Å
    cell: np.ndarray | None = None  # float64 [3, 3] Å, rows are lattice vectors; None for molecules
    pbc: np.ndarray | None = None   # bool [3]; None means no periodicity
    molecule: int = -1             # id of the molecule (or group) the structure belongs to; -1 unknown

    @property
    def num_atoms(self) -> int:
        return int(self.numbers.shape[0])

    def validate(self, where: str = "structure") -> "Structure":
        """Check shapes and finiteness; raise ValueError naming what is wrong."""
        n = self.numbers.shape[0] if self.numbers.ndim == 1 else -1
        if n < 1:
            raise ValueError(f"{where}: numbers must be a non-empty 1-D array, got shape {self.numbers.shape}")
        if self.positions.shape != (n, 3):
            raise ValueError(f"{where}: positions must have shape ({n}, 3), got {self.positions.shape}")
        if self.forces.shape != (n, 3):
            raise ValueError(f"{where}: forces must have shape ({n}, 3), got {self.forces.shape}")
        if not (np.all(np.isfinite(self.positions)) and np.all(np.isfinite(self.forces))
                and np.isfinite(self.energy)):
            raise ValueError(f"{where}: positions, energy and forces must be finite")
        if np.any(self.numbers < 1) or np.any(self.numbers > 118):
            raise ValueError(f"{where}: atomic numbers must lie in 1..118, got {sorted(set(self.numbers.tolist()))}")
        if self.cell is not None and self.cell.shape != (3, 3):
            raise ValueError(f"{where}: cell must have shape (3, 3), got {self.cell.shape}")
        if self.pbc is not None and self.pbc.shape != (3,):
            raise ValueError(f"{where}: pbc must have shape (3,), got {self.pbc.shape}")
        if self.pbc is not None and self.pbc.any():
            periodic_vectors = None if self.cell is None else self.cell[self.pbc]
            if periodic_vectors is None or np.linalg.matrix_rank(periodic_vectors, tol=1e-6) < self.pbc.sum():
                raise ValueError(f"{where}: the lattice vectors of the periodic directions {self.pbc.tolist()} "
                                 "must be linearly independent")
        return self
