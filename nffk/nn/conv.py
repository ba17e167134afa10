"""The NequIP-style interaction block on the message-passing op `nffk.ops.conv`.

    x ─ Linear ─┐
                conv(x[senders] ⊗ Y(r̂), w(|r|)) summed into receivers, / sqrt(avg_num_neighbors)
    radial ─ MLP ─┘                      │
                                       Linear ──(+)── Gate ──(+ x if residual)── out
    x ─ self-connection Linear ────────────┘

The edge tensor product is channel-wise (`uvu`, NequIP/MACE), its weights come per edge from a
radial MLP on the radial embedding (Bessel basis times a polynomial cutoff), and the message
sum is done by `nffk.ops.conv` (fused on backends that have it: no per-edge output tensor).
"""
from __future__ import annotations

import torch

from nffk import backends
from nffk.nn.gate import Gate
from nffk.nn.linear import Linear
from nffk.nn.mlp import FullyConnectedNet
from nffk.nn.tensor_product import ChannelwiseTensorProduct
from nffk.o3 import Irreps
from nffk.ops.conv import ConvGraph, conv


def gate_for(irreps_out) -> Gate:
    """The Gate producing `irreps_out`: its scalars through SiLU (0e) or tanh (0o), every other
    irrep multiplied by a sigmoid gate of its own."""
    irreps_out = Irreps(irreps_out)
    scalars = Irreps([(mul, ir) for mul, ir in irreps_out if ir.l == 0])
    gated = Irreps([(mul, ir) for mul, ir in irreps_out if ir.l > 0])
    acts = [torch.nn.functional.silu if ir.p == 1 else torch.tanh for _, ir in scalars]
    gates = Irreps(f"{gated.num_irreps}x0e") if gated.num_irreps else Irreps("")
    return Gate(scalars, acts, gates, [torch.sigmoid] * len(gates), gated)


class EquivariantConv(torch.nn.Module):
    """One interaction block: ``out = Gate(Linear(conv(Linear(x), Y, MLP(radial))) + SC(x)) [+ x]``.

    irreps_in: node features in; irreps_out: node features out (scalars and gated irreps);
    irreps_sh: edge spherical harmonics (e.g. "0e+1o+2e"); num_basis: size of the radial
    embedding; radial_hidden: hidden sizes of the radial MLP; avg_num_neighbors: the message sum
    is divided by its square root; residual: add the input (None: when irreps_in == irreps_out).

    forward(node_features [N, irreps_in.dim], edge_sh [E, irreps_sh.dim], edge_embedding
    [E, num_basis], graph=ConvGraph) -> [N, irreps_out.dim]. Edges are sorted by receiver; build
    the graph once with `ConvGraph.build(senders, receivers, num_nodes)` and share it across layers.
    """

    def __init__(self, irreps_in, irreps_out, irreps_sh, num_basis: int = 8, radial_hidden=(32,),
                 avg_num_neighbors: float = 1.0, residual: bool | None = None, backend: str = "auto"):
        super().__init__()
        self.irreps_in, self.irreps_out, self.irreps_sh = Irreps(irreps_in), Irreps(irreps_out), Irreps(irreps_sh)
        if not avg_num_neighbors > 0:
            raise ValueError(f"avg_num_neighbors must be > 0, got {avg_num_neighbors}")
        self.avg_num_neighbors = float(avg_num_neighbors)
        self.backend = backends.check_name(backend)
        self.gate = gate_for(self.irreps_out)
        self.irreps_out = self.gate.irreps_out  # the gate's order: scalars, then gated irreps
        self.linear_in = Linear(self.irreps_in, self.irreps_in, backend=backend)
        self.tp = ChannelwiseTensorProduct(self.irreps_in, self.irreps_sh, self.irreps_out, backend=backend)
        self.irreps_mid = self.tp.irreps_out
        missing = [str(ir) for _, ir in self.gate.irreps_in if ir not in {ir2 for _, ir2 in self.irreps_mid}]
        if missing:
            raise ValueError(f"irreps_out asks for {missing}, which {self.irreps_in} x {self.irreps_sh} cannot produce")
        self.radial = FullyConnectedNet([num_basis, *radial_hidden, self.tp.weight_numel], torch.nn.functional.silu)
        self.linear_out = Linear(self.irreps_mid, self.gate.irreps_in, backend=backend)
        self.self_connection = Linear(self.irreps_in, self.gate.irreps_in, backend=backend)
        if residual is None:
            residual = self.irreps_in == self.irreps_out
        if residual and self.irreps_in != self.irreps_out:
            raise ValueError(f"residual=True needs irreps_in == irreps_out, got {self.irreps_in} and {self.irreps_out}")
        self.residual = bool(residual)

    def forward(self, node_features: torch.Tensor, edge_sh: torch.Tensor, edge_embedding: torch.Tensor,
                graph: ConvGraph) -> torch.Tensor:
        weights = self.radial(edge_embedding)
        messages = conv(self.linear_in(node_features), edge_sh, weights, plan=self.tp.plan, backend=self.backend,
                        graph=graph)
        messages = messages * self.avg_num_neighbors ** -0.5
        out = self.gate(self.linear_out(messages) + self.self_connection(node_features))
        return node_features + out if self.residual else out

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.irreps_in} -> {self.irreps_out} | sh {self.irreps_sh} | "
                f"{self.tp.weight_numel} edge weights | residual={self.residual})")
