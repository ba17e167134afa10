r"""Wigner 3j symbols (real Clebsch–Gordan coefficients) and Wigner D matrices, e3nn's conventions.

Real basis
    Component `m + l` (m = -l..l) of a degree-l feature is e3nn's real spherical harmonic of
    order m with Y the polar axis: for l = 1 the components are (x, y, z), and
    `D^1(R) = R`. The complex (|l, m>, Condon–Shortley) basis is related to it by e3nn's
    change of basis `Q` (rows: complex m, columns: real m), times the global phase (-i)^l
    that makes the coupling coefficients real::

        m < 0:  Q[m, |m|] = 1/sqrt2,          Q[m, -|m|] = -i/sqrt2
        m = 0:  Q[0, 0] = 1
        m > 0:  Q[m, m] = (-1)^m/sqrt2,       Q[m, -m] = i (-1)^m/sqrt2

wigner_3j(l1, l2, l3)
    C[a, b, c] = sum Q1[m1, a] Q2[m2, b] conj(Q3[m3, c]) <l1 m1 l2 m2 | l3 m3> / sqrt(2 l3 + 1)
    with the Racah formula for the complex Clebsch–Gordan coefficient. This is e3nn's
    `wigner_3j`: invariant (C = C x1 D1 x2 D2 x3 D3 for every rotation) and of unit Frobenius
    norm (the complex coefficients have norm sqrt(2 l3 + 1) and Q is unitary).

    It is computed exactly: each complex coefficient is S * t * sqrt(f) with S, t rational and
    f a square-free product of small primes (the radicand is a ratio of factorials, factored
    with Legendre's formula), so every real coefficient is an exact sum  sum_f r_f sqrt(f).
    Exact zeros are exact, the imaginary part is checked to vanish exactly, and the value is
    evaluated with 256-bit fixed point and rounded once to float64.

wigner_D(l, alpha, beta, gamma)
    D(alpha, beta, gamma) = Y(alpha) X(beta) Y(gamma) where Y(t) is the rotation about the
    polar axis Y (a 2x2 rotation by m t in each (m, -m) plane) and X(t) = J Y(t) J^T, with
    J = D(Rz(-pi/2)) (which turns Y into X), built once per l by coupling D^1 = R up with
    the 3j symbols: D^l = (2l+1) C^T (D^{l-1} (x) D^1) C with C = wigner_3j(l-1, 1, l).
    (e3nn exponentiates float32-rounded generators instead, so its D is only float32-accurate,
    ~1e-7..4e-6 off for l <= 12; this one is exact to float64 rounding.)
"""
from __future__ import annotations

import functools
import math
from typing import Dict, List, Tuple

import numpy as np
import torch

_FIXED_POINT_BITS = 256


# --------------------------------------------------------------------------- exact arithmetic

@functools.lru_cache(maxsize=None)
def _primes_up_to(n: int) -> Tuple[int, ...]:
    sieve = [True] * (n + 1)
    primes = []
    for k in range(2, n + 1):
        if sieve[k]:
            primes.append(k)
            for multiple in range(k * k, n + 1, k):
                sieve[multiple] = False
    return tuple(primes)


def _factorial_exponents(n: int, primes: Tuple[int, ...]) -> List[int]:
    """Exponent of each prime in n! (Legendre's formula)."""
    out = []
    for p in primes:
        e, q = 0, p
        while q <= n:
            e += n // q
            q *= p
        out.append(e)
    return out


def _sqrt_fixed_point(f: int) -> int:
    """floor(sqrt(f) * 2^K) for the integer f."""
    return math.isqrt(f << (2 * _FIXED_POINT_BITS))


def _to_float(terms: Dict[int, int], denominator: int) -> float:
    """Float of sum_f n_f sqrt(f) / denominator, exact to 2^-256 before the single rounding
    (Python's int / int is correctly rounded)."""
    total = sum(n * _sqrt_fixed_point(f) for f, n in terms.items())
    return total / (denominator << _FIXED_POINT_BITS)


# --------------------------------------------------------------------------- Clebsch–Gordan

