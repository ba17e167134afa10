"""Neighbour lists: nffk against vesin, matscipy and ase. A thin wrapper over `nffk bench --ops nlist`.

    python bench/bench_neighbor_list.py [--quick | --full] [--threads N] [--json out.json]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from nffk.bench.cases.neighbor_list import CONFIGS  # noqa: E402,F401

if __name__ == "__main__":
    from nffk import cli
    sys.exit(cli.main(["bench", "--ops", "nlist", *sys.argv[1:]]))
