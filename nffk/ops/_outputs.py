"""Output buffers handed to compiled kernels.

Kernels write every element of the buffer they are given, so it is allocated uninitialised.
Tests switch on poisoning (`nffk.testing.poisoned_outputs()`): buffers then start as NaN and an
element a kernel forgot to write shows up in the comparison with the reference.
"""
import torch

_poison = False


def new(shape, like: torch.Tensor) -> torch.Tensor:
    """An output buffer of `shape` with `like`'s dtype and device."""
    if _poison:
        return torch.full(shape, float("nan"), dtype=like.dtype, device=like.device)
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def set_poison(enabled: bool) -> bool:
    """Turns poisoning on or off; returns the previous setting."""
    global _poison
    previous, _poison = _poison, bool(enabled)
    return previous
