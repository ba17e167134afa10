"""Linear, Gate, SphericalHarmonics, radial bases and from_e3nn against e3nn and first principles."""
import math

import e3nn.nn
import e3nn.o3
import pytest
import torch

import nffk.nn
from nffk.testing import random_irreps


def close(got, expected, tolerance=1e-6):
    return (got - expected).abs().max().item() <= tolerance * max(expected.abs().max().item(), 1e-30)


def test_linear_with_biases_matches_e3nn(seeded):
    for _ in range(6):
        # Every output irrep reachable from the input (e3nn's Linear fails on biased outputs without paths).
        irreps_in = e3nn.o3.Irreps("2x0e") + random_irreps(seeded, lmax=2, max_mul=4)
        irreps_out = e3nn.o3.Irreps("3x0e") + e3nn.o3.Irreps([(int(torch.randint(1, 4, (), generator=seeded)), ir)
                                                              for _, ir in irreps_in])
        theirs = e3nn.o3.Linear(irreps_in, irreps_out, biases=True)
        with torch.no_grad():
            theirs.bias.normal_(generator=seeded)
        ours = nffk.nn.Linear(str(irreps_in), str(irreps_out), biases=True)
        with torch.no_grad():
            ours.weight.copy_(theirs.weight)
            ours.bias.copy_(theirs.bias)
        x = torch.randn(5, irreps_in.dim, generator=seeded)
        assert close(ours(x), theirs(x))
        assert close(nffk.nn.from_e3nn(theirs)(x), theirs(x))
        assert set(ours.state_dict()) == set(theirs.state_dict()) - {k for k in theirs.state_dict() if "_compiled" in k}


def random_gate_irreps(gen):
    gated = random_irreps(gen, lmax=2, max_mul=3)
    scalars = f"{int(torch.randint(1, 5, (), generator=gen))}x0e+2x0o"
    gates = f"{gated.num_irreps}x0e"
    return scalars, gates, gated


def test_gate_matches_e3nn(seeded):
    for _ in range(6):
        scalars, gates, gated = random_gate_irreps(seeded)
        acts_scalars, acts_gates = [torch.nn.functional.silu, torch.tanh], [torch.sigmoid]
        theirs = e3nn.nn.Gate(scalars, acts_scalars, gates, acts_gates, gated)
        ours = nffk.nn.Gate(scalars, acts_scalars, gates, acts_gates, gated)
        assert ours.irreps_in == theirs.irreps_in and ours.irreps_out == theirs.irreps_out
        x = torch.randn(7, theirs.irreps_in.dim, generator=seeded)
        assert close(ours(x), theirs(x))
        assert close(nffk.nn.from_e3nn(theirs)(x), theirs(x))


def test_gate_rejects_inconsistent_irreps():
    with pytest.raises(ValueError, match="one gate per irrep"):
        nffk.nn.Gate("2x0e", [torch.tanh], "1x0e", [torch.sigmoid], "2x1o")
    with pytest.raises(ValueError, match="irreps_scalars must be scalars"):
        nffk.nn.Gate("2x1o", [torch.tanh], "1x0e", [torch.sigmoid], "1x1o")
    with pytest.raises(ValueError, match="even or odd"):
        nffk.nn.Gate("2x0o", [torch.sigmoid], "1x0e", [torch.sigmoid], "1x1o")


@pytest.mark.parametrize("normalization", ["integral", "component", "norm"])
def test_spherical_harmonics_module_matches_e3nn(normalization, seeded):
    for irreps in ("0e+1o+2e", "1o+3o", "0e+1o+2e+3o+4e+5o+6e"):
        theirs = e3nn.o3.SphericalHarmonics(irreps, True, normalization)
        ours = nffk.nn.SphericalHarmonics(irreps, True, normalization)
        x = torch.randn(11, 3, generator=seeded, dtype=torch.float64)
        assert close(ours(x), theirs(x), 1e-12)
        assert close(nffk.nn.from_e3nn(theirs)(x), theirs(x), 1e-12)
        assert close(ours(x.float()), theirs(x.float()), 1e-5)
    assert nffk.nn.SphericalHarmonics(2, True).irreps_out == e3nn.o3.Irreps("0e+1o+2e")
    with pytest.raises(ValueError, match="not a spherical harmonic"):
        nffk.nn.SphericalHarmonics("0e+1e", True)
    with pytest.raises(ValueError, match="normalization"):
        nffk.nn.SphericalHarmonics("0e", True, "unit")


def test_bessel_basis_matches_its_formula_and_is_finite_at_zero(seeded):
    basis = nffk.nn.BesselBasis(r_max=5.0, num_basis=6, trainable=False).double()
    r = 0.1 + 4.9 * torch.rand(50, dtype=torch.float64, generator=seeded)
    n = torch.arange(1, 7, dtype=torch.float64)
    expected = 2 / 5.0 * torch.sin(n * math.pi * r[:, None] / 5.0) / r[:, None]
    assert close(basis(r), expected, 1e-10)
    at_zero = basis(torch.zeros(1, dtype=torch.float64))
    assert torch.allclose(at_zero, 2 / 5.0 * n * math.pi / 5.0)


def test_polynomial_cutoff_is_smooth_at_r_max():
    cutoff = nffk.nn.PolynomialCutoff(r_max=4.0, p=6)
    r = torch.tensor([4.0], dtype=torch.float64, requires_grad=True)
    value = cutoff(r - 1e-9)
    first = torch.autograd.grad(cutoff(r * (1 - 1e-12)).sum(), r, create_graph=True)[0]
    assert abs(value.item()) < 1e-6 and abs(first.item()) < 1e-6
    assert cutoff(torch.tensor([0.0])).item() == 1.0
    assert cutoff(torch.tensor([5.0])).item() == 0.0
    embedding = nffk.nn.RadialEmbedding(4.0, num_basis=8)
    assert embedding(torch.rand(10) * 6).shape == (10, 8)


def test_tensor_product_weight_flags_follow_e3nn():
    for shared, internal in [(None, None), (False, None), (True, False), (True, True)]:
        theirs = e3nn.o3.FullyConnectedTensorProduct("2x0e", "0e", "1x0e", shared_weights=shared,
                                                     internal_weights=internal)
        ours = nffk.nn.FullyConnectedTensorProduct("2x0e", "0e", "1x0e", shared_weights=shared,
                                                   internal_weights=internal)
        assert (ours.shared_weights, ours.internal_weights) == (theirs.shared_weights, theirs.internal_weights)
    with pytest.raises(ValueError, match="internal_weights=True requires shared_weights=True"):
        nffk.nn.FullyConnectedTensorProduct("2x0e", "0e", "1x0e", shared_weights=False, internal_weights=True)


def test_tensor_product_module_weight_errors():
    external = nffk.nn.FullyConnectedTensorProduct("2x0e", "0e", "1x0e", shared_weights=False)
    with pytest.raises(ValueError, match="weight is required"):
        external(torch.zeros(3, 2), torch.zeros(3, 1))
    with pytest.raises(ValueError, match=r"weight must have shape \[\.\.\., 2\]"):
        external(torch.zeros(3, 2), torch.zeros(3, 1), torch.zeros(2))
    shared = nffk.nn.FullyConnectedTensorProduct("2x0e", "0e", "1x0e")
    with pytest.raises(ValueError, match=r"weight must have shape \[2\]"):
        shared(torch.zeros(3, 2), torch.zeros(3, 1), torch.zeros(3, 2))


def test_from_e3nn_rejects_unknown_modules():
    with pytest.raises(ValueError, match="cannot convert"):
        nffk.nn.from_e3nn(torch.nn.Linear(2, 2))
