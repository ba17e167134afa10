"""Compute accounting: forward FLOPs of a model on any batch, exactly and for free at run time.

Every op of a model processes either atoms (embeddings, node updates, readouts), edges
(messages, radial MLPs, the conv) or structures (energy sums), so the forward FLOPs of a batch
are exactly  a * atoms + b * edges + c * structures.  `FlopModel.measure` counts the FLOPs of a
few batches with `FlopCounterMode` (nffk ops from their plans, dense layers by torch's own
formulas, see `nffk.ops.flops`), solves for (a, b, c) and checks the solution on a batch it was
not fitted to. Training then charges C = 3 x forward FLOPs per step (the study's C = 3 kappa N D:
one forward, a backward of twice its cost) without counting anything at run time.
kappa = forward FLOPs per parameter per atom.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from nffk.ops.flops import count_flops

TRAINING_FACTOR = 3  # training FLOPs per forward FLOP (forward + backward ~ 2 x forward)


@dataclass
class FlopModel:
    per_atom: float
    per_edge: float
    per_structure: float
    check_error: float  # relative error of the prediction on a batch not used in the fit

    def forward_flops(self, atoms: int, edges: int, structures: int) -> float:
        return self.per_atom * atoms + self.per_edge * edges + self.per_structure * structures

    def kappa(self, params: int, edges_per_atom: float, atoms_per_structure: float) -> float:
        """Forward FLOPs per parameter per atom for data with these mean neighbour and atom counts."""
        per_atom = self.per_atom + self.per_edge * edges_per_atom + self.per_structure / atoms_per_structure
        return per_atom / params

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def measure(cls, model, structures, cutoff: float, device="cpu", dtype=None) -> "FlopModel":
        """Fit on batches of `structures` (a list of at least 4 `Structure`s) collated at the
        model's cutoff and at smaller cutoffs (FLOPs depend on shapes only, so fewer edges
        separate the per-edge from the per-atom cost)."""
        from nffk.data import collate

        structures = list(structures)
        if len(structures) < 4:
            raise ValueError(f"need at least 4 structures to measure FLOPs, got {len(structures)}")
        half = len(structures) // 2
        plans = [(structures, cutoff), (structures, 0.6 * cutoff), (structures[:half], cutoff),
                 (structures[half:], 0.45 * cutoff), (structures[1:half + 1], 0.8 * cutoff)]
        rows, counts = [], []
        was_training = model.training
        model.eval()
        try:
            for part, radius in plans:
                batch = collate(part, radius, dtype=dtype).to(device)
                with torch.no_grad():
                    counts.append(count_flops(model, batch))
                rows.append([batch.positions.shape[0], batch.senders.shape[0], batch.num_atoms.shape[0]])
        finally:
            model.train(was_training)
        a = np.asarray(rows[:-1], dtype=np.float64)
        y = np.asarray(counts[:-1], dtype=np.float64)
        coefficients = np.linalg.lstsq(a, y, rcond=None)[0]
        predicted = float(np.asarray(rows[-1], dtype=np.float64) @ coefficients)
        error = abs(predicted - counts[-1]) / max(counts[-1], 1)
        return cls(float(coefficients[0]), float(coefficients[1]), float(coefficients[2]), float(error))


def training_step_flops(model, batch, loss_fn) -> int:
    """FLOPs of one real training step (forward, loss, backward) counted op by op: to check the
    3 x forward convention. Gradients it leaves in the model are cleared."""
    flops = count_flops(lambda: loss_fn(model(batch)).backward())
    model.zero_grad(set_to_none=True)
    return flops
