"""pytest-benchmark suite over the cases of `nffk bench --ops model` (see nffk/bench/pytest_support.py):
inference and a force-training step of the scaling-study models, nffk's backend against its reference.

    pytest bench/test_bench_model.py --benchmark-only
"""
import pytest

pytest.importorskip("pytest_benchmark")

from nffk.bench.pytest_support import benchmark_case, parameters  # noqa: E402


@pytest.mark.parametrize("case, implementation", parameters("model"))
def test_model(benchmark, case, implementation):
    benchmark_case(benchmark, case, implementation)
