"""Multi-channel E(n)-equivariant network (EGNN with Cartesian vector channels, tensor order 1).

Atoms carry scalars h_i [width] and C = max(1, width // 4) vector channels v_i [3, C]. Each of the
`depth` = 3 layers builds invariant messages from scalars, distances and projections of the
vectors on the edge direction r̂_ij, then updates both:

    m_ij  = MLP_m([h_i, h_j, v_i . r̂_ij, v_j . r̂_ij] ; radial(|r_ij|)) * u(|r_ij|)
    a_ij, b_ij = W_v m_ij                               (2C invariant coefficients)
    v_i  <- v_i + mix( sum_j (r̂_ij a_ij + v_j b_ij) / sqrt(avg_num_neighbors) )
    h_i  <- h_i + MLP_h([h_i, sum_j m_ij / sqrt(avg_num_neighbors), |v_i|^2])

`mix` is a linear map across channels (no bias), so vectors stay vectors (O(3)-equivariant,
also under reflections) and scalars stay invariant. Readouts: energy ẽ_i = w_E . h_i; the
direct force head is a linear combination of the vector channels, f̃_i = v_i w_F.
"""
from __future__ import annotations

import torch

from nffk.models.base import ForceFieldModel
from nffk.models.layers import MessageMLP
from nffk.nn import DenseLayer, FullyConnectedNet, Linear, RadialEmbedding
from nffk.ops import segment_sum

SILU = torch.nn.functional.silu


class EGNN(ForceFieldModel):
    arch = "EGNN"
    depth = 3
    base_width = 32

    def __init__(self, width: int, **options):
        super().__init__(width, **options)
        w, nb = width, self.num_basis
        self.channels = c = max(1, width // 4)
        self.embedding = Linear(f"{self.num_species}x0e", f"{w}x0e")
        self.radial = RadialEmbedding(self.cutoff, nb)
        self.messages = torch.nn.ModuleList(MessageMLP(2 * w + 2 * c, nb, w) for _ in range(self.depth))
        self.coefficients = torch.nn.ModuleList(DenseLayer(w, 2 * c) for _ in range(self.depth))
        self.mixes = torch.nn.ModuleList(DenseLayer(c, c) for _ in range(self.depth))
        self.updates = torch.nn.ModuleList(
            FullyConnectedNet([2 * w + c, w, w], SILU, bias=True) for _ in range(self.depth))
        self.energy_head = DenseLayer(w, 1)
        self.force_head = DenseLayer(c, 1)

    def atomic(self, species, vectors, lengths, graph):
        c = self.channels
        h = self.embedding(torch.nn.functional.one_hot(species, self.num_species).to(vectors.dtype))
        v = h.new_zeros(h.shape[0], 3, c)
        direction = vectors / lengths.clamp_min(1e-9).unsqueeze(-1)  # [E, 3]
        radial = self.radial(lengths)
        envelope = self.radial.cutoff(lengths).unsqueeze(-1)
        norm = self.avg_num_neighbors ** -0.5
        senders, receivers, ptr = graph.senders, graph.receivers, graph.receiver_ptr
        for message, coefficient, mix, update in zip(self.messages, self.coefficients, self.mixes, self.updates):
            v_send = v[senders]
            projections = [torch.einsum("ex,exc->ec", direction, v[receivers]),
                           torch.einsum("ex,exc->ec", direction, v_send)]
            m = message(torch.cat([h[receivers], h[senders], *projections], dim=-1), radial) * envelope
            a, b = coefficient(m).split(c, dim=-1)
            vector_messages = direction.unsqueeze(-1) * a.unsqueeze(1) + v_send * b.unsqueeze(1)  # [E, 3, C]
            summed = segment_sum(vector_messages.reshape(-1, 3 * c), ptr).reshape(-1, 3, c) * norm
            v = v + mix(summed)
            h = h + update(torch.cat([h, segment_sum(m, ptr) * norm, (v * v).sum(1)], dim=-1))
        return self.energy_head(h)[:, 0], self.force_head(v)[:, :, 0]
