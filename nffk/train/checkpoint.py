"""Checkpoints: written atomically (temporary file, fsync, rename) so a kill at any instant
leaves the previous checkpoint or the new one, never a torn file; read with
`torch.load(weights_only=True)` (tensors, numbers, strings, lists and dicts only: no pickled code).
"""
from __future__ import annotations

from pathlib import Path

import torch

from nffk._files import atomic_file


def save_checkpoint(path, state: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "wb") as handle:
        torch.save(state, handle)


def load_checkpoint(path, map_location="cpu") -> dict:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - a damaged file is reported with its path
        raise ValueError(f"cannot read checkpoint {path}: {err}") from err