def _complex_cg_terms(l1: int, l2: int, l3: int):
    """Yield (m1, m2, up, down, f) with <l1 m1 l2 m2 | l3 m1+m2> / sqrt(2 l3 + 1) / sqrt(2)^h
    = (up / down) sqrt(f), integers, f square-free, where h counts the non-zero m among (m1, m2, m1+m2)
    (the 1/sqrt2 of each Q entry they will be combined with)."""
    top = l1 + l2 + l3 + 1
    primes = _primes_up_to(max(top, 2))
    fact_exp = [_factorial_exponents(n, primes) for n in range(top + 1)]
    fact = [math.factorial(n) for n in range(top + 1)]
    two = primes.index(2)

    # m-independent part of the Racah prefactor; the (2 l3 + 1) cancels the normalisation.
    base = [a + b + c - d for a, b, c, d in zip(fact_exp[l3 + l1 - l2], fact_exp[l3 - l1 + l2],
                                                 fact_exp[l1 + l2 - l3], fact_exp[top])]
    for m1 in range(-l1, l1 + 1):
        for m2 in range(-l2, l2 + 1):
            m3 = m1 + m2
            if abs(m3) > l3:
                continue
            # Racah sum over k where every factorial argument is non-negative.
            k_min = max(0, l2 - l3 - m1, l1 - l3 + m2)
            k_max = min(l1 + l2 - l3, l1 - m1, l2 + m2)
            denominators = [fact[k] * fact[l1 + l2 - l3 - k] * fact[l1 - m1 - k] * fact[l2 + m2 - k]
                            * fact[l3 - l2 + m1 + k] * fact[l3 - l1 - m2 + k] for k in range(k_min, k_max + 1)]
            common = math.lcm(*denominators)
            numerator = sum((-1) ** k * (common // d) for k, d in zip(range(k_min, k_max + 1), denominators))
            if numerator == 0:
                continue
            exps = list(base)
            for n in (l3 + m3, l3 - m3, l1 - m1, l1 + m1, l2 - m2, l2 + m2):
                exps = [e + x for e, x in zip(exps, fact_exp[n])]
            exps[two] -= (m1 != 0) + (m2 != 0) + (m3 != 0)
            # sqrt(prod p^e) = prod p^(e // 2) * sqrt(prod p^(e % 2)), e // 2 rounding down.
            up, down, f = numerator, common, 1
            for p, e in zip(primes, exps):
                half, odd = divmod(e, 2)
                if half > 0:
                    up *= p ** half
                elif half < 0:
                    down *= p ** -half
                f *= p ** odd
            yield m1, m2, up, down, f


def _real_basis_entries(l: int, m: int):
    """Non-zero entries of row m (complex m) of e3nn's Q, as (real m, k) with value i^k / sqrt2^[m != 0];
    the global (-i)^l = i^(3l) is included."""
    g = 3 * l
    if m < 0:
        return ((-m, g), (m, g + 3))
    if m == 0:
        return ((0, g),)
    return ((m, g + 2 * (m % 2)), (-m, g + 1 + 2 * (m % 2)))


@functools.lru_cache(maxsize=None)
def _wigner_3j_sparse_exact(l1: int, l2: int, l3: int) -> Tuple[np.ndarray, np.ndarray]:
    terms = list(_complex_cg_terms(l1, l2, l3))
    # Exact integer arithmetic over one common denominator (much faster than Fractions).
    denominator = math.lcm(*[down for _, _, _, down, _ in terms]) if terms else 1
    # acc[(a, b, c)][f] = [real, imaginary] numerator of the coefficient of sqrt(f).
    acc: Dict[Tuple[int, int, int], Dict[int, List[int]]] = {}
    for m1, m2, up, down, f in terms:
        n = up * (denominator // down)
        for a, k1 in _real_basis_entries(l1, m1):
            for b, k2 in _real_basis_entries(l2, m2):
                for c, k3 in _real_basis_entries(l3, m1 + m2):
                    k = (k1 + k2 - k3) % 4  # conj(Q3) flips the phase of the third factor
                    slot = acc.setdefault((a, b, c), {}).setdefault(f, [0, 0])
                    slot[k % 2] += n if k < 2 else -n
    index, value = [], []
    for (a, b, c), coefficients in acc.items():
        if any(im != 0 for _, im in coefficients.values()):
            raise AssertionError(f"wigner_3j({l1}, {l2}, {l3}) has an imaginary part: basis change is wrong")
        real = {f: re for f, (re, _) in coefficients.items() if re != 0}
        if real:
            index.append((a + l1, b + l2, c + l3))
            value.append(_to_float(real, denominator))
    order = sorted(range(len(index)), key=lambda i: (index[i][2], index[i][0], index[i][1]))
    return (np.array([index[i] for i in order], dtype=np.int64).reshape(-1, 3),
            np.array([value[i] for i in order], dtype=np.float64))


def _check_triple(l1, l2, l3):
    for name, l in (("l1", l1), ("l2", l2), ("l3", l3)):
        if isinstance(l, bool) or not isinstance(l, (int, np.integer)) or l < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {l!r}")
    if not abs(l1 - l2) <= l3 <= l1 + l2:
        raise ValueError(f"wigner_3j({l1}, {l2}, {l3}): the degrees must satisfy the triangle inequality "
                         f"|l1 - l2| <= l3 <= l1 + l2")
    return int(l1), int(l2), int(l3)


def wigner_3j_sparse(l1: int, l2: int, l3: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Non-zeros of `wigner_3j(l1, l2, l3)`: `index` int64 [nnz, 3] of positions (m1 + l1, m2 + l2,
    m3 + l3) in the dense tensor and `value` float64 [nnz], sorted by (m3, m1, m2)."""
    l1, l2, l3 = _check_triple(l1, l2, l3)
    index, value = _wigner_3j_sparse_exact(l1, l2, l3)
    return torch.from_numpy(index.copy()), torch.from_numpy(value.copy())


def wigner_3j(l1: int, l2: int, l3: int, dtype=None, device=None) -> torch.Tensor:
    """Real Wigner 3j symbol C [2l1+1, 2l2+1, 2l3+1] of e3nn: rotation invariant, unit norm.

    Exact to the last bit in float64 (see the module docstring); cached per triple.
    """
    l1, l2, l3 = _check_triple(l1, l2, l3)
    index, value = _wigner_3j_sparse_exact(l1, l2, l3)
    dense = np.zeros((2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1))
    dense[index[:, 0], index[:, 1], index[:, 2]] = value
    dtype = torch.get_default_dtype() if dtype is None else dtype
    return torch.from_numpy(dense).to(dtype=dtype, device=device)


# --------------------------------------------------------------------------- Wigner D

def _polar_rotation(l: int, angle: torch.Tensor) -> torch.Tensor:
    """D^l of the rotation by `angle` about Y: cos(m t) on the diagonal, -sin(m t) at (m, -m)."""
    m = torch.arange(-l, l + 1, dtype=angle.dtype, device=angle.device)
    t = angle[..., None] * m
    return torch.diag_embed(t.cos()) + torch.diag_embed(-t.sin()).flip(-1)


@functools.lru_cache(maxsize=None)
def _y_to_x(l: int) -> torch.Tensor:
    """J = D^l(Rz(-pi/2)) in float64, so that D^l(Rx(t)) = J D^l(Ry(t)) J^T.

    Coupled up from D^1 = R: D^l = (2l+1) C^T (D^{l-1} (x) D^1) C with C = wigner_3j(l-1, 1, l)
    flattened to [(2l-1) 3, 2l+1] (C is invariant and its columns are orthogonal with norm
    1/sqrt(2l+1), so this is the restriction of D^{l-1} (x) D^1 to its degree-l part)."""
    R = torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    if l == 0:
        return torch.ones(1, 1, dtype=torch.float64)
    if l == 1:
        return R
    C = wigner_3j(l - 1, 1, l, dtype=torch.float64).reshape(3 * (2 * l - 1), 2 * l + 1)
    return (2 * l + 1) * C.T @ torch.kron(_y_to_x(l - 1), R) @ C


def wigner_D(l: int, alpha, beta, gamma) -> torch.Tensor:
    """Wigner D matrix of e3nn, D^l(alpha, beta, gamma) = Y(alpha) X(beta) Y(gamma), [..., 2l+1, 2l+1].

    Angles broadcast together; the result satisfies D(R1 R2) = D(R1) D(R2), D(R)^T = D(R^-1),
    and `spherical_harmonics(l, R x) = D^l(R) spherical_harmonics(l, x)`.
    """
    if isinstance(l, bool) or not isinstance(l, (int, np.integer)) or l < 0:
        raise ValueError(f"l must be a non-negative integer, got {l!r}")
    tensors = [torch.as_tensor(a) for a in (alpha, beta, gamma)]
    dtype = functools.reduce(torch.promote_types, [t.dtype for t in tensors])
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    alpha, beta, gamma = torch.broadcast_tensors(*[t.to(dtype) for t in tensors])
    J = _y_to_x(int(l)).to(dtype=dtype, device=alpha.device)
    return _polar_rotation(l, alpha) @ J @ _polar_rotation(l, beta) @ J.T @ _polar_rotation(l, gamma)
