"""Real spherical harmonics of edge vectors (e3nn conventions), dispatched to a backend.

The reference is `nffk.o3.spherical_harmonics` (pure torch, differentiable to any order)."""
import torch

from nffk import backends, o3

IMPLEMENTED = ("reference",)


def spherical_harmonics(ls, x: torch.Tensor, normalize: bool = True, normalization: str = "integral",
                        backend: str = "auto") -> torch.Tensor:
    """Y_l(x) for every l in `ls` (an int, a list of ints, or irreps such as '0e+1o+2e'), concatenated."""
    backends.resolve("spherical_harmonics", backend, x.device, IMPLEMENTED)
    return o3.spherical_harmonics(ls, x, normalize, normalization)
