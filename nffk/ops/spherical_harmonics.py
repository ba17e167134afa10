"""Real spherical harmonics of edge vectors (e3nn conventions), dispatched to a backend.

The reference is `nffk.o3.spherical_harmonics` (pure torch, differentiable to any order). The
`cpu` and `cuda` backends are three custom ops over compiled kernels (csrc/cpu/spherical_harmonics.cpp,
csrc/cuda/spherical_harmonics.cu; the same element-level code, nffk/spherical_harmonics.h):

    sh_forward(x)          Y(x)
    sh_vjp(x, gY)          gx = (dY/dx)^T gY                        (forces)
    sh_vjp_vjp(x, gY, h)   d<h, gx>/dx and d<h, gx>/dgY             (force training)

Derivatives use the ladder identities of solid harmonics: every Cartesian derivative of a
(component-normalised, homogeneous) Y_l^m is a combination of at most two Y_{l-1}^{m'}, so
first and second derivatives cost a few multiply-adds per component and no extra recurrence
(`gradient_table`). Third and higher derivatives fall back to differentiating the reference.

The `triton` backend (kernels/spherical_harmonics.py) works on raw vectors: normalisation is done
in torch around four custom ops (values, vjp, jvp, Hessian-vector product) that close under
differentiation up to second order; third derivatives again use the reference.
"""
from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import List, Tuple

import torch

from nffk import backends, o3
from nffk.o3.spherical_harmonics import (_degrees, _scaled_coefficients, _sqrt_rational,
                                         spherical_harmonics_coefficients)
from nffk.ops import _outputs
from nffk.ops._autograd import direct_call_is_safe

CPU_DTYPES = (torch.float32, torch.float64)
# Backend -> the dtypes it computes in ("triton" converts others to float32 and back).
DTYPES = {"cpu": CPU_DTYPES, "cuda": CPU_DTYPES}
CUDA_LMAX = 10  # the cuda kernels keep (lmax + 1)^2 values per thread in registers / local memory
NORMALIZATIONS = ("integral", "component", "norm")  # numbered 0, 1, 2 for the kernels
NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize's, as e3nn uses it


@functools.lru_cache(maxsize=None)
def _gradient_terms(lmax: int):
    """For every component t = l^2 + l + m (l >= 1) and axis a (0, 1, 2 = x, y, z): the <= 2 terms
    (source component of degree l - 1, exact coefficient) with d/dx_a Y_t = sum coef * Y_source,
    in "component" normalisation.

    Derivation: with X = z, Y = x, Z = y (e3nn's polar axis is y), Y_l^m = N_l^|m| times the real or
    imaginary part of F_l^M = (X + iY)^M r^(l-M) P_l^(M)(Z/r) (M = |m|; m >= 0 real part C, m < 0
    imaginary part S; P_l^(M) the M-th derivative of the Legendre polynomial). These obey
    d/dZ F_l^M = (l+M) F_{l-1}^M, (d/dX - i d/dY) F_l^M = (l+M)(l+M-1) F_{l-1}^{M-1} and
    (d/dX + i d/dY) F_l^M = -F_{l-1}^{M+1}, whose real and imaginary parts give the terms below."""
    def norm2(l, M):  # N_l^M squared: component normalisation, sqrt 2 for M > 0
        return Fraction((2 * l + 1) * math.factorial(l - M), math.factorial(l + M)) * (2 if M > 0 else 1)

    def index(l, part, M):  # e3nn component index of C_l^M / S_l^M
        return l * l + l + (M if part == "C" else -M)

    terms = {}
    for l in range(1, lmax + 1):
        for m in range(-l, l + 1):
            M, part = abs(m), ("C" if m >= 0 else "S")
            other = "S" if part == "C" else "C"
            raw = {1: [(part, M, Fraction(l + M))]}  # d/dy (e3nn) = d/dZ
            if M == 0:
                raw[2] = [("C", 1, Fraction(-1))]  # d/dz = d/dX
                raw[0] = [("S", 1, Fraction(-1))]  # d/dx = d/dY
            else:
                K = Fraction((l + M) * (l + M - 1))
                raw[2] = [(part, M + 1, Fraction(-1, 2)), (part, M - 1, K / 2)]
                sign = -1 if part == "C" else 1  # d/dY C = -(S' + K S)/2, d/dY S = (C' + K C)/2
                raw[0] = [(other, M + 1, Fraction(sign, 2)), (other, M - 1, sign * K / 2)]
            for axis, entries in raw.items():
                kept = []
                for p, Mp, c in entries:
                    if Mp > l - 1 or (p == "S" and Mp == 0) or c == 0:
                        continue  # F_{l-1}^{M'} vanishes for M' > l - 1; S^0 = 0
                    value = _sqrt_rational(norm2(l, M) / norm2(l - 1, Mp) * c * c)
                    kept.append((index(l - 1, p, Mp), value if c > 0 else -value))
                terms[(l * l + l + m, axis)] = kept
    return terms


