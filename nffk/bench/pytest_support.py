"""The same cases under pytest-benchmark (the suites in bench/test_bench_*.py).

    pytest bench/ --benchmark-only                      # quick sizes
    NFFK_BENCH_MODE=default pytest bench/ --benchmark-only --benchmark-json out.json

Environment: NFFK_BENCH_MODE (quick | default | full, default quick), NFFK_BENCH_CONFIGS
(comma-separated names), NFFK_BENCH_DEVICE (cpu | cuda | auto), NFFK_BENCH_REFERENCE=1 (also
nffk's reference backend). Missing peers are skipped with the reason."""
from __future__ import annotations

import os

import torch

from nffk.bench import registry
from nffk.bench.timing import Rotation, device_cache_bytes, rotation_sets, synchronize


def _device() -> torch.device:
    name = os.environ.get("NFFK_BENCH_DEVICE", "auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def parameters(op: str) -> list:
    """pytest.param(case, implementation) for every case of `op` and each of its implementations."""
    import pytest
    mode = os.environ.get("NFFK_BENCH_MODE", "quick")
    configs = os.environ.get("NFFK_BENCH_CONFIGS")
    configs = [c for c in configs.split(",") if c] if configs else None
    if configs:
        configs = [c for c in configs if c in registry.config_names(registry.op_module(op))] or None
        if configs is None:
            return []
    cases = registry.collect([op], configs, mode, _device(),
                             reference=os.environ.get("NFFK_BENCH_REFERENCE") == "1")
    return [pytest.param(case, impl, id=f"{case.config}-{case.pass_name}-{case.size_name}{case.size}-{impl.name}")
            for case in cases for impl in case.implementations]


def benchmark_case(benchmark, case, impl, rounds: int | None = None, warmup: int = 2) -> None:
    """Time one implementation of one case with pytest-benchmark: rotated inputs (prepared by
    `setup`, not timed), device synchronisation, and the case's work in `extra_info`."""
    import pytest
    try:
        built = impl.build()
    except registry.PeerMissing as why:
        pytest.skip(f"{impl.name}: {why}")
    n_sets = rotation_sets(case.input_bytes, cache_bytes=device_cache_bytes(case.device))
    input_sets = [case.make_inputs(seed) for seed in range(n_sets)]
    if built.adapt is not None:
        input_sets = [built.adapt(args) for args in input_sets]
    rotation = Rotation(input_sets)

    def setup():
        return rotation.next(), {}

    def timed(*args):
        result = built.fn(*args)
        synchronize(case.device)
        return result

    benchmark.extra_info.update(op=case.op, config=case.config, pass_name=case.pass_name, size=case.size,
                                size_name=case.size_name, flops=case.flops, bytes=case.bytes, note=built.note,
                                threads=torch.get_num_threads(), device=str(case.device))
    rounds = rounds or {"quick": 5, "default": 9, "full": 21}[os.environ.get("NFFK_BENCH_MODE", "quick")]
    benchmark.pedantic(timed, setup=setup, rounds=rounds, warmup_rounds=warmup, iterations=1)
    median = benchmark.stats.stats.median
    if case.bytes:
        benchmark.extra_info["gbytes_per_s"] = case.bytes / median / 1e9
    if case.flops:
        benchmark.extra_info["gflops_per_s"] = case.flops / median / 1e9
