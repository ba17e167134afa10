"""spherical_harmonics against e3nn (l <= 12) and against its defining properties (any l)."""
import math

import e3nn.o3
import numpy as np
import pytest
import torch

from nffk import o3
from nffk.o3.spherical_harmonics import spherical_harmonics, spherical_harmonics_coefficients


def random_vectors(n, dtype, gen):
    # Spread of lengths, plus exact poles and axis points (where naive angle formulas break).
    x = torch.randn(n, 3, dtype=torch.float64, generator=gen) * torch.exp(torch.randn(n, 1, dtype=torch.float64,
                                                                                        generator=gen))
    axes = torch.tensor([[0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1], [1, 0, 0], [-1, 0, 0], [0, 2.5, 0]],
                        dtype=torch.float64)
    return torch.cat([x, axes]).to(dtype)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("normalization", ["integral", "component", "norm"])
def test_matches_e3nn_per_degree(dtype, tol, normalization, seeded):
    x = random_vectors(300, dtype, seeded)
    for l in range(13):
        for normalize in (True, False):
            ours = spherical_harmonics(l, x, normalize, normalization)
            theirs = e3nn.o3.spherical_harmonics(l, x, normalize, normalization=normalization)
            # Relative to the largest value of each row (un-normalised inputs scale as |x|^l).
            scale = theirs.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
            error = ((ours - theirs).abs() / scale).max().item()
            assert ours.dtype == dtype and ours.shape == theirs.shape
            assert error < tol, (l, normalize, error)


def test_degree_lists_strings_and_irreps_match_e3nn(seeded):
    x = torch.randn(5, 7, 3, dtype=torch.float64, generator=seeded)
    perm = torch.randperm(13, generator=seeded)[:5].tolist()
    for ls in [perm, [0, 1, 2, 3], [2, 2, 0], "0e+1o+2e", "1x1o+2x3o", o3.Irreps.spherical_harmonics(5),
               "0e+1e+2e", "2x1e+3e"]:
        ours = spherical_harmonics(ls, x, True, "component")
        theirs = e3nn.o3.spherical_harmonics(ls if not isinstance(ls, o3.Irreps) else repr(ls), x, True,
                                             normalization="component")
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs, atol=1e-13, rtol=0)


def test_bad_arguments():
    x = torch.randn(4, 3)
    for bad in ["1o+2o", "1e+2o", o3.Irreps("0e+1o+1e"), "0x1o"]:
        with pytest.raises(ValueError, match="irreps"):
            spherical_harmonics(bad, x, True)
    for bad in [-1, 1.5, [], [1, -2], None, True]:
        with pytest.raises(ValueError, match="l must be"):
            spherical_harmonics(bad, x, True)
    with pytest.raises(ValueError, match="normalization"):
        spherical_harmonics(2, x, True, "unit")
    for bad in [torch.randn(4, 2), torch.randn(3, 4), torch.tensor(1.0), [[1.0, 0.0, 0.0]]]:
        with pytest.raises(ValueError, match=r"\[\.\.\., 3\]"):
            spherical_harmonics(2, bad, True)
    with pytest.raises(ValueError, match="floating"):
        spherical_harmonics(2, torch.ones(4, 3, dtype=torch.int64), True)


def test_poles_and_zero_vector_match_e3nn():
    points = torch.tensor([[0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1], [1, 0, 0], [0, 0, 0],
                           [0, 1e-30, 0]], dtype=torch.float64)
    for normalize in (True, False):
        ours_x, theirs_x = points.clone().requires_grad_(), points.clone().requires_grad_()
        ours = spherical_harmonics(list(range(9)), ours_x, normalize)
        theirs = e3nn.o3.spherical_harmonics(list(range(9)), theirs_x, normalize)
        (ours_grad,) = torch.autograd.grad(ours.square().sum() + ours.sum(), ours_x)
        (theirs_grad,) = torch.autograd.grad(theirs.square().sum() + theirs.sum(), theirs_x)
        assert torch.isfinite(ours).all() and torch.isfinite(ours_grad).all()
        torch.testing.assert_close(ours, theirs, atol=1e-14, rtol=0)
        # At the zero vector e3nn's normalize divides by eps = 1e-12, so gradients there are ~1e12.
        torch.testing.assert_close(ours_grad, theirs_grad, atol=1e-13, rtol=1e-13)
    # The zero vector: 1/sqrt(4 pi) for l = 0 and zeros above, with or without normalize.
    zero = spherical_harmonics(list(range(4)), torch.zeros(3, dtype=torch.float64), True)
    torch.testing.assert_close(zero, torch.eye(16, dtype=torch.float64)[0] / math.sqrt(4 * math.pi))


