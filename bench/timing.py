"""Timing helpers shared by the benchmark scripts: warm-up, medians, inputs rotated between calls."""
from __future__ import annotations

import statistics
import time

import torch


def median_time(fn, input_sets, warmup: int = 2, repeat: int = 7, min_seconds: float = 0.0) -> float:
    """Median wall time of fn(*inputs) in seconds. `input_sets` is a list of argument tuples used in
    turn, so a cache warmed by one call does not flatter the next."""
    for k in range(warmup):
        fn(*input_sets[k % len(input_sets)])
    times, k, start = [], 0, time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_seconds:
        args = input_sets[k % len(input_sets)]
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(*args)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        k += 1
    return statistics.median(times)


def copy_bandwidth(nbytes: int = 1 << 28, repeat: int = 5) -> float:
    """Bytes/s of a large memory copy (read + write counted), the bandwidth floor of memory-bound kernels."""
    src = torch.empty(nbytes // 4, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    seconds = median_time(lambda: dst.copy_(src), [()], warmup=1, repeat=repeat)
    return 2 * nbytes / seconds


def interleaved_medians(fns: dict, input_sets, rounds: int = 5, warmup: int = 1) -> dict:
    """Median wall time (s) of each fn(*inputs), measured in alternating rounds so that a change in
    machine load (shared machines) affects every contender alike; ratios within one call are fair."""
    for fn in fns.values():
        for k in range(warmup):
            fn(*input_sets[k % len(input_sets)])
    times = {name: [] for name in fns}
    for r in range(rounds):
        for name, fn in fns.items():
            args = input_sets[r % len(input_sets)]
            t0 = time.perf_counter()
            fn(*args)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(values) for name, values in times.items()}


def copy_floor(nbytes: int):
    """A function whose time is the memory floor of a kernel that must move `nbytes` (read + write):
    a copy of nbytes / 2 into a buffer already touched (no page faults)."""
    count = max(1, nbytes // 8)
    src = torch.ones(count, dtype=torch.float32)
    dst = torch.zeros_like(src)

    def run(*_):
        dst.copy_(src)
    return run
