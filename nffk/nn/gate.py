"""Gated nonlinearity with e3nn's `nn.Gate` constructor and input/output layout."""
from __future__ import annotations

import functools

import torch

from nffk.o3 import Irreps


@functools.lru_cache(maxsize=None)
def second_moment_constant(act) -> float:
    """1/sqrt(E[act(z)^2]) for z ~ N(0, 1), estimated exactly as e3nn does (10^6 float64 draws of a
    generator seeded with 0), so normalised activations give e3nn's outputs bit for bit.
    Cached per activation: models build many gates and MLPs with the same few activations."""
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(1_000_000, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        return act(z).pow(2).mean().pow(-0.5).item()


class NormalizedActivation(torch.nn.Module):
    """act(x) scaled to unit second moment under a standard normal input (identity scale if within 1e-4)."""

    def __init__(self, act):
        super().__init__()
        self.act = act
        constant = second_moment_constant(act)
        self.constant = 1.0 if abs(constant - 1) < 1e-4 else constant

    def forward(self, x):
        y = self.act(x)
        return y if self.constant == 1.0 else y * self.constant


def activation_parity(act, p_in: int) -> int:
    """Parity of act(scalar of parity p_in): even inputs stay even; odd inputs need an even or odd act."""
    if p_in == 1:
        return 1
    x = torch.linspace(0, 10, 256)
    a1, a2 = act(x), act(-x)
    if (a1 - a2).abs().max() < 1e-5:
        return 1
    if (a1 + a2).abs().max() < 1e-5:
        return -1
    raise ValueError("the activation of an odd scalar (0o) must be even or odd, else parity is broken")


class Gate(torch.nn.Module):
    """out = [act_scalars(scalars), act_gates(gates) * gated], input laid out as e3nn's Gate:
    (scalars + gates + gated) sorted by irrep and simplified.

    `irreps_gates` must have one scalar per irrep of `irreps_gated`."""

    def __init__(self, irreps_scalars, act_scalars, irreps_gates, act_gates, irreps_gated):
        super().__init__()
        scalars, gates, gated = (Irreps(irreps_scalars).simplify(), Irreps(irreps_gates).simplify(),
                                 Irreps(irreps_gated).simplify())
        if len(scalars) and scalars.lmax > 0:
            raise ValueError(f"irreps_scalars must be scalars, got {scalars}")
        if len(gates) and gates.lmax > 0:
            raise ValueError(f"irreps_gates must be scalars, got {gates}")
        if gates.num_irreps != gated.num_irreps:
            raise ValueError(f"irreps_gates ({gates}, {gates.num_irreps} scalars) must have one gate per irrep of "
                             f"irreps_gated ({gated}, {gated.num_irreps} irreps)")
        if len(act_scalars) != len(scalars) or len(act_gates) != len(gates):
            raise ValueError(f"need one activation per irrep: {len(scalars)} for irreps_scalars and {len(gates)} for "
                             f"irreps_gates, got {len(act_scalars)} and {len(act_gates)}")
        self.irreps_scalars, self.irreps_gates, self.irreps_gated = scalars, gates, gated
        self.act_scalars = torch.nn.ModuleList(NormalizedActivation(a) for a in act_scalars)
        self.act_gates = torch.nn.ModuleList(NormalizedActivation(a) for a in act_gates)
        scalars_out = Irreps([(mul, (0, activation_parity(a, ir.p))) for (mul, ir), a in zip(scalars, act_scalars)])
        gate_parities = [activation_parity(a, ir.p) for (mul, ir), a in zip(gates, act_gates) for _ in range(mul)]
        gated_out, k = [], 0
        for mul, ir in gated:
            for _ in range(mul):
                gated_out.append((1, (ir.l, ir.p * gate_parities[k])))
                k += 1
        self.irreps_out = scalars_out + Irreps(gated_out).simplify()

        # The input is the three groups concatenated and sorted (stable) by irrep, as e3nn does;
        # input_columns gathers it back into scalars | gates | gated.
        groups = scalars + gates + gated
        sorted_groups, new_position, _ = groups.sort()
        self.irreps_in = sorted_groups.simplify()
        sorted_offsets = [0]
        for mul, ir in sorted_groups:
            sorted_offsets.append(sorted_offsets[-1] + mul * ir.dim)
        columns = [torch.arange(sorted_offsets[new_position[k]], sorted_offsets[new_position[k]] + mul * ir.dim)
                   for k, (mul, ir) in enumerate(groups)]
        self.register_buffer("input_columns", torch.cat(columns) if columns else torch.zeros(0, dtype=torch.int64),
                             persistent=False)
        # Each gate multiplies all 2l+1 components of its gated irrep.
        repeats = torch.tensor([ir.dim for mul, ir in gated for _ in range(mul)], dtype=torch.int64)
        self.register_buffer("gate_repeats", repeats, persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.shape[-1] != self.irreps_in.dim:
            raise ValueError(f"features must have last dimension {self.irreps_in.dim} ({self.irreps_in}), "
                             f"got {tuple(features.shape)}")
        x = features[..., self.input_columns]
        scalars, gates, gated = x.split([self.irreps_scalars.dim, self.irreps_gates.dim, self.irreps_gated.dim], -1)
        outputs = [act(part) for act, part in zip(self.act_scalars, _split(scalars, self.irreps_scalars))]
        if self.irreps_gated.dim:
            gates = torch.cat([act(part) for act, part in zip(self.act_gates, _split(gates, self.irreps_gates))], -1)
            outputs.append(gated * gates.repeat_interleave(self.gate_repeats, dim=-1,
                                                           output_size=self.irreps_gated.dim))
        return torch.cat(outputs, -1) if outputs else features.new_zeros(*features.shape[:-1], 0)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.irreps_in} -> {self.irreps_out})"


def _split(x: torch.Tensor, irreps: Irreps) -> list:
    return list(x.split([mul * ir.dim for mul, ir in irreps], -1)) if len(irreps) else []
