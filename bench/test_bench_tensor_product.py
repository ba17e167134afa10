"""pytest-benchmark suite over the cases of `nffk bench --ops tp` (see nffk/bench/pytest_support.py).

    pytest bench/test_bench_tensor_product.py --benchmark-only
"""
import pytest

pytest.importorskip("pytest_benchmark")

from nffk.bench.pytest_support import benchmark_case, parameters  # noqa: E402


@pytest.mark.parametrize("case, implementation", parameters("tp"))
def test_tensor_product(benchmark, case, implementation):
    benchmark_case(benchmark, case, implementation)
