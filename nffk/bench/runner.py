"""Runs benchmark cases and gathers one report: machine, floors, and a record per
(case, implementation) with its times, derived rates and the check against nffk's output."""
from __future__ import annotations

import contextlib
import datetime
import os
import signal
import sys
import threading
import time
import warnings

import torch

from nffk.bench import allocator
from nffk.bench.machine import describe_machine, measure_floors, package_versions
from nffk.bench.registry import PeerMissing, case_key, same_result
from nffk.bench.timing import Rotation, device_cache_bytes, rotation_sets, summarize, time_interleaved

SCHEMA = "nffk-bench/1"
NFFK = "nffk"  # the implementation every ratio is taken against

# Timing effort per mode: warm-up calls, rounds, minimum and maximum seconds per case, and how
# long building one implementation (code generation, descriptors, JIT) may take.
EFFORT = {
    "quick": {"warmup": 2, "repeat": 5, "min_seconds": 0.0, "max_seconds": 2.0, "build_timeout": 30},
    "default": {"warmup": 3, "repeat": 9, "min_seconds": 0.5, "max_seconds": 20.0, "build_timeout": 120},
    "full": {"warmup": 3, "repeat": 21, "min_seconds": 2.0, "max_seconds": 60.0, "build_timeout": 600},
}


class BuildTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise BuildTimeout in this block after `seconds` (main thread on POSIX; no limit elsewhere)."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable or not seconds:
        yield
        return

    def expire(signum, frame):
        raise BuildTimeout(f"building took longer than {seconds:g} s (the limit of this mode)")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:200]


def run_case(case, effort: dict) -> list:
    """Records (dicts) for every implementation of one case."""
    allocator.release()  # what earlier cases freed
    base = {"op": case.op, "config": case.config, "pass": case.pass_name, "size": case.size,
            "size_name": case.size_name, "params": case.params, "family": case.family,
            "flops": case.flops, "bytes": case.bytes, "description": case.description}
    records, built = {}, {}
    for impl in case.implementations:
        record = dict(base, impl=impl.name, status="ok", note="", check="ref" if impl.name == NFFK else "n/a")
        if impl.bound:  # the op's bytes and FLOPs are not this part's
            record.update(bound=True, flops=None, bytes=None)
        started = time.perf_counter()
        try:
            with warnings.catch_warnings(), time_limit(effort.get("build_timeout", 0)):
                warnings.simplefilter("ignore")  # peers' deprecation chatter
                built[impl.name] = impl.build()
            record["note"] = built[impl.name].note
        except PeerMissing as why:
            record.update(status="missing", note=str(why))
        except Exception as error:  # noqa: BLE001 - a peer that cannot build this config is reported, not fatal
            record.update(status="error", note=_short(error))
        # Construction (and, for cached modules, only the first pass's): code generation, descriptors.
        record["build_s"] = time.perf_counter() - started
        records[impl.name] = record

    n_sets = rotation_sets(case.input_bytes, cache_bytes=device_cache_bytes(case.device))
    input_sets = [case.make_inputs(seed) for seed in range(n_sets)]
    adapt = {name: b.adapt for name, b in built.items() if b.adapt is not None}

    def args_for(name, args):
        return adapt[name](args) if name in adapt else args

    # One call each: a first warm-up (its time is kept: JIT compilation shows here), and
    # implementations that fail on this case are reported. Each call's peak memory is measured.
    peaks = {}
    for name in list(built):
        allocator.release()
        before = allocator.resident_kb() if allocator.reset_peak() else None
        try:
            started = time.perf_counter()
            built[name].fn(*args_for(name, input_sets[0]))
            records[name]["first_call_s"] = time.perf_counter() - started
            peaks[name] = allocator.peak_growth_bytes(before)
            records[name]["peak_bytes"] = peaks[name]
        except Exception as error:  # noqa: BLE001
            records[name].update(status="error", note=_short(error))
            del built[name]

    # Outputs compared with nffk's on the same inputs, where the implementation gives one.
    reference = built.get(NFFK)
    if reference is not None and reference.output is not None:
        with torch.no_grad():
            expected = reference.output(*args_for(NFFK, input_sets[0]))
        for name, b in built.items():
            if name == NFFK or b.output is None:
                continue
            try:
                with torch.no_grad():
                    ok, error = same_result(expected, b.output(*args_for(name, input_sets[0])), case.rtol)
                records[name]["check"] = "ok" if ok else f"DIFFERS ({error:.1e})"
            except Exception as error:  # noqa: BLE001
                records[name]["check"] = f"failed: {_short(error)}"

    allocator.release()
    groups, left_out = timing_groups(list(built), peaks, allocator.available_bytes()) if built else ([], {})
    for name, note in left_out.items():
        records[name].update(status="skipped", note=note)
    times = {}
    for group in groups:
        if len(groups) > 1:
            allocator.release()
            records[group[-1]]["timed_beside_nffk"] = True
        group_times = time_interleaved({name: built[name].fn for name in group}, Rotation(input_sets),
                                       warmup=max(effort["warmup"] - 1, 0), repeat=effort["repeat"],
                                       min_seconds=effort["min_seconds"], max_seconds=effort["max_seconds"],
                                       device=case.device, adapt=adapt)
        for name, ts in group_times.items():
            times.setdefault(name, []).extend(ts)
    for name, ts in times.items():
        records[name].update(summarize(ts), times_s=ts, input_sets=n_sets)
    return list(records.values())


