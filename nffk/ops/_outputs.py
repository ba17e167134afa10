"""Output buffers handed to compiled kernels.

Kernels write every element of the buffer they are given, so it is allocated uninitialised.
Tests switch on poisoning (`nffk.testing.poisoned_outputs()`): buffers then start as NaN and an
element a kernel forgot to write shows up in the comparison with the reference.

Large CPU buffers come from the extension's pool of huge-page mappings (csrc/cpu/mapped_outputs.cpp):
torch's allocator hands out fresh memory for them that faults in 4 KiB at a time, which costs
about as much as a kernel's own work; a pooled buffer freed by the previous call costs nothing.
"""
import math

import torch

from nffk import _ext

_poison = False
POOLED_BYTES = 1 << 20  # CPU buffers from this size on come from the pool


def new(shape, like: torch.Tensor) -> torch.Tensor:
    """An output buffer of `shape` with `like`'s dtype and device."""
    if _poison:
        return torch.full(shape, float("nan"), dtype=like.dtype, device=like.device)
    if like.device.type == "cpu" and _ext.loaded() and math.prod(shape) * like.element_size() >= POOLED_BYTES:
        return torch.ops.nffk_C.empty_output(list(shape), like.dtype)
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def empty_cache() -> int:
    """Hands the memory of freed large CPU outputs, which the pool keeps for later calls (up to
    1/16 of the machine's memory), back to the system; returns how many bytes. Like
    `torch.cuda.empty_cache()`: nothing in use is touched, and later calls refill the pool."""
    return int(torch.ops.nffk_C.release_outputs()) if _ext.loaded() else 0


def set_poison(enabled: bool) -> bool:
    """Turns poisoning on or off; returns the previous setting."""
    global _poison
    previous, _poison = _poison, bool(enabled)
    return previous