@functools.lru_cache(maxsize=None)
def gradient_table(lmax: int):
    """The terms of `_gradient_terms` as kernel tables: int32 source [T, 3, 2] (-1: no term) and
    float64 coefficients [T, 3, 2], T = (lmax + 1)^2."""
    size = (lmax + 1) ** 2
    source = torch.full((size, 3, 2), -1, dtype=torch.int32)
    coefficient = torch.zeros(size, 3, 2, dtype=torch.float64)
    for (t, axis), kept in _gradient_terms(lmax).items():
        for s, (src, value) in enumerate(kept):
            source[t, axis, s], coefficient[t, axis, s] = src, value
    return source, coefficient


@functools.lru_cache(maxsize=None)
def _tables(lmax: int):
    coefficients = spherical_harmonics_coefficients(lmax)
    source, gradient = gradient_table(lmax)
    return coefficients.a, coefficients.b, source, gradient


@functools.lru_cache(maxsize=None)
def _device_tables(lmax: int, device: torch.device, dtype: torch.dtype):
    a, b, source, gradient = _tables(lmax)
    return a.to(device, dtype), b.to(device, dtype), source.to(device), gradient.to(device, dtype)


def _kernel_args(ls: List[int], x: torch.Tensor):
    """The tables of the compiled kernels: float64 on the CPU; on a GPU cached in device memory in
    x's dtype (built on first use, so the hot path copies nothing to the device)."""
    if x.device.type == "cpu":
        return _tables(max(ls))
    return _device_tables(max(ls), x.device, x.dtype)


# ---------------------------------------------------------------------------------------------
# Custom ops of the cpu and cuda backends (torch.ops.nffk_C dispatches on the device)
# ---------------------------------------------------------------------------------------------
def _forward(x: torch.Tensor, ls: List[int], normalize: bool, normalization: int) -> torch.Tensor:
    """The compiled forward: the custom op's body, and called directly on the no-grad path."""
    out = _outputs.new((x.shape[0], sum(2 * l + 1 for l in ls)), x)
    torch.ops.nffk_C.sh_forward(x.contiguous(), ls, normalize, normalization, *_kernel_args(ls, x), out)
    return out


@torch.library.custom_op("nffk::sh_forward", mutates_args=())
def _sh_forward(x: torch.Tensor, ls: List[int], normalize: bool, normalization: int) -> torch.Tensor:
    return _forward(x, ls, normalize, normalization)


@torch.library.custom_op("nffk::sh_vjp", mutates_args=())
def _sh_vjp(x: torch.Tensor, grad: torch.Tensor, ls: List[int], normalize: bool,
            normalization: int) -> torch.Tensor:
    out = _outputs.new((x.shape[0], 3), x)
    torch.ops.nffk_C.sh_vjp(x.contiguous(), grad.contiguous(), ls, normalize, normalization, *_kernel_args(ls, x), out)
    return out


@torch.library.custom_op("nffk::sh_vjp_vjp", mutates_args=())
def _sh_vjp_vjp(x: torch.Tensor, grad: torch.Tensor, h: torch.Tensor, ls: List[int], normalize: bool,
                normalization: int) -> Tuple[torch.Tensor, torch.Tensor]:
    grad_x = _outputs.new((x.shape[0], 3), x)
    grad_grad = _outputs.new(grad.shape, x)
    torch.ops.nffk_C.sh_vjp_vjp(x.contiguous(), grad.contiguous(), h.contiguous(), ls, normalize, normalization,
                                *_kernel_args(ls, x), grad_x, grad_grad)
    return grad_x, grad_grad


@_sh_forward.register_fake
def _(x, ls, normalize, normalization):
    return x.new_empty(x.shape[0], sum(2 * l + 1 for l in ls))


@_sh_vjp.register_fake
def _(x, grad, ls, normalize, normalization):
    return x.new_empty(x.shape[0], 3)


