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


@pytest.mark.parametrize("normalize,normalization", [(True, "integral"), (False, "norm")])
def test_op_backend_triton_first_and_second_derivatives(normalize, normalization, seeded, device):
    """nffk.ops.spherical_harmonics(backend="triton"): values, forces (vjp) and force-training
    derivatives (vjp of the vjp, w.r.t. x and the output gradient) against the reference."""
    from nffk.ops.spherical_harmonics import spherical_harmonics as op
    ls = [0, 1, 2, 3]
    x = (torch.randn(29, 3, dtype=torch.float64, generator=seeded) * 1.5).to(device)
    x[3] = 0.0  # the zero vector: normalised as torch.nn.functional.normalize does (the reference's
    # second derivative there is NaN, and so must ours be: both differentiate the same torch code)
    g = torch.randn(29, 16, dtype=torch.float64, generator=seeded).to(device).requires_grad_()
    h = torch.randn(29, 3, dtype=torch.float64, generator=seeded).to(device)
    results = {}
    for backend in ("reference", "triton"):
        xr = x.clone().requires_grad_()
        y = op(ls, xr, normalize, normalization, backend=backend)
        (vjp,) = torch.autograd.grad(y, xr, g, create_graph=True)
        second = torch.autograd.grad((vjp * h).sum(), (xr, g))
        results[backend] = (y.detach(), vjp.detach(), *second)
    for got, expected in zip(results["triton"], results["reference"]):
        torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-9, equal_nan=True)
    assert torch.isfinite(results["triton"][1]).all()
    second_order = torch.autograd.gradcheck(
        lambda v: torch.autograd.grad(op([1, 2], v, normalize, normalization, backend="triton").pow(2).sum(), v,
                                      create_graph=True)[0], (x[:3].clone().requires_grad_(),), atol=1e-6)
    assert second_order
    y32 = op(ls, x.float(), normalize, normalization, backend="triton")
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), results["reference"][0], atol=1e-5, rtol=1e-5)
