"""NequIP-style equivariant network on the fused message-passing conv, for lmax = 1..6.

Atoms carry `width` channels of every irrep l = 0..lmax with parity (-1)^l
("Wx0e+Wx1o+Wx2e+..."). An embedding of the species gives the scalars; `depth` = 3
`nffk.nn.EquivariantConv` blocks follow (spherical harmonics of the edge directions up to lmax,
Bessel radial embedding, channel-wise tensor product, Gate; residual from the second block on).
Readouts are equivariant linear maps: per-atom energy (0e) and a direct force head (1o).
"""
from __future__ import annotations

from nffk.models.base import ForceFieldModel
from nffk.nn import EquivariantConv, Linear, RadialEmbedding, SphericalHarmonics
from nffk.o3 import Irreps

import torch

MAX_LMAX = 6


def hidden_irreps(width: int, lmax: int) -> Irreps:
    return Irreps([(width, (l, (-1) ** l)) for l in range(lmax + 1)])


class Equivariant(ForceFieldModel):
    arch = "Equivariant"
    depth = 3
    base_width = 8

    def __init__(self, width: int, lmax: int = 2, radial_hidden: int = 32, backend: str = "auto", **options):
        if isinstance(lmax, bool) or not isinstance(lmax, int) or not 1 <= lmax <= MAX_LMAX:
            raise ValueError(f"lmax must be an int in 1..{MAX_LMAX}, got {lmax!r}")
        super().__init__(width, lmax=lmax, **options)
        self.config.update(radial_hidden=int(radial_hidden), backend=backend)
        self.irreps_hidden = hidden = hidden_irreps(width, lmax)
        self.embedding = Linear(f"{self.num_species}x0e", f"{width}x0e", backend=backend)
        self.spherical_harmonics = SphericalHarmonics(lmax, normalize=True, normalization="component",
                                                      backend=backend)
        self.radial = RadialEmbedding(self.cutoff, self.num_basis)
        irreps_in = [Irreps(f"{width}x0e")] + [hidden] * (self.depth - 1)
        self.layers = torch.nn.ModuleList(
            EquivariantConv(irreps, hidden, self.spherical_harmonics.irreps_out, self.num_basis, (radial_hidden,),
                            self.avg_num_neighbors, backend=backend) for irreps in irreps_in)
        self.energy_head = Linear(hidden, "0e", backend=backend)
        self.force_head = Linear(hidden, "1o", backend=backend)

    def atomic(self, species, vectors, lengths, graph):
        h = self.embedding(torch.nn.functional.one_hot(species, self.num_species).to(vectors.dtype))
        sh = self.spherical_harmonics(vectors)
        embedding = self.radial(lengths)
        for layer in self.layers:
            h = layer(h, sh, embedding, graph)
        return self.energy_head(h)[:, 0], self.force_head(h)
