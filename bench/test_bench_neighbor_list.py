"""pytest-benchmark suite over the cases of `nffk bench --ops nlist` (see nffk/bench/pytest_support.py).

    pytest bench/test_bench_neighbor_list.py --benchmark-only
"""
import pytest

pytest.importorskip("pytest_benchmark")

from nffk.bench.pytest_support import benchmark_case, parameters  # noqa: E402


@pytest.mark.parametrize("case, implementation", parameters("nlist"))
def test_neighbor_list(benchmark, case, implementation):
    benchmark_case(benchmark, case, implementation)
