"""Spherical harmonics of edge vectors: nffk (each backend) against e3nn and sphericart-torch.

    python bench/bench_spherical_harmonics.py              # 20,000 vectors, quick
    python bench/bench_spherical_harmonics.py --full       # 200,000 vectors (the issue's size)

Passes: "values" (no autograd) and "values+gradients" (values, then the vector-Jacobian product
with a fixed cotangent: what a force computation needs). Every contender computes all degrees
0..lmax of normalised vectors. Contenders alternate within rounds (shared machines: compare ratios
within one run). "floor": a copy moving the bytes the values must move (read x, write Y).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import copy_floor, interleaved_medians  # noqa: E402

from nffk.ops.spherical_harmonics import spherical_harmonics  # noqa: E402

CONFIGS = {f"l={l}": l for l in (2, 4, 6, 8)}
FULL_POINTS = 200_000
PEERS = ("e3nn", "sphericart")


def contenders(lmax: int, backends=("auto",), peers=PEERS) -> dict:
    """label -> function of x giving Y [N, (lmax+1)^2] (any real-SH convention)."""
    ls = list(range(lmax + 1))
    fns = {f"nffk[{b}]": (lambda b: lambda x: spherical_harmonics(ls, x, True, "component", backend=b))(b)
           for b in backends}
    if "e3nn" in peers:
        try:
            import e3nn.o3
            fns["e3nn"] = lambda x: e3nn.o3.spherical_harmonics(ls, x, True, normalization="component")
        except ImportError:
            pass
    if "sphericart" in peers:
        try:
            import sphericart.torch
            module = sphericart.torch.SphericalHarmonics(lmax)
            fns["sphericart"] = module
        except ImportError:
            pass
    return fns


def values(fn):
    def run(x, g):
        with torch.no_grad():
            fn(x)
    return run


def values_and_gradients(fn):
    def run(x, g):
        x = x.detach().requires_grad_()
        torch.autograd.grad(fn(x), x, g)
    return run


PASSES = {"values": values, "values+gradients": values_and_gradients}


def run(configs=None, full: bool = False, backends=("auto",), peers=PEERS, rounds: int = 7) -> list:
    rows = []
    points = FULL_POINTS if full else FULL_POINTS // 10
    for name in configs or CONFIGS:
        lmax = CONFIGS[name]
        fns = contenders(lmax, backends, peers)
        dim = (lmax + 1) ** 2
        inputs = [(torch.randn(points, 3), torch.randn(points, dim)) for _ in range(2)]
        for pass_name, make in PASSES.items():
            timed = {label: make(fn) for label, fn in fns.items()}
            if pass_name == "values":
                timed["floor"] = copy_floor(4 * points * (3 + dim))
            times = interleaved_medians(timed, inputs, rounds=rounds)
            rows.append({"config": name, "points": points, "pass": pass_name, "threads": torch.get_num_threads(),
                         "times": times})
    return rows


def print_rows(rows):
    ours = next(k for k in rows[0]["times"] if k.startswith("nffk"))
    print(f"threads={rows[0]['threads']}  float32  times in ms; ratio = peer / {ours}")
    for row in rows:
        t = row["times"]
        cells = "  ".join(f"{label} {1e3 * value:8.2f}" for label, value in t.items())
        ratios = "  ".join(f"{label} x{value / t[ours]:.2f}" for label, value in t.items()
                           if label not in (ours, "floor"))
        floor = f"  nffk/floor {t[ours] / t['floor']:.2f}" if "floor" in t else ""
        print(f"{row['config']:5s} {row['points']:7d} {row['pass']:17s} {cells}   {ratios}{floor}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help=f"{FULL_POINTS} vectors")
    parser.add_argument("--configs", nargs="*", choices=list(CONFIGS))
    parser.add_argument("--backends", nargs="*", default=["auto"])
    parser.add_argument("--peers", nargs="*", default=list(PEERS), choices=list(PEERS))
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print_rows(run(args.configs, args.full, tuple(args.backends), tuple(args.peers), args.rounds))


if __name__ == "__main__":
    main()
