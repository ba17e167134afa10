"""Timing done right: warm-up, medians of repeated runs, inputs rotated so caches do not
flatter, device synchronisation, implementations interleaved so that load from other
processes hits all of them alike."""
from __future__ import annotations

import gc
import math
import os
import statistics
import time
from typing import Callable, Sequence

import torch


def synchronize(device: torch.device | str | None) -> None:
    """Wait for queued GPU work, so a wall-clock interval covers the kernels and not just their launch."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def inputs_device(input_sets) -> torch.device | None:
    """The device of the first tensor off the CPU in the input sets (searched one level into lists,
    tuples and dicts), or None: what the timer must synchronise when no device is named."""
    for args in input_sets:
        for arg in args:
            items = arg.values() if isinstance(arg, dict) else arg if isinstance(arg, (list, tuple)) else (arg,)
            for item in items:
                if isinstance(item, torch.Tensor) and item.device.type != "cpu":
                    return item.device
    return None


def last_level_cache_bytes() -> int:
    """Size of the largest CPU cache (L3 usually), from sysfs; 32 MiB when it cannot be read."""
    best = 0
    root = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in os.listdir(root):
            try:
                with open(os.path.join(root, entry, "size")) as f:
                    text = f.read().strip().upper()
            except OSError:
                continue
            scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
            best = max(best, int(text.rstrip("KMG")) * scale)
    except (OSError, ValueError):
        pass
    return best or 32 << 20


def device_cache_bytes(device) -> int:
    """The cache rotated inputs must overflow: a GPU's L2, else the CPU's last-level cache."""
    device = torch.device(device)
    if device.type == "cuda":
        return getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or (50 << 20)
    return last_level_cache_bytes()


def rotation_sets(bytes_per_set: float, cache_bytes: int | None = None, max_sets: int = 16,
                  max_total: float = 1 << 30) -> int:
    """How many input sets to rotate through so that the set a call reads was last touched more
    than a cache's worth of data ago: about 2 x cache / set, at least 2, at most `max_sets` and
    `max_total` bytes in all."""
    cache_bytes = cache_bytes or last_level_cache_bytes()
    wanted = math.ceil(2 * cache_bytes / max(bytes_per_set, 1)) + 1
    affordable = max(2, int(max_total // max(bytes_per_set, 1)))
    return max(2, min(wanted, max_sets, affordable))


class Rotation:
    """Hands out input sets in turn. One Rotation is shared by all implementations of a case,
    so two consecutive calls (whichever implementation makes them) never read the same set."""

    def __init__(self, input_sets: Sequence[Sequence]):
        if not input_sets:
            raise ValueError("input_sets must hold at least one argument tuple")
        self.input_sets, self.calls = list(input_sets), 0

    def next(self):
        args = self.input_sets[self.calls % len(self.input_sets)]
        self.calls += 1
        return args


def time_interleaved(functions: dict, rotation: Rotation, warmup: int = 3, repeat: int = 7,
                     min_seconds: float = 0.0, max_seconds: float = float("inf"), min_repeat: int = 3,
                     device=None, adapt: dict | None = None) -> dict:
    """Seconds per call of each function, as a list per name.

    Every function is first called `warmup` times (compilation, JIT profiling, allocator
    growth); then rounds are run, each calling every function once, in turn, on the next input
    set of `rotation`. Rounds continue until `repeat` rounds are done and `min_seconds` have
    passed, and stop early (after at least `min_repeat` rounds) once `max_seconds` are spent.
    `adapt[name]` optionally converts an input set for one function (not timed). Without a
    `device`, the inputs' device is synchronised around each call: a GPU timer that forgets to
    synchronise measures the launch, not the kernels (bench_gpu.py did, in its first GPU run)."""
    adapt = adapt or {}
    if device is None:
        device = inputs_device(rotation.input_sets)

    def call(name, fn):
        args = rotation.next()
        if name in adapt:
            args = adapt[name](args)
        synchronize(device)
        t0 = time.perf_counter()
        fn(*args)
        synchronize(device)
        return time.perf_counter() - t0

    for name, fn in functions.items():
        for _ in range(warmup):
            call(name, fn)
    times = {name: [] for name in functions}
    # Python's cyclic garbage collector runs at allocation-count thresholds, so its pauses (up
    # to milliseconds after the harness has built big inputs) land inside random timed calls:
    # collect once now and keep it off while timing.
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        rounds = 0
        while True:
            elapsed = time.perf_counter() - start
            if rounds >= repeat and elapsed >= min_seconds:
                break
            if rounds >= min_repeat and elapsed >= max_seconds:
                break
            for name, fn in functions.items():
                times[name].append(call(name, fn))
            rounds += 1
    finally:
        if was_enabled:
            gc.enable()
    return times


def summarize(times: Sequence[float]) -> dict:
    """Median and quartiles of a list of seconds."""
    times = sorted(times)
    if len(times) >= 2:
        q25, _, q75 = statistics.quantiles(times, n=4, method="inclusive")
    else:
        q25 = q75 = times[0]
    return {"median_s": statistics.median(times), "q25_s": q25, "q75_s": q75, "min_s": times[0], "runs": len(times)}


def median_time(fn: Callable, input_sets: Sequence[Sequence], warmup: int = 2, repeat: int = 7,
                min_seconds: float = 0.0, device=None) -> float:
    """Median wall time of fn(*inputs) in seconds, `input_sets` used in turn (one function; see
    `time_interleaved` to compare several)."""
    return summarize(time_interleaved({"fn": fn}, Rotation(input_sets), warmup, repeat, min_seconds,
                                      device=device)["fn"])["median_s"]
