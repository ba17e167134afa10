"""Backend selection: chosen, never guessed silently (see DESIGN.md).

`"auto"` picks the fastest backend that is available for the tensors' device and
implemented for the op; a named backend that is unavailable is an error saying why.
The environment variable NFFK_BACKEND overrides whatever the caller asked for.
"""
import importlib
import importlib.util
import os
import sys

import torch

from nffk import _ext

BACKENDS = ("auto", "reference", "cpu", "triton", "cuda")
# Preference order of "auto" per device type.
AUTO_ORDER = {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")}


class BackendUnavailable(RuntimeError):
    """A backend was asked for by name but cannot run here."""


def check_name(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def requested(backend: str) -> str:
    """The backend to use: NFFK_BACKEND, when set, overrides the caller's choice."""
    env = os.environ.get("NFFK_BACKEND")
    if env:
        if env not in BACKENDS:
            raise ValueError(f"NFFK_BACKEND must be one of {BACKENDS}, got {env!r}")
        return env
    return check_name(backend)


# Looked up once at import (without importing triton): torch.compile cannot trace find_spec.
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def _triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def unavailable_reason(backend: str, device: torch.device) -> str | None:
    """None if `backend` can run on `device`, else a sentence saying why not."""
    if backend == "reference":
        return None
    if backend == "cpu":
        if device.type != "cpu":
            return f"it runs on CPU tensors and these are on {device}"
        if not _ext.loaded():
            return f"the compiled extension nffk._C is not loaded ({_ext.ERROR})"
        return None
    if backend == "cuda":
        if device.type != "cuda":
            return f"it runs on CUDA tensors and these are on {device}"
        if not _ext.with_cuda():
            why = _ext.ERROR or "it was built without CUDA (torch had no CUDA at install time)"
            return f"the extension has no CUDA kernels: {why}"
        return None
    if backend == "triton":
        if not _TRITON_INSTALLED:
            return "the triton package is not installed"
        if device.type == "cpu" and not _triton_interpreting():
            return "Triton runs on CUDA tensors (or on the CPU under TRITON_INTERPRET=1)"
        return None
    raise ValueError(f"unknown backend {backend!r}")


def resolve(op: str, backend: str, device: torch.device, implemented) -> str:
    """Concrete backend for one call of `op` on `device`.

    `implemented` lists the backends that implement this op (for this plan)."""
    backend = requested(backend)
    implemented = tuple(implemented)
    if backend == "auto":
        for candidate in AUTO_ORDER.get(device.type, ("reference",)):
            if candidate in implemented and unavailable_reason(candidate, device) is None:
                return candidate
        return "reference"
    if backend not in implemented:
        raise BackendUnavailable(f"nffk: {op} has no {backend!r} implementation (it has {implemented})")
    why = unavailable_reason(backend, device)
    if why is not None:
        raise BackendUnavailable(f"nffk: backend {backend!r} cannot run {op}: {why}")
    return backend


_SUPPORTED: dict = {}  # (op name, plan id) -> the backends whose predicate holds


def implemented_by(op: str, supports: dict, dtypes: dict, plan, dtype: torch.dtype | None = None) -> tuple:
    """Backends of op's `supports` (name -> predicate on a plan) that implement `plan` and, if
    given, compute in `dtype` (`dtypes`: name -> dtypes; a backend not in it computes in any).
    Plans do not change, so each plan's predicates run once: they walk its paths, a cost on every
    call. The cache is keyed by the op's name, not id(supports): torch.compile cannot trace id()
    of a dict (torch 2.11)."""
    key = (op, plan.id)
    if key not in _SUPPORTED:
        _SUPPORTED[key] = tuple(name for name, holds in supports.items() if holds(plan))
    return tuple(name for name in _SUPPORTED[key] if dtype is None or dtype in dtypes.get(name, (dtype,)))


def check_dtype(op: str, backend: str, dtype: torch.dtype, dtypes: dict) -> None:
    """A backend asked for by name that does not compute in `dtype` is an error saying so
    (`dtypes`: backend name -> the dtypes it computes in; "auto" simply skips such backends)."""
    name = requested(backend)
    if name in dtypes and dtype not in dtypes[name]:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes[name])
        raise BackendUnavailable(f"nffk: backend {name!r} computes {op} in {allowed}, got {dtype}")


def triton_kernels():
    """The Triton kernel package `nffk.kernels` (from the source tree when not installed)."""
    try:
        return importlib.import_module("nffk.kernels")
    except ModuleNotFoundError:
        root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels")
        spec = importlib.util.spec_from_file_location(
            "nffk.kernels", os.path.join(root, "__init__.py"), submodule_search_locations=[root])
        module = importlib.util.module_from_spec(spec)
        sys.modules["nffk.kernels"] = module
        spec.loader.exec_module(module)
        return module


class TritonModule:
    """Stands for the Triton kernel module `kernels/<name>.py` until first used: importing triton
    is slow, and TRITON_INTERPRET (CPU testing) must be set before the kernels are defined."""

    def __init__(self, name: str):
        self.name = name

    def __getattr__(self, attr):
        return getattr(getattr(triton_kernels(), self.name), attr)
