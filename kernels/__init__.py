"""Triton kernels (the GPU path), installed as `nffk.kernels`.

Tested on the CPU under TRITON_INTERPRET=1 against the reference implementations."""
