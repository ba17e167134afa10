"""Spherical-harmonics module with e3nn's `o3.SphericalHarmonics` constructor."""
from __future__ import annotations

import torch

from nffk import backends
from nffk.o3 import Irreps
from nffk.ops.spherical_harmonics import spherical_harmonics


class SphericalHarmonics(torch.nn.Module):
    """Y(x) for x [..., 3]: `irreps_out` as irreps ("0e+1o+2e"), an int lmax or a list of l."""

    def __init__(self, irreps_out, normalize: bool, normalization: str = "integral", irreps_in=None,
                 backend: str = "auto"):
        super().__init__()
        if isinstance(irreps_out, int):
            irreps_out = Irreps.spherical_harmonics(irreps_out)
        elif isinstance(irreps_out, (list, tuple)) and all(isinstance(l, int) for l in irreps_out):
            irreps_out = Irreps([(1, (l, (-1) ** l)) for l in irreps_out])
        self.irreps_out = Irreps(irreps_out)
        self.irreps_in = Irreps("1o" if irreps_in is None else irreps_in)
        if self.irreps_in not in (Irreps("1o"), Irreps("1e")):
            raise ValueError(f"irreps_in must be 1o or 1e (a vector), got {self.irreps_in}")
        p_in = self.irreps_in[0].ir.p
        for mul, ir in self.irreps_out:
            # Y_l of a vector with parity p_in has parity p_in**l.
            if mul != 1 or ir.p != p_in ** ir.l:
                raise ValueError(f"irreps_out: {mul}x{ir} is not a spherical harmonic of a {self.irreps_in} input "
                                 f"(expected 1x{ir.l}{'e' if p_in ** ir.l == 1 else 'o'})")
        if normalization not in ("integral", "component", "norm"):
            raise ValueError(f"normalization must be 'integral', 'component' or 'norm', got {normalization!r}")
        self.normalize, self.normalization = normalize, normalization
        self.ls = [ir.l for _, ir in self.irreps_out]
        self.backend = backends.check_name(backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spherical_harmonics(self.ls, x, self.normalize, self.normalization, self.backend)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.irreps_out}, normalize={self.normalize})"
