r"""Real spherical harmonics with e3nn's conventions, by a stable recurrence (pure torch).

Convention (identical to `e3nn.o3.spherical_harmonics`)
    Y is the polar axis and the azimuth is measured in the (z, x) plane, from z towards x.
    The 2l+1 components of degree l (m = -l..l, degrees in the requested order) are

        Y_l^m(v) = q_l^|m|(y, r2) * { Im (z + i x)^|m|  if m < 0
                                     { 1                 if m = 0
                                     { Re (z + i x)^m    if m > 0

    with r2 = x^2 + y^2 + z^2. Each Y_l^m is a homogeneous polynomial of degree l in
    (x, y, z) (so the zero vector maps to 0 for l > 0 and 1 for l = 0, and nothing is
    singular at the poles). For l = 1 this is sqrt(3) * (x, y, z). There is no
    Condon–Shortley phase. With `normalize=True` the input is first made a unit vector by
    `torch.nn.functional.normalize` (as in e3nn: the zero vector stays zero, so its output is
    [1, 0, 0, ...] in "component" normalisation, and the gradient there is finite but of order
    1e12, the 1/eps of that normalisation).

Normalisations (as e3nn, on the unit sphere)
    "component": |Y^l|^2 = 2l + 1;   "norm": |Y^l| = 1 (component / sqrt(2l+1));
    "integral": each Y_l^m has unit L2 norm on the sphere (component / sqrt(4 pi)).

Recurrence (for kernel authors; coefficients from `spherical_harmonics_coefficients`)
    With the flat index t(l, m) = l (l + 1) / 2 + m (0 <= m <= l), the "component"
    normalised Legendre parts q_l^m (the sqrt2 of m > 0 included) obey

        q_0^0 = 1
        q_l^l = a[t(l, l)]                                       (a constant, l >= 1)
        q_l^m = a[t(l, m)] * y * q_{l-1}^m - b[t(l, m)] * r2 * q_{l-2}^m     (m < l;
                the b term is absent for m = l - 1, where b = 0)

        a[t(l, m)] = sqrt((4 l^2 - 1) / (l^2 - m^2))                                   m < l
        b[t(l, m)] = sqrt((2l + 1)(l + m - 1)(l - m - 1) / ((2l - 3)(l + m)(l - m)))   m <= l - 2
        a[t(l, l)] = (2l - 1)!! * sqrt(2 (2l + 1) / (2l)!)

    and the azimuthal factors c_0 = 1, s_0 = 0, c_m = z c_{m-1} - x s_{m-1},
    s_m = z s_{m-1} + x c_{m-1}. Because the azimuthal factor of a column m is the same for
    every l, the same three-term recurrence holds for the outputs themselves:
    Y_l^{+-m} = a y Y_{l-1}^{+-m} - b r2 Y_{l-2}^{+-m} for |m| < l, and Y_l^{-l} = a[t(l,l)] s_l,
    Y_l^{+l} = a[t(l,l)] c_l; that is how `spherical_harmonics` evaluates it, one column at a
    time (normalisation folded into the coefficients). These are the fully normalised associated-Legendre
    recurrences: every intermediate stays O(1) on the sphere for any l (no (2l-1)!! overflow),
    which is what makes them usable well beyond e3nn's l = 12. The coefficients are exact
    square roots of rationals, rounded once to float64.
"""
from __future__ import annotations

import functools
import math
import numbers
from fractions import Fraction
from typing import List, NamedTuple, Sequence, Tuple, Union

import torch

from nffk.o3.irreps import Irreps

_NORMALIZATIONS = ("integral", "component", "norm")


