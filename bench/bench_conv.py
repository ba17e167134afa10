"""Message passing (fused conv): nffk against the gather + tensor product + index_add pattern of
e3nn and cuequivariance models. A thin wrapper over `nffk bench --ops conv`.

    python bench/bench_conv.py [--quick | --full] [--threads N] [--json out.json]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from nffk.bench.cases.conv import CONFIGS  # noqa: E402,F401

if __name__ == "__main__":
    from nffk import cli
    sys.exit(cli.main(["bench", "--ops", "conv", *sys.argv[1:]]))
