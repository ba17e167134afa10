"""Benchmark cases: what is timed (one op, one config, one pass, one size), by which
implementations (nffk and its peers), and how much work it is (FLOPs and bytes from the plans).

Each op has a module in `nffk.bench.cases` with `CONFIGS` (name -> its definition; a module may
add `ALL_CONFIGS`, a superset with configs run only when named),
`DEFAULTS` (mode -> config names run when none are named) and
`cases(configs, mode, device, dtype, sweeps=False, reference=False) -> list[Case]` (`sweeps`: add
the cases of the plotted sweeps; `reference`: also time nffk's reference backend where "auto"
picks another). Building a case is cheap; the
implementations are only constructed (and peers only imported) when the case is run."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

# op name on the command line -> module holding its cases
OPS = {
    "tp": "nffk.bench.cases.tensor_product",
    "sh": "nffk.bench.cases.spherical_harmonics",
    "nlist": "nffk.bench.cases.neighbor_list",
    "conv": "nffk.bench.cases.conv",
    "model": "nffk.bench.cases.model",
}
MODES = ("quick", "default", "full")


class PeerMissing(Exception):
    """A peer is not installed or cannot run here; the message says why."""


@dataclass
class Built:
    """An implementation ready to time."""
    fn: Callable  # the timed call: fn(*inputs)
    output: Callable | None = None  # output(*inputs): a value compared with nffk's on the same inputs
    adapt: Callable | None = None  # converts the case's input set to this implementation's layout (not timed)
    note: str = ""  # what was chosen, e.g. "backend=cpu" or "method=naive"


@dataclass
class Implementation:
    name: str  # "nffk", "nffk[reference]", "e3nn", "cuequivariance", ...
    build: Callable[[], Built]  # may raise PeerMissing
    # Not an implementation but a part of the pass that every implementation's time includes (the
    # tensor products' loss ops on the output): timed alongside them, and a peer's time / this one
    # is the largest ratio against that peer any implementation could reach here.
    bound: bool = False


def case_key(record: dict) -> tuple:
    """The case a record belongs to. A sweep may repeat a main case's config and size: it is timed
    (and compared) separately."""
    return record["op"], record["config"], record["pass"], record["size"], record.get("family")


@dataclass
class Case:
    op: str
    config: str
    pass_name: str
    size: int  # the batch dimension: elements, edge vectors, atoms
    size_name: str
    make_inputs: Callable[[int], tuple]  # seed -> one input set
    implementations: list
    flops: float | None = None  # FLOPs of one call (None when there is no meaningful count)
    bytes: float | None = None  # bytes a kernel must move in one call at least
    input_bytes: float = 0.0  # size of one input set, to decide how many sets to rotate through
    params: dict = field(default_factory=dict)  # e.g. {"lmax": 3}, the x axis of sweep plots
    family: str | None = None  # "lmax" or "batch" for cases of a plotted sweep
    device: torch.device = torch.device("cpu")
    rtol: float = 1e-4  # outputs agree when max|a - b| <= rtol * max|b|
    description: str = ""


def op_module(op: str):
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; choose from {', '.join(OPS)}")
    return importlib.import_module(OPS[op])


def config_names(module) -> list:
    return list(getattr(module, "ALL_CONFIGS", module.CONFIGS))


def collect(ops=None, configs=None, mode: str = "default", device="cpu", dtype=torch.float32,
            sweeps: bool = False, reference: bool = False) -> list:
    """The cases of `ops` (all when None) for `configs` (each op's defaults for `mode` when None;
    names that belong to no op are an error)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    ops = list(ops or OPS)
    device = torch.device(device)
    modules = {op: op_module(op) for op in ops}
    if configs:
        known = {name for module in modules.values() for name in config_names(module)}
        unknown = [name for name in configs if name not in known]
        if unknown:
            raise ValueError(f"unknown config(s) {', '.join(unknown)} for ops {', '.join(ops)}; known: "
                             f"{', '.join(sorted(known))}")
    cases = []
    for op, module in modules.items():
        names = [c for c in configs if c in config_names(module)] if configs else list(module.DEFAULTS[mode])
        if names or sweeps:
            cases += module.cases(names, mode, device, dtype, sweeps=sweeps, reference=reference)
    return cases


def same_result(ours: Any, theirs: Any, rtol: float) -> tuple:
    """(agrees, relative error) of two outputs: tensors by max abs difference relative to the
    largest value, other values (pair counts, shapes) by equality."""
    if isinstance(ours, (tuple, list)):
        results = [same_result(a, b, rtol) for a, b in zip(ours, theirs)]
        ok = len(ours) == len(theirs) and all(r[0] for r in results)
        return ok, max((r[1] for r in results), default=0.0)
    if isinstance(ours, torch.Tensor):
        if not isinstance(theirs, torch.Tensor) or ours.shape != theirs.shape:
            return False, float("inf")
        ours, theirs = ours.detach().double().cpu(), theirs.detach().double().cpu()
        scale = float(ours.abs().max()) if ours.numel() else 0.0
        error = float((ours - theirs).abs().max()) / scale if scale > 0 else float((ours - theirs).abs().max() or 0)
        return error <= rtol, error
    return ours == theirs, 0.0 if ours == theirs else float("inf")
