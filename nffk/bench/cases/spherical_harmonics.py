"""Spherical harmonics of edge vectors: nffk against e3nn, sphericart-torch and cuequivariance-torch.

All compute Y_0..Y_lmax of normalised vectors. sphericart and cuequivariance order and scale the
components their own way; sphericart's output is checked through its e3nn-convention wrapper
(untimed), cuequivariance's is not compared. Bytes: forward reads x and writes Y; forward+backward
also reads dL/dY and x and writes dL/dx. No FLOP count (the recurrence's cost depends on the kernel)."""
from __future__ import annotations

import importlib

import torch

from nffk import backends
from nffk.bench.cases._common import cached, cuequivariance_method, element_size, randn, require, seeded
from nffk.bench.registry import Built, Case, Implementation

sh_op = importlib.import_module("nffk.ops.spherical_harmonics")  # the module (nffk.ops exports the function)

FULL_SIZE = 200_000  # edge vectors: the size of the spherical-harmonics target
CONFIGS = {f"lmax-{l}": l for l in (1, 2, 3, 4, 5, 6, 7, 8)}
CONFIGS["tiny"] = 2  # smoke tests (size 1,000 at full)
DEFAULTS = {"quick": ["lmax-2", "lmax-3"], "default": ["lmax-2", "lmax-3", "lmax-6"],
            "full": ["lmax-2", "lmax-4", "lmax-6", "lmax-8"]}
DIVISOR = {"quick": 100, "default": 10, "full": 1}
LMAX_SWEEP = [f"lmax-{l}" for l in range(1, 7)]
PASSES = ("forward", "forward+backward")


def _size(name: str, mode: str) -> int:
    return max(1, (1_000 if name == "tiny" else FULL_SIZE) // DIVISOR[mode])


def _run_pass(compute, pass_name: str):
    if pass_name == "forward":
        def run(x):
            with torch.no_grad():
                return compute(x)
    else:
        def run(x):
            x = x.detach().requires_grad_()
            torch.autograd.grad(compute(x).sum(), x)
    return run


def _implementations(lmax: int, pass_name: str, device, dtype, reference: bool) -> list:
    ls = list(range(lmax + 1))

    def nffk_built(backend):
        def build():
            chosen = backends.resolve("spherical_harmonics", backend, device, sh_op.implemented_backends(ls, dtype))

            def compute(x):
                return sh_op.spherical_harmonics(ls, x, True, "component", backend=backend)
            return Built(_run_pass(compute, pass_name), output=compute, note=f"backend={chosen}")
        return build

    def e3nn_built():
        e3nn_o3 = require("e3nn.o3", "e3nn")
        module = cached(("sh", lmax, "e3nn", device, dtype),
                        lambda: e3nn_o3.SphericalHarmonics(ls, True, normalization="component").to(device))
        return Built(_run_pass(module, pass_name), output=module, note="codegen (defaults)")

    def sphericart_built():
        sct = require("sphericart.torch", "sphericart-torch")
        module = cached(("sh", lmax, "sphericart", device, dtype), lambda: sct.SphericalHarmonics(lmax))

        def as_e3nn(x):  # same values in e3nn's order and normalisation, for the check only
            return sct.e3nn_spherical_harmonics(ls, x, normalize=True, normalization="component")
        return Built(_run_pass(module, pass_name), output=as_e3nn, note="SphericalHarmonics module")

    def cue_built():
        cuet = require("cuequivariance_torch", "cuequivariance-torch")
        module, method = cached(("sh", lmax, "cuequivariance", device, dtype), lambda: cuequivariance_method(
            lambda m: cuet.SphericalHarmonics(ls, normalize=True, device=device, method=m), device))
        return Built(_run_pass(module, pass_name), note=f"method={method}; output convention differs, not compared")

    impls = [Implementation("nffk", nffk_built("auto"))]
    auto = backends.resolve("spherical_harmonics", "auto", device, sh_op.implemented_backends(ls, dtype))
    if reference and auto != "reference":
        impls.append(Implementation("nffk[reference]", nffk_built("reference")))
    return impls + [Implementation("e3nn", e3nn_built), Implementation("sphericart", sphericart_built),
                    Implementation("cuequivariance", cue_built)]


def _case(name: str, pass_name: str, n: int, device, dtype, reference: bool, family=None) -> Case:
    lmax = CONFIGS[name]
    dim = (lmax + 1) ** 2
    size = element_size(dtype)

    def make_inputs(seed):
        return (randn((n, 3), seeded(seed, device), device, dtype),)

    values = 3 + dim if pass_name == "forward" else 2 * (3 + dim) + 3
    return Case(op="sh", config=name, pass_name=pass_name, size=n, size_name="vectors", make_inputs=make_inputs,
                implementations=_implementations(lmax, pass_name, device, dtype, reference), flops=None,
                bytes=values * n * size, input_bytes=3 * n * size, params={"lmax": lmax}, family=family,
                device=device, rtol=1e-4 if dtype == torch.float32 else 1e-10,
                description=f"Y_0..Y_{lmax} ({dim} components) of normalised vectors, 'component' normalisation")


def cases(configs, mode: str, device, dtype, sweeps: bool = False, reference: bool = False) -> list:
    result = [_case(name, p, _size(name, mode), device, dtype, reference) for name in configs for p in PASSES]
    if sweeps:
        result += [_case(name, p, _size(name, mode), device, dtype, reference, family="lmax")
                   for name in LMAX_SWEEP for p in PASSES]
    return result
