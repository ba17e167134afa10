"""nffk.o3 against e3nn in one process: spherical harmonics and wigner_3j first-call cost.

    python bench/bench_o3.py [--n 100000] [--threads 1] [--repeat 30]
    python bench/bench_o3.py --accuracy [--w3j-lmax 12]     # max deviations from e3nn instead

Spherical harmonics are timed interleaved (nffk, e3nn, nffk, ...) and the median is
reported, so that load from other processes hits both alike. wigner_3j is timed on a cold
cache in a fresh subprocess per library, after the import (the first call is what a user waits for).
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout without installing

COLD_W3J = """
import time, torch
{imp}
torch.zeros(1) + 1  # warm torch up so that only wigner_3j is timed
t, cpu = time.perf_counter(), time.process_time()
C = wigner_3j({l1}, {l2}, {l3}, dtype=torch.float64)
print(time.perf_counter() - t, time.process_time() - cpu)
"""


def interleaved(fns, repeat):
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, ts in zip(fns, times):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return [statistics.median(ts) for ts in times]


def cold_w3j(imp, l1, l2, l3):
    code = COLD_W3J.format(imp=imp, l1=l1, l2=l2, l3=l3)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, check=True,
                         env=env)
    wall, cpu = out.stdout.strip().splitlines()[-1].split()
    return float(wall), float(cpu)


def accuracy(w3j_lmax):
    """Largest deviation from e3nn: wigner_3j over every triple up to w3j_lmax, SH per degree."""
    import itertools

    import e3nn.o3
    import nffk.o3

    worst, where = 0.0, None
    for l1, l2, l3 in itertools.product(range(w3j_lmax + 1), repeat=3):
        if abs(l1 - l2) <= l3 <= l1 + l2:
            d = (nffk.o3.wigner_3j(l1, l2, l3, dtype=torch.float64)
                 - e3nn.o3.wigner_3j(l1, l2, l3, dtype=torch.float64)).abs().max().item()
            if d > worst:
                worst, where = d, (l1, l2, l3)
    print(f"wigner_3j, all triples l <= {w3j_lmax}: max |nffk - e3nn| = {worst:.2e} at {where}")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(100_000, 3, dtype=torch.float64, generator=gen)
    print("spherical harmonics, 100k random vectors, normalize=True, 'component'; errors / max|Y|.\n"
          "  'ref' = nffk in float64 on the same float32-rounded vectors (shows which float32 result is closer)")
    for l in range(13):
        x64, x32 = x, x.float()
        d64 = (nffk.o3.spherical_harmonics(l, x64, True, "component")
               - e3nn.o3.spherical_harmonics(l, x64, True, normalization="component")).abs().max().item()
        ours = nffk.o3.spherical_harmonics(l, x32, True, "component").double()
        theirs = e3nn.o3.spherical_harmonics(l, x32, True, normalization="component").double()
        ref = nffk.o3.spherical_harmonics(l, x32.double(), True, "component")
        scale = ref.abs().max().item()
        print(f"  l={l:2d}  float64 |nffk-e3nn| {d64 / scale:.1e}   float32 |nffk-e3nn| "
              f"{(ours - theirs).abs().max().item() / scale:.1e}  |nffk-ref| {(ours - ref).abs().max().item() / scale:.1e}"
              f"  |e3nn-ref| {(theirs - ref).abs().max().item() / scale:.1e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--accuracy", action="store_true", help="report deviations from e3nn instead of times")
    parser.add_argument("--w3j-lmax", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.accuracy:
        accuracy(args.w3j_lmax)
        return

    import e3nn.o3
    import nffk.o3

    print(f"torch {torch.__version__}, {args.threads} thread(s), N = {args.n}")
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(args.n, 3, dtype=dtype)
        for ls in (6, list(range(7)), list(range(13))):
            ours, theirs = interleaved([lambda: nffk.o3.spherical_harmonics(ls, x, True, "component"),
                                        lambda: e3nn.o3.spherical_harmonics(ls, x, True, normalization="component")],
                                       args.repeat)
            label = f"l={ls}" if isinstance(ls, int) else f"l=0..{ls[-1]}"
            print(f"SH {str(dtype):14s} {label:8s} nffk {ours * 1e3:7.2f} ms   e3nn {theirs * 1e3:7.2f} ms   "
                  f"e3nn/nffk {theirs / ours:5.2f}")
        # forward + backward (forces go through this)
        xg = x.clone().requires_grad_()

        def fb(fn):
            return lambda: torch.autograd.grad(fn(xg).square().sum(), xg)

        ours, theirs = interleaved([fb(lambda v: nffk.o3.spherical_harmonics(list(range(7)), v, True, "component")),
                                    fb(lambda v: e3nn.o3.spherical_harmonics(list(range(7)), v, True,
                                                                             normalization="component"))],
                                   args.repeat)
        print(f"SH fwd+bwd {str(dtype):14s} l=0..6   nffk {ours * 1e3:7.2f} ms   e3nn {theirs * 1e3:7.2f} ms   "
              f"e3nn/nffk {theirs / ours:5.2f}")

    for triple in ((6, 6, 6), (12, 12, 12)):
        ours = cold_w3j("from nffk.o3 import wigner_3j", *triple)
        theirs = cold_w3j("from e3nn.o3 import wigner_3j", *triple)
        print(f"wigner_3j{triple} first call (wall / cpu): nffk {ours[0] * 1e3:.0f} / {ours[1] * 1e3:.0f} ms   "
              f"e3nn {theirs[0] * 1e3:.0f} / {theirs[1] * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
