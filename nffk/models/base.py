"""What every scaling-study model shares: species encoding, edge geometry, and the assembly of
per-atom outputs into energies and forces in physical units.

A model maps a `nffk.data.Batch` to ``{"energy": [B] eV (float64), "forces": [atoms, 3] eV/Å}``.
Subclasses implement `atomic(species, vectors, lengths, graph)`, returning normalised per-atom
energies ẽ_i [atoms] and, for the direct force head, normalised per-atom forces f̃_i [atoms, 3].
The base class turns them into

    E = sum_i (energy_scale * r * ẽ_i + energy_shift) + sum_i e_ref[Z_i]
    F_i = force_scale * r * f̃_i            (forces="direct": an equivariant force head)
    F_i = -dE/dx_i                           (forces="conservative": double backward in training)

where e_ref are the per-element reference energies and the scales the training statistics of
the dataset (as in the study: energies minus references, divided by the training RMS), and
r = sqrt(base_width / width) is the muP readout factor (the study's 1 / width multiplier,
written for nffk's unit-variance parametrisation; see `nffk.train.optim`), so the learning
rate tuned at `base_width` transfers to every width.

Width is the one size knob; depth is fixed per architecture (`depth`). `config` holds every
constructor argument (JSON-able), so a model can be rebuilt from a checkpoint.
"""
from __future__ import annotations

import contextlib

import torch

from nffk.ops import edge_vectors, segment_sum
from nffk.ops.conv import ConvGraph

FORCE_MODES = ("direct", "conservative")


class ForceFieldModel(torch.nn.Module):
    arch = "?"
    depth = 0
    base_width = 32  # width at which the learning rate is tuned; readouts scale by sqrt(base_width / width)

    def __init__(self, width: int, *, elements, cutoff: float = 5.0, num_basis: int = 8,
                 avg_num_neighbors: float = 1.0, forces: str = "direct", statistics: dict | None = None,
                 reference_energies: dict | None = None, base_width: int | None = None, lmax: int | None = None):
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be an int >= 1, got {width!r}")
        elements = sorted({int(z) for z in elements})
        if not elements or elements[0] < 1 or elements[-1] > 118:
            raise ValueError(f"elements must be atomic numbers in 1..118, got {elements}")
        if forces not in FORCE_MODES:
            raise ValueError(f"forces must be one of {FORCE_MODES}, got {forces!r}")
        if not cutoff > 0 or not avg_num_neighbors > 0:
            raise ValueError(f"need cutoff > 0 and avg_num_neighbors > 0, got {cutoff} and {avg_num_neighbors}")
        statistics = dict(statistics or {})
        reference_energies = {int(z): float(e) for z, e in (reference_energies or {}).items()}
        base_width = int(base_width or self.base_width)
        self.config = {"width": width, "elements": elements, "cutoff": float(cutoff), "num_basis": int(num_basis),
                       "avg_num_neighbors": float(avg_num_neighbors), "forces": forces,
                       "statistics": statistics, "reference_energies": {str(z): e for z, e in
                                                                        reference_energies.items()},
                       "base_width": base_width}
        if lmax is not None:
            self.config["lmax"] = int(lmax)
        self.width, self.lmax, self.forces = width, lmax, forces
        self.cutoff, self.num_basis, self.avg_num_neighbors = float(cutoff), int(num_basis), float(avg_num_neighbors)
        self.num_species = len(elements)
        self.base_width = base_width
        self.width_multiplier = width / base_width
        species = torch.full((119,), -1, dtype=torch.int64)
        species[elements] = torch.arange(len(elements))
        self.register_buffer("species_of", species, persistent=False)
        table = torch.zeros(119, dtype=torch.float64)
        for z, e in reference_energies.items():
            table[z] = e
        self.register_buffer("reference_energies", table, persistent=False)
        # Normalisation: direct models predict energy per atom in units of its training RMS; a
        # conservative model's energy scale sets its forces' scale too, so it uses the force RMS x 1 Å.
        energy_rms = float(statistics.get("energy_per_atom_rms", 1.0)) or 1.0
        force_rms = float(statistics.get("force_rms", 1.0)) or 1.0
        self.energy_shift = float(statistics.get("energy_per_atom_mean", 0.0))
        self.energy_scale = force_rms if forces == "conservative" else energy_rms
        self.force_scale = force_rms

    # -- to implement ---------------------------------------------------------------------
    def atomic(self, species: torch.Tensor, vectors: torch.Tensor, lengths: torch.Tensor, graph: ConvGraph):
        """(normalised per-atom energies [atoms], normalised direct forces [atoms, 3] or None)."""
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------
    def species_index(self, numbers: torch.Tensor) -> torch.Tensor:
        if numbers.numel() and (int(numbers.min()) < 1 or int(numbers.max()) > 118):
            raise ValueError(f"atomic numbers must lie in 1..118, got [{int(numbers.min())}, {int(numbers.max())}]")
        species = self.species_of[numbers]
        if numbers.numel() and bool((species < 0).any()):
            unknown = sorted(set(numbers[species < 0].tolist()))
            raise ValueError(f"atomic numbers {unknown} are not among the model's elements {self.config['elements']}")
        return species

    def forward(self, batch) -> dict:
        species = self.species_index(batch.numbers)
        conservative = self.forces == "conservative"
        positions = batch.positions.detach().requires_grad_(True) if conservative else batch.positions
        with torch.enable_grad() if conservative else contextlib.nullcontext():
            vectors = edge_vectors(positions, batch.senders, batch.receivers, batch.shifts, batch.cell, batch.batch)
            lengths = vectors.norm(dim=-1)
            graph = ConvGraph.build(batch.senders, batch.receivers, positions.shape[0], check=False)
            node_energy, node_forces = self.atomic(species, vectors, lengths, graph)
            readout = self.width_multiplier ** -0.5
            node_energy = node_energy * (self.energy_scale * readout) + self.energy_shift
            energy = segment_sum(node_energy.unsqueeze(-1), batch.ptr)[:, 0]
            if conservative:
                (gradient,) = torch.autograd.grad(energy.sum(), positions, create_graph=self.training)
                forces = -gradient
            else:
                forces = node_forces * (self.force_scale * readout)
        references = segment_sum(self.reference_energies[batch.numbers].unsqueeze(-1), batch.ptr)[:, 0]
        return {"energy": energy.double() + references, "forces": forces}

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return (f"width={self.width}, depth={self.depth}, forces={self.forces!r}, "
                f"parameters={self.num_parameters}")
