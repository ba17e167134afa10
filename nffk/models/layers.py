"""Building blocks shared by the invariant-feature models (MPNN, EGNN)."""
from __future__ import annotations

import torch

from nffk.nn import DenseLayer, NormalizedActivation


class MessageMLP(torch.nn.Module):
    """Two-layer SiLU MLP on edges: m = MLP([node features], [geometric features]).

    The first layer normalises the two groups separately — node features (whose size grows with
    the width) by sqrt(their fan-in), geometric features (a fixed-size set: distances, Bessel
    basis, relative vectors) by sqrt(theirs) — and adds them (/ sqrt 2). One concatenated layer
    would divide the geometric rows by sqrt(2 width + ...), so the geometry would fade as the
    model widens; here its weights are input weights in the muP sense and keep their influence
    at every width.
    """

    def __init__(self, node_dim: int, edge_dim: int, width: int):
        super().__init__()
        self.node_in = DenseLayer(node_dim, width, bias=True)
        self.edge_in = DenseLayer(edge_dim, width)
        self.act = NormalizedActivation(torch.nn.functional.silu)
        self.out = DenseLayer(width, width, self.act, bias=True)

    def forward(self, nodes: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        return self.out(self.act((self.node_in(nodes) + self.edge_in(edges)) * 2 ** -0.5))