def test_gradcheck_and_gradgradcheck(seeded):
    x = torch.randn(3, 3, dtype=torch.float64, generator=seeded, requires_grad=True)
    for normalize in (True, False):
        def fn(v):
            return spherical_harmonics([0, 1, 2, 3, 5], v, normalize, "norm")
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("lmax", [6, 20])
def test_equivariance_with_reflections(lmax, seeded):
    irreps = o3.Irreps.spherical_harmonics(lmax)
    R = o3.rand_matrix(6, dtype=torch.float64, generator=seeded)
    R[::2] = -R[::2]  # improper rotations: Y^l picks up (-1)^l
    x = torch.randn(6, 3, dtype=torch.float64, generator=seeded)
    rotated = spherical_harmonics(irreps, torch.einsum("zij,zj->zi", R, x), True, "component")
    expected = torch.einsum("zij,zj->zi", irreps.D_from_matrix(R), spherical_harmonics(irreps, x, True, "component"))
    torch.testing.assert_close(rotated, expected, atol=1e-12, rtol=0)
    # Asking for the pseudovector irreps (all parities +1, as e3nn allows) only relabels: the values
    # are those of a vector input, so against the even-parity D they carry det(R)^l.
    pseudo = o3.Irreps.spherical_harmonics(4, p=1)
    got = spherical_harmonics(pseudo, torch.einsum("zij,zj->zi", R, x), True)
    expected = torch.einsum("zij,zj->zi", pseudo.D_from_matrix(R), spherical_harmonics(pseudo, x, True))
    degrees = torch.tensor([l for l in range(5) for _ in range(2 * l + 1)], dtype=torch.float64)
    torch.testing.assert_close(got, expected * torch.det(R).sign()[:, None] ** degrees, atol=1e-12, rtol=0)


