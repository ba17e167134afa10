"""The study's loss: per-atom energy MAE plus the mean per-atom Euclidean norm of the force
error, with equal weights, on targets normalised by the training RMS:

    L = (1/B) sum_b |E_pred,b - E_b| / (n_b sigma_E)  +  (1/A) sum_i ||F_pred,i - F_i||_2 / sigma_F

sigma_E is the RMS of the per-atom energy after subtracting the reference energies and sigma_F
the force RMS (the dataset's `statistics`). The validation metric is the same loss.

For data-parallel training each process holds part of a global batch; `LossTerms` keeps sums,
and the caller divides by the global counts (B, A of the whole batch), so the sum over
processes equals the loss of the whole batch exactly (see `nffk.train.loop`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Normalisation:
    energy_per_atom: float  # sigma_E, eV/atom
    force: float  # sigma_F, eV/Å

    @classmethod
    def from_statistics(cls, statistics: dict) -> "Normalisation":
        try:
            return cls(float(statistics["energy_per_atom_rms"]), float(statistics["force_rms"]))
        except KeyError as err:
            raise ValueError(f"the dataset statistics lack {err} (regenerate or re-import the dataset)") from None


@dataclass
class LossTerms:
    energy_sum: torch.Tensor  # sum over structures of |dE| / (n sigma_E)
    force_sum: torch.Tensor  # sum over atoms of ||dF|| / sigma_F
    structures: int
    atoms: int

    def loss(self, total_structures: int, total_atoms: int) -> torch.Tensor:
        return self.energy_sum / max(total_structures, 1) + self.force_sum / max(total_atoms, 1)


def loss_terms(prediction: dict, batch, norm: Normalisation) -> LossTerms:
    """Sums of the normalised energy and force errors of one (part of a) batch."""
    energy_error = (prediction["energy"] - batch.energy).abs() / (batch.num_atoms.to(torch.float64) *
                                                                  norm.energy_per_atom)
    forces = prediction["forces"]
    force_error = (forces - batch.forces.to(forces.dtype)).norm(dim=-1) / norm.force
    return LossTerms(energy_error.sum().to(forces.dtype), force_error.sum(), int(batch.num_atoms.shape[0]),
                     int(batch.positions.shape[0]))
