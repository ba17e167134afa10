"""Spherical harmonics: nffk against e3nn and sphericart-torch, values and values+gradients.
A thin wrapper over `nffk bench --ops sh`.

    python bench/bench_spherical_harmonics.py              # 20,000 vectors
    python bench/bench_spherical_harmonics.py --full       # the issue's size (200,000 vectors)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

if __name__ == "__main__":
    from nffk import cli
    sys.exit(cli.main(["bench", "--ops", "sh", *sys.argv[1:]]))
