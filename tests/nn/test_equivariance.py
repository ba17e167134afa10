"""Rotating and reflecting the inputs with Wigner D matrices transforms the outputs accordingly."""
import torch

import nffk.nn
from nffk.o3 import Irreps, rand_matrix
from nffk.testing import random_irreps, random_tensor_product


def random_orthogonal(gen):
    """A random rotation, composed with the inversion half of the time (det -1: parity matters)."""
    torch.manual_seed(int(torch.randint(0, 2**31, (), generator=gen)))
    rotation = rand_matrix(dtype=torch.float64)
    return rotation if torch.randint(0, 2, (), generator=gen) else -rotation


def D(irreps, R):
    return Irreps(irreps).D_from_matrix(R).to(R.dtype)


def test_tensor_products_are_equivariant(seeded):
    for _ in range(10):
        config = random_tensor_product(seeded)
        module = nffk.nn.TensorProduct(config.irreps_in1, config.irreps_in2, config.irreps_out, config.instructions,
                                       **config.options).double()
        R = random_orthogonal(seeded)
        x1 = torch.randn(4, config.irreps_in1.dim, dtype=torch.float64, generator=seeded)
        x2 = torch.randn(4, config.irreps_in2.dim, dtype=torch.float64, generator=seeded)
        rotated_after = module(x1, x2) @ D(config.irreps_out, R).T
        rotated_before = module(x1 @ D(config.irreps_in1, R).T, x2 @ D(config.irreps_in2, R).T)
        torch.testing.assert_close(rotated_before, rotated_after, atol=1e-10, rtol=1e-10)


def test_linear_gate_and_spherical_harmonics_are_equivariant(seeded):
    R = random_orthogonal(seeded)
    irreps = random_irreps(seeded, lmax=3, max_mul=3)
    linear = nffk.nn.Linear(irreps, irreps).double()
    x = torch.randn(5, irreps.dim, dtype=torch.float64, generator=seeded)
    torch.testing.assert_close(linear(x @ D(irreps, R).T), linear(x) @ D(irreps, R).T)

    gate = nffk.nn.Gate("3x0e+1x0o", [torch.tanh, torch.tanh], "3x0e", [torch.sigmoid], "1x1o+1x2e+1x1e")
    y = torch.randn(5, gate.irreps_in.dim, dtype=torch.float64, generator=seeded)
    torch.testing.assert_close(gate(y @ D(gate.irreps_in, R).T), gate(y) @ D(gate.irreps_out, R).T)

    sh = nffk.nn.SphericalHarmonics(6, normalize=True)
    vectors = torch.randn(9, 3, dtype=torch.float64, generator=seeded)
    torch.testing.assert_close(sh(vectors @ R.T), sh(vectors) @ D(sh.irreps_out, R).T)
