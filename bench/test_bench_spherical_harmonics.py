"""pytest-benchmark suite over the cases of `nffk bench --ops sh` (see nffk/bench/pytest_support.py).

    pytest bench/test_bench_spherical_harmonics.py --benchmark-only
"""
import pytest

pytest.importorskip("pytest_benchmark")

from nffk.bench.pytest_support import benchmark_case, parameters  # noqa: E402


@pytest.mark.parametrize("case, implementation", parameters("sh"))
def test_spherical_harmonics(benchmark, case, implementation):
    benchmark_case(benchmark, case, implementation)
