"""Triton spherical-harmonics kernels against the reference recurrence and its autograd derivatives."""
import pytest
import torch

from nffk.o3 import spherical_harmonics
from nffk.o3.spherical_harmonics import _scaled_coefficients

CASES = [((0, 1, 2), "component"), ((3, 1, 4), "integral"), ((6,), "norm"), ((8, 0), "integral")]


@pytest.mark.parametrize("degrees,normalization", CASES)
def test_forward_and_derivatives_match_autograd_of_the_reference(degrees, normalization, seeded, device, poisoned):
    kernels = poisoned.spherical_harmonics
    n = 37 + int(torch.randint(0, 100, (), generator=seeded))  # a partial block of vectors
    x = torch.randn(n, 3, dtype=torch.float64, generator=seeded).to(device) * 2
    g = torch.randn(n, sum(2 * l + 1 for l in degrees), dtype=torch.float64, generator=seeded).to(device)
    k = torch.randn(n, 3, dtype=torch.float64, generator=seeded).to(device)
    coefficients = kernels.coefficient_tensor(*_scaled_coefficients(max(degrees), normalization), device,
                                              torch.float64)

    def reference(v):
        return spherical_harmonics(list(degrees), v, False, normalization)

    x = x.requires_grad_()
    y = reference(x)
    (vjp,) = torch.autograd.grad(y, x, g, create_graph=True)
    (hvp,) = torch.autograd.grad(vjp, x, k)
    jvp = torch.func.jvp(reference, (x.detach(),), (k,))[1]
    x = x.detach()
    scale = lambda t: dict(atol=1e-12 * max(1.0, t.abs().max().item()), rtol=1e-10)  # noqa: E731
    torch.testing.assert_close(kernels.forward(x, degrees, coefficients), y.detach(), **scale(y))
    torch.testing.assert_close(kernels.vjp(x, g, degrees, coefficients), vjp.detach(), **scale(vjp))
    torch.testing.assert_close(kernels.jvp(x, k, degrees, coefficients), jvp, **scale(jvp))
    torch.testing.assert_close(kernels.hvp(x, g, k, degrees, coefficients), hvp, **scale(hvp))


def test_float32_and_edge_cases(seeded, device):
    from nffk import backends
    kernels = backends.triton_kernels().spherical_harmonics
    coefficients = kernels.coefficient_tensor(*_scaled_coefficients(3, "component"), device, torch.float32)
    x = torch.randn(50, 3, generator=seeded).to(device)
    x[0] = 0.0  # the zero vector: Y_0 = 1, every other degree 0
    got = kernels.forward(x, (0, 1, 2, 3), coefficients)
    torch.testing.assert_close(got, spherical_harmonics([0, 1, 2, 3], x, False, "component"), atol=1e-5, rtol=1e-5)
    assert got[0, 0] == 1 and torch.all(got[0, 1:] == 0)
    assert kernels.forward(x[:0], (0, 1), coefficients).shape == (0, 4)