@_sh_vjp_vjp.register_fake
def _(x, grad, h, ls, normalize, normalization):
    return x.new_empty(x.shape[0], 3), grad.new_empty(grad.shape)


def _save(ctx, inputs, output):
    ctx.save_for_backward(*(t for t in inputs if isinstance(t, torch.Tensor)))
    ctx.options = inputs[-3:]  # ls, normalize, normalization


def _backward_forward(ctx, grad):
    (x,) = ctx.saved_tensors
    return torch.ops.nffk.sh_vjp(x, grad, *ctx.options), None, None, None


def _backward_vjp(ctx, h):
    x, grad = ctx.saved_tensors
    grad_x, grad_grad = torch.ops.nffk.sh_vjp_vjp(x, grad, h, *ctx.options)
    return grad_x, grad_grad, None, None, None


def _reference_vjp_vjp(x, grad, h, ls, normalize, normalization):
    """sh_vjp_vjp written with torch.func over the reference: differentiable to any order."""
    name = NORMALIZATIONS[normalization]

    def vjp(x_, grad_):
        return torch.func.vjp(lambda v: o3.spherical_harmonics(ls, v, normalize, name), x_)[1](grad_)[0]

    return torch.func.vjp(vjp, x, grad)[1](h)


def _backward_vjp_vjp(ctx, out_x, out_grad):
    # Third derivatives (rare): differentiate the reference's second derivatives.
    x, grad, h = ctx.saved_tensors
    ls, normalize, normalization = ctx.options
    out_x = torch.zeros_like(x) if out_x is None else out_x
    out_grad = torch.zeros_like(grad) if out_grad is None else out_grad
    _, pullback = torch.func.vjp(lambda *t: _reference_vjp_vjp(*t, ls, normalize, normalization), x, grad, h)
    return (*pullback((out_x, out_grad)), None, None, None)


_sh_forward.register_autograd(_backward_forward, setup_context=_save)
_sh_vjp.register_autograd(_backward_vjp, setup_context=_save)
_sh_vjp_vjp.register_autograd(_backward_vjp_vjp, setup_context=_save)


# ---------------------------------------------------------------------------------------------
# Custom ops of the triton backend, on raw (unnormalised) vectors
# ---------------------------------------------------------------------------------------------
_triton = backends.TritonModule("spherical_harmonics")


@functools.lru_cache(maxsize=None)
def _triton_coefficients(lmax: int, normalization: int, device: torch.device, dtype: torch.dtype):
    a, b = _scaled_coefficients(lmax, NORMALIZATIONS[normalization])
    return _triton.coefficient_tensor(a, b, device, dtype)


def _triton_args(ls, normalization, x):
    dtype = x.dtype if x.dtype in CPU_DTYPES else torch.float32
    return tuple(ls), _triton_coefficients(max(ls), normalization, x.device, dtype)


@torch.library.custom_op("nffk::sh_triton_forward", mutates_args=())
def _sh_triton_forward(x: torch.Tensor, ls: List[int], normalization: int) -> torch.Tensor:
    return _triton.forward(x, *_triton_args(ls, normalization, x))


@torch.library.custom_op("nffk::sh_triton_vjp", mutates_args=())
def _sh_triton_vjp(x: torch.Tensor, grad: torch.Tensor, ls: List[int], normalization: int) -> torch.Tensor:
    return _triton.vjp(x, grad, *_triton_args(ls, normalization, x))


@torch.library.custom_op("nffk::sh_triton_jvp", mutates_args=())
def _sh_triton_jvp(x: torch.Tensor, k: torch.Tensor, ls: List[int], normalization: int) -> torch.Tensor:
    return _triton.jvp(x, k, *_triton_args(ls, normalization, x))


@torch.library.custom_op("nffk::sh_triton_hvp", mutates_args=())
def _sh_triton_hvp(x: torch.Tensor, grad: torch.Tensor, k: torch.Tensor, ls: List[int],
                   normalization: int) -> torch.Tensor:
    return _triton.hvp(x, grad, k, *_triton_args(ls, normalization, x))


@_sh_triton_forward.register_fake
def _(x, ls, normalization):
    return x.new_empty(x.shape[0], sum(2 * l + 1 for l in ls))


@_sh_triton_vjp.register_fake
def _(x, grad, ls, normalization):
    return x.new_empty(x.shape[0], 3)