# Under the `keep` malloc policy freed blocks stay with the process, so implementations timed
# together hold about the sum of their temporaries (a full high-order double backward: 17 GB in
# the first calls, past 24 GB later). Timing may use this share of the memory available when the
# case starts, counting each implementation at PEAK_MARGIN times its first call's peak (later calls
# of cuequivariance-torch's high-order double backward took up to 1.7x its first call's).
MEMORY_SHARE = 0.75
PEAK_MARGIN = 2.0


def timing_groups(names: list, peaks: dict, available) -> tuple:
    """(groups of implementations timed interleaved, {left-out name: why}). All together where the
    sum of their first calls' peak memory fits in MEMORY_SHARE of `available` bytes (or where either
    is unknown); else nffk beside each other implementation in turn (every ratio is against nffk),
    leaving out one that does not fit even beside nffk."""
    known = [peaks.get(name) for name in names]
    if available is None or None in known or NFFK not in names:
        return [names], {}
    budget = MEMORY_SHARE * available / PEAK_MARGIN
    if sum(known) <= budget:
        return [names], {}
    groups, left_out = [], {}
    for name in names:
        if name == NFFK:
            continue
        if peaks[NFFK] + peaks[name] <= budget:
            groups.append([NFFK, name])
        else:
            left_out[name] = (f"skipped: its first call took {peaks[name] / 1e9:.1f} GB and nffk's "
                              f"{peaks[NFFK] / 1e9:.1f}; {PEAK_MARGIN:g}x that is past {MEMORY_SHARE:.0%} of the "
                              f"{available / 1e9:.1f} GB available")
    return groups or [[NFFK]], left_out


def derive(records: list, floors: dict) -> None:
    """Ratios against nffk, achieved rates and the fraction of the floor, in place."""
    nffk_time = {case_key(r): r["median_s"] for r in records if r["impl"] == NFFK and r["status"] == "ok"}
    for r in records:
        if r["status"] != "ok":
            continue
        t = r["median_s"]
        ours = nffk_time.get(case_key(r))
        r["ratio_vs_nffk"] = t / ours if ours else None
        r["gbytes_per_s"] = r["bytes"] / t / 1e9 if r["bytes"] else None
        r["gflops_per_s"] = r["flops"] / t / 1e9 if r["flops"] else None
        floor = max(r["bytes"] / floors["copy_bytes_per_s"] if r["bytes"] else 0.0,
                    r["flops"] / floors["matmul_flops_per_s"] if r["flops"] else 0.0)
        r["floor_s"] = floor or None
        r["floor_fraction"] = floor / t if floor else None


def run(cases, mode: str = "default", device="cpu", dtype=torch.float32, command=None, progress: bool = True,
        floors: dict | None = None) -> dict:
    """Time every case and return the report (a JSON-ready dict)."""
    device = torch.device(device)
    effort = EFFORT[mode]
    started = time.time()
    machine = describe_machine(device)
    floors = floors or measure_floors(device, dtype, quick=(mode == "quick"))
    records = []
    if progress and sys.stderr.isatty():
        from rich.progress import Progress
        with Progress(transient=True) as bar:
            task = bar.add_task("benchmarking", total=len(cases))
            for case in cases:
                bar.update(task, description=f"{case.op} {case.config} {case.pass_name} {case.size_name}={case.size}")
                records += run_case(case, effort)
                bar.advance(task)
    else:
        for k, case in enumerate(cases):
            case_start = time.time()
            records += run_case(case, effort)
            if progress:  # one line per case where there is no terminal for a progress bar
                print(f"[{k + 1}/{len(cases)}] {case.op} {case.config} {case.pass_name} {case.size_name}={case.size}"
                      f" ({time.time() - case_start:.0f} s)", file=sys.stderr, flush=True)
    derive(records, floors)
    # Other processes' load is part of what was measured: recorded at both ends of the run.
    machine["load_average_start"] = machine.pop("load_average")
    machine["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "seconds": time.time() - started,
        "settings": {"mode": mode, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
                     "threads": torch.get_num_threads(), **effort},
        "machine": machine,
        "packages": package_versions(),
        "floors": floors,
        "records": records,
    }

