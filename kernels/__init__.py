"""Triton kernels (the GPU path), installed as `nffk.kernels`.

One module per op, each exposing plain launchers on torch tensors and plan tables; `nffk.ops`
registers them as the "triton" backend. Tested on the CPU under TRITON_INTERPRET=1 against the
reference implementations (set it before this package is imported)."""
from . import conv, neighbor_list, spherical_harmonics, tensor_product  # noqa: F401
