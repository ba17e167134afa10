"""Neighbour-list benchmark: nffk against vesin, matscipy and ase, ratios in one process.

    python bench/bench_neighbor_list.py [--repeats 15] [--threads 1 2] [--configs cu4000 molecules256]

Every contender computes the full list (i, j, S, d) from its native input (torch tensors for
nffk, numpy arrays for the others). Contenders run interleaved, once per round in a random
(seeded) order after a warm-up, and the median wall time is reported. For the batch of
molecules the peers are called once per system and their results concatenated with index
offsets (what a user must do to get a batch).
`floor ms` is the time to write the output bytes at the copy bandwidth measured in this
process (48 bytes per pair: two int64 indices, three int64 shifts, one float64 distance).
Reusable: `run(...)` returns one dict per (config, threads).

OpenMP threads wait passively (OMP_WAIT_POLICY=PASSIVE, unless set already) when this file is
imported before torch: on a machine shared with other jobs, libgomp's default spin-waiting
makes every multi-threaded OpenMP code (nffk's and vesin's alike) several times slower.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # only effective if torch is not loaded yet

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, ROOT)

# The systems are shared with `nffk bench --ops nlist`.
from nffk.bench.cases.neighbor_list import bulk_copper, qm9_molecules  # noqa: E402
from nffk.ops import neighbor_list  # noqa: E402

CONFIGS = {
    "cu4000": dict(title="Cu fcc 4000 atoms, pbc", kind="bulk", repeat=10, cutoff=5.0),
    "cu16384": dict(title="Cu fcc 16384 atoms, pbc", kind="bulk", repeat=16, cutoff=5.0),
    "molecules256": dict(title="256 QM9 molecules, open", kind="molecules", count=256, cutoff=5.0),
}
PEERS = ("vesin", "matscipy", "ase")
BYTES_PER_PAIR = 48


# ------------------------------------------------------------------------------------ systems
def make_systems(config):
    if config["kind"] == "bulk":
        return bulk_copper(config["repeat"])
    return qm9_molecules(config["count"])


# -------------------------------------------------------------------------------- contenders
def nffk_call(systems, cutoff):
    positions = torch.from_numpy(np.concatenate([s["positions"] for s in systems]))
    if len(systems) == 1:
        s = systems[0]
        cell = torch.from_numpy(s["cell"]) if s["pbc"].any() else None
        pbc = torch.from_numpy(s["pbc"]) if cell is not None else None
        return lambda: neighbor_list(positions, cutoff, cell, pbc, return_distances=True)
    batch = torch.repeat_interleave(torch.arange(len(systems)), torch.tensor([len(s["positions"]) for s in systems]))
    cells = torch.from_numpy(np.stack([s["cell"] for s in systems]))
    pbc = torch.from_numpy(np.stack([s["pbc"] for s in systems]))
    if not bool(pbc.any()):
        cells = pbc = None
    return lambda: neighbor_list(positions, cutoff, cells, pbc, batch=batch, return_distances=True)


def _concatenate(results, sizes):
    """One batch from per-system (i, j, S, d): offset the indices, concatenate."""
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    i = np.concatenate([r[0] + o for r, o in zip(results, offsets)])
    j = np.concatenate([r[1] + o for r, o in zip(results, offsets)])
    return i, j, np.concatenate([r[2] for r in results]), np.concatenate([r[3] for r in results])


def _per_system(one, systems):
    if len(systems) == 1:
        return lambda: one(systems[0])
    sizes = [len(s["positions"]) for s in systems]
    return lambda: _concatenate([one(s) for s in systems], sizes)


def vesin_call(systems, cutoff, threads):
    import vesin

    calculator = vesin.NeighborList(cutoff=cutoff, full_list=True, n_threads=threads)
    return _per_system(lambda s: calculator.compute(s["positions"], s["cell"], s["pbc"], "ijSd"), systems)


def matscipy_call(systems, cutoff, threads):
    from matscipy.neighbours import neighbour_list

    def one(s):
        if s["pbc"].any():
            return neighbour_list("ijSd", positions=s["positions"], cell=s["cell"], pbc=s["pbc"], cutoff=cutoff)
        low, high = s["positions"].min(0), s["positions"].max(0)  # matscipy needs a non-singular box
        box = np.diag(high - low + 2 * cutoff)
        return neighbour_list("ijSd", positions=s["positions"], cell=box, pbc=s["pbc"], cutoff=cutoff,
                              cell_origin=low - cutoff)

    return _per_system(one, systems)


def ase_call(systems, cutoff, threads):
    from ase.neighborlist import primitive_neighbor_list

    return _per_system(lambda s: primitive_neighbor_list("ijSd", s["pbc"], s["cell"], s["positions"], cutoff), systems)


PEER_CALLS = {"vesin": vesin_call, "matscipy": matscipy_call, "ase": ase_call}


def copy_bandwidth(nbytes=256 * 2**20):
    """Bytes per second of a large out-of-place copy (read + write counted once: the floor
    for writing a freshly allocated output)."""
    src = torch.ones(nbytes // 8, dtype=torch.float64)
    dst = torch.empty_like(src)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    return nbytes / min(times)


# --------------------------------------------------------------------------------- measuring
def run(configs=("cu4000", "cu16384", "molecules256"), repeats=15, warmup=2, threads=None, peers=PEERS,
        max_seconds_per_call=2.0, progress=None):
    """Benchmark each config; returns one dict per (config, threads) with medians in ms."""
    threads = threads or [torch.get_num_threads()]
    peers = [p for p in peers if importlib.util.find_spec(p) is not None]
    bandwidth = copy_bandwidth()
    rows = []
    for name in configs:
        config = CONFIGS[name]
        systems = make_systems(config)
        cutoff = config["cutoff"]
        for n_threads in threads:
            previous = torch.get_num_threads()
            torch.set_num_threads(n_threads)
            try:
                calls = {"nffk": nffk_call(systems, cutoff)}
                calls.update({p: PEER_CALLS[p](systems, cutoff, n_threads) for p in peers})
                result = calls["nffk"]()
                pairs = int(result.senders.numel())
                times = {k: [] for k in calls}
                shuffler = random.Random(0)
                for _ in range(warmup):
                    for call in calls.values():
                        call()
                for r in range(repeats):
                    # A fresh random order each round: whoever runs right after a contender pays
                    # for its leftovers (after ase, the next sizeable malloc spends ~3 ms in glibc's
                    # malloc_consolidate), and a fixed rotation put nffk after ase in 3 of 4 rounds.
                    order = list(calls)
                    shuffler.shuffle(order)
                    for key in order:
                        # Slow peers (ase on big systems) stop after 3 samples.
                        if len(times[key]) >= 3 and np.median(times[key]) > max_seconds_per_call:
                            continue
                        start = time.perf_counter()
                        calls[key]()
                        times[key].append(time.perf_counter() - start)
                    if progress:
                        progress()
            finally:
                torch.set_num_threads(previous)
            row = dict(config=name, title=config["title"], atoms=sum(len(s["positions"]) for s in systems),
                       systems=len(systems), cutoff=cutoff, pairs=pairs, threads=n_threads,
                       floor_ms=1e3 * pairs * BYTES_PER_PAIR / bandwidth)
            for key, samples in times.items():
                row[f"{key}_ms"] = 1e3 * float(np.median(samples))
                row[f"{key}_samples"] = len(samples)
            for peer in peers:
                row[f"{peer}_over_nffk"] = row[f"{peer}_ms"] / row["nffk_ms"]
            rows.append(row)
    return rows


def format_table(rows):
    peers = [p for p in PEERS if any(f"{p}_ms" in r for r in rows)]
    header = ["config", "atoms", "pairs", "thr", "floor ms", "nffk ms"] + [f"{p} ms" for p in peers] + \
             [f"{p}/nffk" for p in peers]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["title"], str(r["atoms"]), str(r["pairs"]), str(r["threads"]), f"{r['floor_ms']:.2f}",
                 f"{r['nffk_ms']:.2f}"] + [f"{r[f'{p}_ms']:.2f}" for p in peers] + \
                [f"{r[f'{p}_over_nffk']:.1f}x" for p in peers]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help=f"thread counts to run (default: torch's, now {torch.get_num_threads()})")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    from rich.progress import Progress

    threads = args.threads or [torch.get_num_threads()]
    with Progress(transient=True) as bar:
        task = bar.add_task("neighbour lists", total=len(args.configs) * len(threads) * args.repeats)
        rows = run(args.configs, args.repeats, args.warmup, threads, progress=lambda: bar.advance(task))
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs visible, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY')}; median wall time of {args.repeats} interleaved rounds; "
          "ratio > 1 means nffk is faster")
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)
    return rows


if __name__ == "__main__":
    main()