@_sh_triton_jvp.register_fake
def _(x, k, ls, normalization):
    return x.new_empty(x.shape[0], sum(2 * l + 1 for l in ls))


@_sh_triton_hvp.register_fake
def _(x, grad, k, ls, normalization):
    return x.new_empty(x.shape[0], 3)


def _save_triton(ctx, inputs, output):
    ctx.save_for_backward(*(t for t in inputs if isinstance(t, torch.Tensor)))
    ctx.options = inputs[-2:]  # ls, normalization


def _triton_backward_forward(ctx, grad):
    (x,) = ctx.saved_tensors
    return torch.ops.nffk.sh_triton_vjp(x, grad, *ctx.options), None, None


def _triton_backward_vjp(ctx, h):
    # vjp(x, g) = J(x)^T g: d<h, .>/dg = J h, d<h, .>/dx = sum_c g_c Hess(Y_c) h.
    x, grad = ctx.saved_tensors
    return (torch.ops.nffk.sh_triton_hvp(x, grad, h, *ctx.options),
            torch.ops.nffk.sh_triton_jvp(x, h, *ctx.options), None, None)


def _triton_backward_jvp(ctx, h):
    # jvp(x, k) = J(x) k: d<h, .>/dk = J^T h, d<h, .>/dx = sum_c h_c Hess(Y_c) k.
    x, k = ctx.saved_tensors
    return (torch.ops.nffk.sh_triton_hvp(x, h, k, *ctx.options),
            torch.ops.nffk.sh_triton_vjp(x, h, *ctx.options), None, None)


def _reference_hvp(x, grad, k, ls, normalization):
    def vjp(x_):
        return torch.func.vjp(lambda v: o3.spherical_harmonics(ls, v, False, NORMALIZATIONS[normalization]),
                              x_)[1](grad)[0]

    return torch.func.jvp(vjp, (x,), (k,))[1]


def _triton_backward_hvp(ctx, out):
    # Third derivatives (rare): differentiate the reference's Hessian-vector product.
    x, grad, k = ctx.saved_tensors
    ls, normalization = ctx.options
    _, pullback = torch.func.vjp(lambda *t: _reference_hvp(*t, ls, normalization), x, grad, k)
    return (*pullback(out), None, None)


_sh_triton_forward.register_autograd(_triton_backward_forward, setup_context=_save_triton)
_sh_triton_vjp.register_autograd(_triton_backward_vjp, setup_context=_save_triton)
_sh_triton_jvp.register_autograd(_triton_backward_jvp, setup_context=_save_triton)
_sh_triton_hvp.register_autograd(_triton_backward_hvp, setup_context=_save_triton)


def implemented_backends(ls, dtype: torch.dtype) -> tuple:
    """Backends that implement these degrees in this dtype."""
    names = ["reference", "triton"]
    if dtype in CPU_DTYPES:
        names += ["cpu"] + (["cuda"] if max(ls) <= CUDA_LMAX else [])
    return tuple(names)


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------
def spherical_harmonics(ls, x: torch.Tensor, normalize: bool = True, normalization: str = "integral",
                        backend: str = "auto") -> torch.Tensor:
    """Y_l(x) for every l in `ls` (an int, a list of ints, or irreps such as '0e+1o+2e'), concatenated."""
    degrees = _degrees(ls)
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[-1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor of shape [..., 3], got {shape}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"x must be a floating point tensor, got {x.dtype}")
    backends.check_dtype("spherical_harmonics", backend, x.dtype, DTYPES)
    # (whether the compiled extension is loaded is checked by backends.resolve, with its reason)
    chosen = backends.resolve("spherical_harmonics", backend, x.device, implemented_backends(degrees, x.dtype))
    if chosen == "reference":
        return o3.spherical_harmonics(degrees, x, normalize, normalization)
    flat = x.reshape(-1, 3)
    if chosen == "triton":
        if normalize:
            flat = torch.nn.functional.normalize(flat, dim=-1, eps=NORMALIZE_EPS)
        out = torch.ops.nffk.sh_triton_forward(flat, degrees, NORMALIZATIONS.index(normalization))
    elif direct_call_is_safe(flat):
        out = _forward(flat, degrees, bool(normalize), NORMALIZATIONS.index(normalization))
    else:
        out = torch.ops.nffk.sh_forward(flat, degrees, bool(normalize), NORMALIZATIONS.index(normalization))
    return out.reshape(*x.shape[:-1], out.shape[-1])
