"""Tensor products: nffk against e3nn and cuequivariance-torch (and OpenEquivariance on a GPU),
forward / forward+backward / double backward. A thin wrapper over `nffk bench --ops tp`.

    python bench/bench_tensor_product.py                  # batch = full / 10
    python bench/bench_tensor_product.py --full           # the issue's sizes (E = 10,000 / 2,000)
    python bench/bench_tensor_product.py --configs mace-medium --threads 1 --json out.json

The configs and module builders live in `nffk.bench.cases.tensor_product` and are re-exported
here (CONFIGS, build, make_inputs, PASSES) so other scripts can import them from either place.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from nffk.bench.cases.tensor_product import (CONFIGS, PASSES, build, build_e3nn, build_nffk,  # noqa: E402,F401
                                             double_backward, forward, forward_backward, make_inputs, sh_irreps)

if __name__ == "__main__":
    from nffk import cli
    sys.exit(cli.main(["bench", "--ops", "tp", *sys.argv[1:]]))