def _sqrt_rational(x: Fraction) -> float:
    """Correctly rounded sqrt of a non-negative rational (via 128 extra bits of integer sqrt)."""
    bits = 128
    scaled = math.isqrt(x.numerator * (1 << (2 * bits)) // x.denominator)
    return float(Fraction(scaled, 1 << bits))


class SphericalHarmonicsCoefficients(NamedTuple):
    """Recurrence data up to `lmax` (float64, CPU): see the module docstring.

    a, b: [(lmax+1)(lmax+2)/2], indexed by t(l, m) = l (l + 1) / 2 + m (b is 0 where unused).
    """

    lmax: int
    a: torch.Tensor
    b: torch.Tensor


@functools.lru_cache(maxsize=None)
def _coefficients(lmax: int) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    a, b = [1.0], [0.0]  # t(0, 0): q_0^0 = 1
    for l in range(1, lmax + 1):
        for m in range(l):
            a.append(_sqrt_rational(Fraction(4 * l * l - 1, l * l - m * m)))
            if m <= l - 2:
                b.append(_sqrt_rational(Fraction((2 * l + 1) * (l + m - 1) * (l - m - 1),
                                                 (2 * l - 3) * (l + m) * (l - m))))
            else:
                b.append(0.0)
        # q_l^l = N_l^l (2l-1)!! with N_l^l = sqrt(2 (2l+1) / (2l)!): the sectoral constant.
        double_factorial = math.prod(range(1, 2 * l, 2))
        a.append(_sqrt_rational(Fraction(2 * (2 * l + 1) * double_factorial ** 2, math.factorial(2 * l))))
        b.append(0.0)
    return tuple(a), tuple(b)


def spherical_harmonics_coefficients(lmax: int) -> SphericalHarmonicsCoefficients:
    """The recurrence coefficients a kernel needs to reproduce `spherical_harmonics` up to `lmax`."""
    lmax = _check_l(lmax, "lmax")
    a, b = _coefficients(lmax)
    return SphericalHarmonicsCoefficients(lmax, torch.tensor(a, dtype=torch.float64),
                                          torch.tensor(b, dtype=torch.float64))


def _check_l(l, name="l") -> int:
    if isinstance(l, bool) or not isinstance(l, numbers.Integral) or l < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {l!r}")
    return int(l)


def _degrees(l) -> List[int]:
    """The list of degrees asked for, validated as e3nn does (int, list of int, str or Irreps)."""
    if isinstance(l, str):
        l = Irreps(l)
    if isinstance(l, Irreps):
        if len(l.remove_zero_multiplicities()) == 0:
            raise ValueError(f'irreps "{l}" for spherical_harmonics contain no irrep')
        # e3nn: a vector (1o) input gives parities (-1)^l; if some odd l has p = +1 the input is
        # taken as a pseudovector (1e) and every parity must then be +1.
        input_p = 1 if any(ir.l % 2 == 1 and ir.p == 1 for _, ir in l) else -1
        for _, ir in l:
            if ir.p != input_p ** ir.l:
                raise ValueError(f'irreps "{l}" asked of spherical_harmonics are inconsistent: {ir} should have '
                                 f"parity {input_p ** ir.l} (spherical harmonics of a "
                                 f"{'pseudo' if input_p == 1 else ''}vector have parity "
                                 f"{'+1' if input_p == 1 else '(-1)^l'})")
        return [ir.l for mul, ir in l for _ in range(mul)]
    if isinstance(l, numbers.Integral) and not isinstance(l, bool):
        return [_check_l(l)]
    if isinstance(l, Sequence) and len(l) > 0:
        return [_check_l(item) for item in l]
    raise ValueError(f"l must be a non-negative int, a non-empty list of them, an irreps string or Irreps, "
                     f"got {l!r}")


@functools.lru_cache(maxsize=None)
def _scaled_coefficients(lmax: int, normalization: str):
    """a, b of `_coefficients` with the output normalisation n_l folded in (Y_l = n_l * component):
    a[t(l, m)] * n_l / n_{l-1}, b[t(l, m)] * n_l / n_{l-2}, sectoral a[t(l, l)] * n_l, q_0^0 = n_0."""
    a, b = _coefficients(lmax)

    def n(l):
        return {"component": 1.0, "norm": 1.0 / math.sqrt(2 * l + 1),
                "integral": 1.0 / math.sqrt(4 * math.pi)}[normalization]

    a_scaled, b_scaled = [n(0)], [0.0]
    for l in range(1, lmax + 1):
        t = l * (l + 1) // 2
        a_scaled += [a[t + m] * n(l) / n(l - 1) for m in range(l)] + [a[t + l] * n(l)]
        b_scaled += [b[t + m] * n(l) / n(l - 2) if m <= l - 2 else 0.0 for m in range(l + 1)]
    return a_scaled, b_scaled


def _spherical_harmonics_columns(lmax: int, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor,
                                 normalization: str) -> List[List[torch.Tensor]]:
    """Y_l^m for l <= lmax as 1-D tensors, columns[l][l + m].

    Runs the recurrence of the module docstring on the outputs themselves, one column at a time:
    each intermediate is one [N] vector that stays in cache (faster in eager torch than
    [N, 2l+1] blocks, and autograd handles the few ops per column well)."""
    a, b = _scaled_coefficients(lmax, normalization)
    r2 = x * x + y * y + z * z
    columns = [[torch.full_like(y, a[0])]]
    c, s = z, x  # c_l + i s_l = (z + i x)^l
    for l in range(1, lmax + 1):
        t = l * (l + 1) // 2
        row = [s * a[t + l]]
        for m in range(-(l - 1), l):
            above = columns[l - 1][l - 1 + m]
            if abs(m) <= l - 2:
                below = torch.mul(columns[l - 2][l - 2 + m], r2).mul_(-b[t + abs(m)])
                row.append(torch.addcmul(below, y, above, value=a[t + abs(m)]))
            else:
                row.append(torch.mul(y, above).mul_(a[t + abs(m)]))
        row.append(c * a[t + l])
        columns.append(row)
        if l < lmax:
            c, s = torch.addcmul(z * c, x, s, value=-1), torch.addcmul(z * s, x, c)
    return columns


def spherical_harmonics(l: Union[int, List[int], str, Irreps], x: torch.Tensor, normalize: bool,
                        normalization: str = "integral") -> torch.Tensor:
    """Real spherical harmonics of `x` [..., 3], shape [..., sum(2l+1)], e3nn's conventions.

    l: a degree, a list of degrees, or irreps (string or `Irreps`) whose parities match
    those of spherical harmonics of a vector ((-1)^l) or of a pseudovector (all +1).
    normalize: project `x` onto the unit sphere first. normalization: "integral"
    (default), "component" or "norm". Any degree is allowed. Differentiable (twice and more).
    """
    ls = _degrees(l)
    if normalization not in _NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {_NORMALIZATIONS}, got {normalization!r}")
    if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[-1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor of shape [..., 3], got {shape}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"x must be a floating point tensor, got {x.dtype}")
    if normalize:
        x = torch.nn.functional.normalize(x, dim=-1)

    batch = x.shape[:-1]
    flat = x.reshape(-1, 3)
    columns = _spherical_harmonics_columns(max(ls), flat[:, 0].contiguous(), flat[:, 1].contiguous(),
                                           flat[:, 2].contiguous(), normalization)
    out = torch.stack([column for l in ls for column in columns[l]], dim=-1)
    return out.reshape(*batch, out.shape[-1])
