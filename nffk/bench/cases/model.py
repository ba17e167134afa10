"""A full model step (forward, energy and forces, backward). No cases yet: `nffk.models` has no
model to time. When one lands, its cases go here (the registry already lists the op, so
`nffk bench --ops model` says there is nothing to run instead of failing)."""
from __future__ import annotations

CONFIGS: dict = {}
DEFAULTS = {"quick": [], "default": [], "full": []}


def cases(configs, mode: str, device, dtype, sweeps: bool = False, reference: bool = False) -> list:
    del configs, mode, device, dtype, sweeps, reference
    return []
