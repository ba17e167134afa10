"""Data-parallel training across processes started by `torchrun` (gloo on CPU, nccl on GPU).

Each process takes a contiguous part of every global batch, computes its share of the loss
divided by the *global* counts, and the gradients are summed over processes with one
all-reduce of a flat buffer; so the update equals the one-process update on the whole batch
(up to the order of floating-point sums). An explicit all-reduce (rather than
`DistributedDataParallel`'s hooks) keeps force training, which differentiates through a
gradient, simple and deterministic.
"""
from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_reduce_gradients(self, parameters) -> None:
        if not self.enabled:
            return
        parameters = list(parameters)
        for p in parameters:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in parameters])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in parameters:
            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
            offset += p.numel()

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        if self.enabled:
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor.data, src=0)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def check_same(self, value: int, what: str) -> None:
        """Raise if `value` differs between processes (e.g. the number of steps planned)."""
        if self.enabled:
            values = torch.tensor([value, -value], dtype=torch.int64)
            dist.all_reduce(values, op=dist.ReduceOp.MAX)
            if int(values[0]) != value or int(-values[1]) != value:
                raise RuntimeError(f"processes disagree on {what}")


def init_distributed(device: torch.device) -> Distributed:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK, ...);
    a single process when not launched by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        # The group we made is torn down before the interpreter exits: left to process teardown,
        # gloo's threads were sometimes destroyed while joinable, and a finished run's process
        # aborted ("terminate called without an active exception", exit code -6).
        atexit.register(_destroy_group)
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _destroy_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(indices, rank: int, world_size: int):
    """The contiguous part of one global batch (a list of structure indices) for `rank`."""
    n = len(indices)
    start, stop = rank * n // world_size, (rank + 1) * n // world_size
    return indices[start:stop]
