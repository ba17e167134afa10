"""CSR segment sum: out[s] = src[ptr[s]:ptr[s+1]].sum(0). Deterministic (no atomics).

The smallest op of nffk and the template of the others: validation, a pure-torch
reference, a `torch.library` custom op with a fake kernel and autograd, and a
dispatch to the backend chosen by `nffk.backends.resolve`.
"""
import torch

from nffk import backends

IMPLEMENTED = ("reference", "cpu")


def segment_sum_reference(src: torch.Tensor, ptr: torch.Tensor) -> torch.Tensor:
    counts = ptr[1:] - ptr[:-1]
    segment_of_row = torch.repeat_interleave(torch.arange(counts.numel(), device=src.device), counts,
                                             output_size=src.shape[0])
    out = src.new_zeros(counts.numel(), src.shape[1])
    return out.index_add_(0, segment_of_row, src)


@torch.library.custom_op("nffk::segment_sum", mutates_args=())
def _segment_sum(src: torch.Tensor, ptr: torch.Tensor, backend: str) -> torch.Tensor:
    if backend == "cpu":
        return torch.ops.nffk_C.segment_sum(src, ptr)
    return segment_sum_reference(src, ptr)


@_segment_sum.register_fake
def _(src, ptr, backend):
    return src.new_empty(ptr.shape[0] - 1, src.shape[1])


def _setup_context(ctx, inputs, output):
    src, ptr, _ = inputs
    ctx.save_for_backward(ptr)
    ctx.rows = src.shape[0]


def _backward(ctx, grad):
    (ptr,) = ctx.saved_tensors
    # The adjoint of a segment sum broadcasts each segment's gradient back to its rows;
    # written in differentiable torch ops so higher derivatives come for free.
    grad_src = torch.repeat_interleave(grad, ptr[1:] - ptr[:-1], dim=0, output_size=ctx.rows)
    return grad_src, None, None


_segment_sum.register_autograd(_backward, setup_context=_setup_context)


def segment_sum(src: torch.Tensor, ptr: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Sum the rows of `src` [rows, features] over the CSR segments given by `ptr` [segments+1]."""
    if src.dim() != 2:
        raise ValueError(f"src must be 2-D [rows, features], got shape {tuple(src.shape)}")
    if ptr.dim() != 1 or ptr.dtype != torch.int64 or ptr.numel() < 1:
        raise ValueError(f"ptr must be a non-empty 1-D int64 tensor, got {ptr.dtype} of shape {tuple(ptr.shape)}")
    if ptr.device != src.device:
        raise ValueError(f"ptr is on {ptr.device} but src is on {src.device}")
    if not torch.compiler.is_compiling():
        if int(ptr[0]) != 0 or int(ptr[-1]) != src.shape[0] or bool((ptr[1:] < ptr[:-1]).any()):
            raise ValueError(f"ptr must be non-decreasing from 0 to src.shape[0]={src.shape[0]}")
    chosen = backends.resolve("segment_sum", backend, src.device, IMPLEMENTED)
    return _segment_sum(src.contiguous(), ptr.contiguous(), chosen)
