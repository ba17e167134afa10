"""Helpers shared by the case modules: module caching, best peer settings, pass functions."""
from __future__ import annotations

import importlib.util
import warnings

import torch

from nffk.bench.registry import PeerMissing

# Built modules, kept for the passes and sizes of one config: (op, config, impl, device, dtype) -> object.
_CACHE: dict = {}


def cached(key, build):
    """build() once per key; a build that failed fails again at once instead of being retried."""
    if key not in _CACHE:
        try:
            _CACHE[key] = build()
        except Exception as error:  # noqa: BLE001 - remembered and re-raised below
            _CACHE[key] = error
    if isinstance(_CACHE[key], Exception):
        raise _CACHE[key]
    return _CACHE[key]


def require(module: str, distribution: str):
    """Import a peer or raise PeerMissing naming the package to install."""
    try:  # find_spec of "a.b" imports "a" first, and raises when "a" itself is missing
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise PeerMissing(f"not installed (pip install {distribution})")
    return importlib.import_module(module)


def requires_gpu(device: torch.device, what: str):
    if device.type != "cuda":
        raise PeerMissing(f"{what} runs on CUDA devices only")


def cuequivariance_method(make, device: torch.device):
    """Build a cuequivariance-torch module with its best available method: the CUDA kernels
    ('uniform_1d', then 'fused_tp') on a GPU when cuequivariance-ops is installed, else 'naive'
    (pure torch; the only method that runs on a CPU). Returns (module, method actually used)."""
    candidates = ("uniform_1d", "fused_tp", "naive") if device.type == "cuda" else ("naive",)
    last_error = None
    for method in candidates:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = make(method)
        except (ValueError, RuntimeError, ImportError, NotImplementedError) as error:
            last_error = error
            continue
        used = getattr(getattr(module, "f", None), "method", method)  # falls back to naive with a warning
        if used != method and method != candidates[-1]:
            continue
        return module, used
    raise RuntimeError(f"no cuequivariance method could build this module: {last_error}")


def seeded(seed: int, device) -> torch.Generator:
    generator = torch.Generator(device="cpu")
    generator.manual_seed(1000 + seed)
    return generator


def randn(shape, generator, device, dtype) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=dtype).to(device)


def element_size(dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
