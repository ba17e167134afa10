"""Pure O(3) math with e3nn's conventions: irreps, Wigner matrices, spherical harmonics."""
