"""Throughput of `nffk data generate`: structures/s and atoms/s of GFN2-xTB labelling.

    python bench/data_generation.py --structures 2048 --workers 1 2

Reports wall time and CPU time (this process + its workers); on a shared machine the CPU time
per structure is the steadier number (wall ~ CPU / cores when the cores are free).
"""
import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

from nffk.data import generate_dataset, load_dataset


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--structures", type=int, default=2048)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    generate_dataset(Path(tempfile.mkdtemp()) / "warm", num_structures=3, workers=1, progress=False)  # QM9 cache
    for workers in args.workers:
        root = Path(tempfile.mkdtemp()) / "ds"
        wall, cpu = time.perf_counter(), cpu_seconds()
        generate_dataset(root, num_structures=args.structures, seed=args.seed, workers=workers, progress=False)
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
        atoms = sum(load_dataset(root, split).total_atoms for split in ("train", "val", "test"))
        print(f"workers={workers}: {args.structures} structures, {atoms} atoms in {wall:.1f} s wall "
              f"({args.structures / wall:.0f} structures/s, {atoms / wall:.0f} atoms/s); "
              f"CPU {cpu:.1f} s = {1e3 * cpu / args.structures:.2f} ms/structure")
        shutil.rmtree(root.parent)


if __name__ == "__main__":
    main()
