"""Unconstrained message passing: the bottom of the symmetry ladder.

Messages see the raw relative position vector r_ij = x_j - x_i (its three Cartesian
components), so nothing makes the model rotation-invariant or -equivariant: it has to learn
the symmetry from data. Each of the `depth` = 3 layers:

    m_ij = MLP_m([h_i, h_j] ; [r_ij / cutoff, radial(|r_ij|)]) * u(|r_ij|)     (u: smooth cutoff)
    h_i <- h_i + MLP_h([h_i, sum_j m_ij / sqrt(avg_num_neighbors)])

with two-layer SiLU MLPs of width `width` (`MessageMLP` normalises the node and the geometric
inputs separately, so the geometry keeps its weight at every width). Readouts: energy ẽ_i = w_E . h_i and a direct force
head f̃_i = W_F h_i (three unconstrained outputs). Parameters: 18 width^2 + O(width).
"""
from __future__ import annotations

import torch

from nffk.models.base import ForceFieldModel
from nffk.models.layers import MessageMLP
from nffk.nn import DenseLayer, FullyConnectedNet, Linear, RadialEmbedding
from nffk.ops import segment_sum

SILU = torch.nn.functional.silu


class MPNN(ForceFieldModel):
    arch = "MPNN"
    depth = 3
    base_width = 32

    def __init__(self, width: int, **options):
        super().__init__(width, **options)
        w, nb = width, self.num_basis
        self.embedding = Linear(f"{self.num_species}x0e", f"{w}x0e")
        self.radial = RadialEmbedding(self.cutoff, nb)
        self.messages = torch.nn.ModuleList(MessageMLP(2 * w, 3 + nb, w) for _ in range(self.depth))
        self.updates = torch.nn.ModuleList(
            FullyConnectedNet([2 * w, w, w], SILU, bias=True) for _ in range(self.depth))
        self.energy_head = DenseLayer(w, 1)
        self.force_head = DenseLayer(w, 3)

    def atomic(self, species, vectors, lengths, graph):
        h = self.embedding(torch.nn.functional.one_hot(species, self.num_species).to(vectors.dtype))
        edge_features = torch.cat([vectors / self.cutoff, self.radial(lengths)], dim=-1)
        envelope = self.radial.cutoff(lengths).unsqueeze(-1)
        norm = self.avg_num_neighbors ** -0.5
        for message, update in zip(self.messages, self.updates):
            m = message(torch.cat([h[graph.receivers], h[graph.senders]], dim=-1), edge_features) * envelope
            h = h + update(torch.cat([h, segment_sum(m, graph.receiver_ptr) * norm], dim=-1))
        return self.energy_head(h)[:, 0], self.force_head(h)
