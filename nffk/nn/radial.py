"""Radial bases for edge lengths: Bessel functions times a smooth polynomial cutoff (NequIP's)."""
from __future__ import annotations

import math

import torch


class BesselBasis(torch.nn.Module):
    """b_n(r) = (2 / r_max) * sin(n pi r / r_max) / r, n = 1..num_basis, frequencies trainable by default.

    Written with sinc so that r = 0 gives the finite limit instead of NaN."""

    def __init__(self, r_max: float, num_basis: int = 8, trainable: bool = True):
        super().__init__()
        if r_max <= 0 or num_basis < 1:
            raise ValueError(f"need r_max > 0 and num_basis >= 1, got r_max={r_max}, num_basis={num_basis}")
        self.r_max, self.num_basis = float(r_max), int(num_basis)
        # The trainable parameter is n (frequency / pi): exact in any dtype, unlike n * pi in float32.
        wavenumbers = torch.arange(1, num_basis + 1, dtype=torch.get_default_dtype())
        if trainable:
            self.wavenumbers = torch.nn.Parameter(wavenumbers)
        else:
            self.register_buffer("wavenumbers", wavenumbers)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        scaled = r.unsqueeze(-1) / self.r_max  # [..., 1]
        # sin(n pi x) / r = (n pi / r_max) * sinc(n x)
        return (2.0 / self.r_max) * (math.pi * self.wavenumbers / self.r_max) * torch.sinc(self.wavenumbers * scaled)


class PolynomialCutoff(torch.nn.Module):
    """Smooth envelope u(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2), x = r / r_max,
    zero beyond r_max, with p-1 continuous derivatives at the cutoff."""

    def __init__(self, r_max: float, p: int = 6):
        super().__init__()
        if r_max <= 0 or p < 2:
            raise ValueError(f"need r_max > 0 and p >= 2, got r_max={r_max}, p={p}")
        self.r_max, self.p = float(r_max), int(p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        p = self.p
        x = r / self.r_max
        envelope = (1.0 - (p + 1) * (p + 2) / 2 * x.pow(p) + p * (p + 2) * x.pow(p + 1)
                    - p * (p + 1) / 2 * x.pow(p + 2))
        return envelope * (x < 1.0)


class RadialEmbedding(torch.nn.Module):
    """Bessel basis times the polynomial cutoff: [..., num_basis] features of edge lengths."""

    def __init__(self, r_max: float, num_basis: int = 8, p: int = 6, trainable: bool = True):
        super().__init__()
        self.basis = BesselBasis(r_max, num_basis, trainable)
        self.cutoff = PolynomialCutoff(r_max, p)
        self.num_basis = num_basis

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return self.basis(r) * self.cutoff(r).unsqueeze(-1)