def sphere_quadrature(degree):
    """Nodes and weights integrating polynomials of degree <= `degree` on the unit sphere exactly:
    Gauss–Legendre in y (the polar axis) times a uniform grid in the azimuth."""
    t, w = np.polynomial.legendre.leggauss(degree // 2 + 1)
    phi = 2 * np.pi * np.arange(degree + 1) / (degree + 1)
    t, phi = np.meshgrid(t, phi, indexing="ij")
    rho = np.sqrt(1 - t ** 2)
    points = np.stack([rho * np.sin(phi), t, rho * np.cos(phi)], axis=-1).reshape(-1, 3)
    weights = (w[:, None] * np.full(phi.shape[1], 2 * np.pi / (degree + 1))).reshape(-1)
    return torch.from_numpy(points), torch.from_numpy(weights)


@pytest.mark.parametrize("lmax", [12, 30])
def test_orthonormal_under_integral_normalization(lmax, seeded):
    points, weights = sphere_quadrature(2 * lmax)
    # A random rotation of the grid so that the test does not rest on special points.
    points = points @ o3.rand_matrix(dtype=torch.float64, generator=seeded).T
    Y = spherical_harmonics(list(range(lmax + 1)), points, False, "integral")
    gram = Y.T @ (weights[:, None] * Y)
    torch.testing.assert_close(gram, torch.eye(gram.shape[0], dtype=torch.float64), atol=1e-12, rtol=0)
    if lmax == 12:
        # Monte Carlo cross-check of the normalisation constant, independent of the quadrature.
        x = torch.randn(100_000, 3, dtype=torch.float64, generator=seeded)
        mean_square = spherical_harmonics(7, x, True, "integral").square().mean(0) * 4 * math.pi
        assert (mean_square - 1).abs().max() < 0.06


def test_other_normalizations_and_homogeneity(seeded):
    x = torch.randn(50, 3, dtype=torch.float64, generator=seeded)
    for l in (0, 3, 9, 16, 25):
        component = spherical_harmonics(l, x, True, "component")
        torch.testing.assert_close(component.square().sum(-1), torch.full((50,), 2.0 * l + 1, dtype=torch.float64))
        torch.testing.assert_close(spherical_harmonics(l, x, True, "norm").norm(dim=-1),
                                   torch.ones(50, dtype=torch.float64))
        scale = 0.3 + torch.rand(50, 1, dtype=torch.float64, generator=seeded)
        torch.testing.assert_close(spherical_harmonics(l, scale * x, False, "component"),
                                   scale ** l * spherical_harmonics(l, x, False, "component"))


def test_beyond_e3nn_matches_closed_form_in_high_precision(seeded):
    """Independent oracle for any l, at 40 digits: the explicit Legendre polynomial
    P_l(t) = 2^-l sum_k (-1)^k C(l, k) C(2l - 2k, l) t^(l - 2k), P_l^m = (1 - t^2)^(m/2) d^m P_l / dt^m
    (no Condon–Shortley phase), Y the polar axis, the azimuth measured from z towards x."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    x = torch.randn(6, 3, dtype=torch.float64, generator=seeded)
    for l in (5, 13, 17, 24):
        # Coefficients of P_l: power -> rational coefficient.
        legendre = {l - 2 * k: mpmath.mpf((-1) ** k * math.comb(l, k) * math.comb(2 * l - 2 * k, l)) / 2 ** l
                    for k in range(l // 2 + 1)}
        expected = []
        for v in x.tolist():
            vx, vy, vz = (mpmath.mpf(c) for c in v)
            r = mpmath.sqrt(vx * vx + vy * vy + vz * vz)
            t, phi = vy / r, mpmath.atan2(vx, vz)
            row = []
            for m in range(-l, l + 1):
                k = abs(m)
                derivative = sum(c * math.perm(p, k) * t ** (p - k) for p, c in legendre.items() if p >= k)
                p_lm = (1 - t * t) ** (mpmath.mpf(k) / 2) * derivative
                norm = mpmath.sqrt((2 * l + 1) * mpmath.factorial(l - k) / mpmath.factorial(l + k) * (2 if m else 1))
                azimuth = mpmath.sin(k * phi) if m < 0 else mpmath.cos(k * phi)
                row.append(float(norm * p_lm * azimuth * r ** l))
            expected.append(row)
        expected = torch.tensor(expected, dtype=torch.float64)
        got = spherical_harmonics(l, x, False, "component")
        scale = expected.abs().amax(dim=-1, keepdim=True)
        assert ((got - expected).abs() / scale).max() < 1e-13, l


def test_documented_recurrence_reproduces_the_output(seeded):
    """A kernel author's loop, written from the module docstring and the coefficient table only."""
    lmax = 14
    coefficients = spherical_harmonics_coefficients(lmax)
    a, b = coefficients.a.tolist(), coefficients.b.tolist()
    x, y, z = torch.randn(3, 20, dtype=torch.float64, generator=seeded)
    r2 = x * x + y * y + z * z
    q = {}
    for l in range(lmax + 1):
        for m in range(l + 1):
            t = l * (l + 1) // 2 + m
            if l == 0:
                q[l, m] = torch.ones_like(x)
            elif m == l:
                q[l, m] = a[t] * torch.ones_like(x)
            else:
                q[l, m] = a[t] * y * q[l - 1, m] - (b[t] * r2 * q[l - 2, m] if m <= l - 2 else 0)
    c, s = [torch.ones_like(x)], [torch.zeros_like(x)]
    for m in range(1, lmax + 1):
        c_m, s_m = z * c[-1] - x * s[-1], z * s[-1] + x * c[-1]
        c.append(c_m)
        s.append(s_m)
    expected = torch.stack([q[l, abs(m)] * (s[-m] if m < 0 else c[m]) for l in range(lmax + 1)
                            for m in range(-l, l + 1)], dim=-1)
    got = spherical_harmonics(list(range(lmax + 1)), torch.stack([x, y, z], -1), False, "component")
    torch.testing.assert_close(got, expected, atol=0, rtol=1e-11)
