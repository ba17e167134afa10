"""`generate_dataset`: QM9 molecules, thermally distorted conformers, GFN2-xTB labels.

Everything is a pure function of the seed and the settings:
  1. molecules: a seeded permutation of the QM9 molecules, the first `num_molecules` kept;
  2. conformers: structure s belongs to molecule s mod M (so molecules get floor or ceil of
     N/M conformers), each drawn from (seed, QM9 index, conformer, attempt) — see `sampling`;
  3. splits: by molecule (`store.assign_splits`), structures grouped by molecule in shards.
Labelling runs in a pool of worker processes (tblite with one thread each) over small chunks.
A shard is written (atomically) as soon as all its chunks are back; a rerun of the same
command skips the shards that exist and redoes the rest, so an interrupted run resumes and
the result is bit-for-bit that of an uninterrupted one.
"""
import math
import multiprocessing
import os
import shutil
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from nffk.data import qm9
from nffk.data.io import atomic_write_json, remove_temp_files
from nffk.data.sampling import SamplerSettings, sample_conformer
from nffk.data.store import (SPLITS, ShardError, finalize, read_meta, read_shard, assign_splits,
                             shard_name, write_shard)
from nffk.data.structure import Structure

DEFAULT_ROOT = "data/qm9-xtb"
# Sized for the main job's budget: ~1 minute of labelling on 2 cores (see README, "Data").
DEFAULT_STRUCTURES = 8192
DEFAULT_CONFORMERS_PER_MOLECULE = 4
MOLECULE_STREAM = 0x30E9  # keeps the molecule choice's random stream apart from the others
CHUNK = 16                # structures per task sent to a worker


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def plan(num_structures: int, num_molecules: int, seed: int, fractions, molecules: qm9.Molecules,
         shard_size: int) -> dict[str, list[list[tuple[int, int]]]]:
    """split -> shards -> (row in `molecules`, conformer) for every structure to generate."""
    rows = np.random.default_rng([MOLECULE_STREAM, seed]).permutation(len(molecules))[:num_molecules]
    conformers = num_structures // num_molecules + (np.arange(num_molecules) < num_structures % num_molecules)
    owner = assign_splits(molecules.index[rows], fractions, seed)
    split_of = {int(m): split for split, ids in owner.items() for m in ids}
    items = {split: [] for split in SPLITS}
    for row, count in zip(rows, conformers):
        items[split_of[int(molecules.index[row])]].extend((int(row), c) for c in range(int(count)))
    return {split: [todo[k:k + shard_size] for k in range(0, len(todo), shard_size)]
            for split, todo in items.items()}


_MOLECULES: qm9.Molecules | None = None  # this process's copy of QM9, for `_label_chunk`


def _start_worker(qm9_cache):
    """Each worker reads the QM9 cache once, so tasks carry only (row, conformer) pairs and
    memory stays small however many structures are asked for. Ctrl-C reaches the whole
    process group; only the parent handles it (and stops the pool)."""
    global _MOLECULES
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _MOLECULES = qm9.load_qm9(qm9_cache)


def _label_chunk(task):
    """Label one chunk. Returns the task id and, per structure, a Conformer or None."""
    task_id, seed, sampler, chunk = task
    settings = SamplerSettings(**sampler)
    out = []
    for row, conformer in chunk:
        numbers, positions = _MOLECULES.get(row)
        out.append(sample_conformer(numbers, positions, seed, int(_MOLECULES.index[row]), conformer, settings))
    return task_id, out


@contextmanager
def _single_threaded_children():
    """Worker processes inherit the environment: one OpenMP/BLAS thread each, since the pool
    already uses every core."""
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({name: "1" for name in names})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _progress(enabled: bool, total: int, done: int):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)
    columns = (TextColumn("[bold]labelling (GFN2-xTB)"), BarColumn(), MofNCompleteColumn(),
               TextColumn("structures"), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    progress = Progress(*columns, disable=not enabled)
    task = progress.add_task("label", total=total, completed=done, rate="")
    return progress, task


def generate_dataset(root=DEFAULT_ROOT, num_structures: int = DEFAULT_STRUCTURES,
                     num_molecules: int | None = None, seed: int = 0,
                     conformers_per_molecule: int = DEFAULT_CONFORMERS_PER_MOLECULE,
                     fractions=(0.8, 0.1, 0.1), sampler: SamplerSettings | None = None,
                     workers: int | None = None, shard_size: int = 1024, overwrite: bool = False,
                     progress: bool = True, qm9_cache=None) -> Path:
    """Generate (or finish generating) the default dataset in `root`; returns `root`.

    num_structures: structures in all splits together (rejected ones are redrawn, so this is
        exact unless a conformer fails `max_attempts` times; the count is in meta.json).
    num_molecules: QM9 molecules to use; default num_structures / conformers_per_molecule.
    workers: labelling processes, default all cores; 1 labels in this process.
    overwrite: delete a dataset that was generated with other settings instead of refusing.
    """
    root = Path(root)
    sampler = (sampler or SamplerSettings()).validate()
    if num_structures < 3:
        raise ValueError(f"num_structures must be >= 3 (one per split), got {num_structures}")
    if conformers_per_molecule < 1:
        raise ValueError(f"conformers_per_molecule must be >= 1, got {conformers_per_molecule}")
    if num_molecules is None:
        num_molecules = max(3, math.ceil(num_structures / conformers_per_molecule))  # one per split at least
    molecules = qm9.load_qm9(qm9_cache)
    if not 3 <= num_molecules <= min(num_structures, len(molecules)):
        raise ValueError(f"num_molecules must lie in [3, min(num_structures, {len(molecules)} QM9 molecules)], "
                         f"got {num_molecules} for {num_structures} structures")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    workers = available_cores() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")

    settings = {
        "source": "QM9 (qm9pack) conformers labelled with GFN2-xTB",
        "generator": "nffk.data.generate_dataset",
        "seed": int(seed),
        "num_structures": int(num_structures),
        "num_molecules": int(num_molecules),
        "split_fractions": [float(f) for f in fractions],
        "sampler": sampler.as_dict(),
        "shard_size": int(shard_size),
        "qm9_molecules_available": len(molecules),
        "labels": f"GFN2-xTB, tblite {_version('tblite')}",
    }
    _prepare_root(root, settings, overwrite)
    if (root / "meta.json").exists():
        return root  # already complete with these settings

    shards = plan(num_structures, num_molecules, seed, fractions, molecules, shard_size)
    todo, done = [], 0
    for split, split_shards in shards.items():
        for k, items in enumerate(split_shards):
            path = root / shard_name(split, k)
            if _shard_complete(path, items, molecules):
                done += len(items)
            else:
                todo.append((path, items))

    # Chunks of every unfinished shard; a shard is written once all its chunks are back.
    tasks, pending = [], {}
    for path, items in todo:
        chunks = [items[k:k + CHUNK] for k in range(0, len(items), CHUNK)]
        pending[path] = {"items": items, "results": [None] * len(chunks), "left": len(chunks)}
        tasks.extend(((str(path), c), int(seed), sampler.as_dict(), chunk) for c, chunk in enumerate(chunks))

    start = time.perf_counter()
    labelled = 0
    bar, bar_task = _progress(progress, num_structures, done)
    try:
        with bar, _pool(workers, len(tasks), molecules, qm9_cache) as pool:
            results = map(_label_chunk, tasks) if pool is None else pool.imap_unordered(_label_chunk, tasks)
            for (path_name, c), conformers in results:
                entry = pending[Path(path_name)]
                entry["results"][c] = conformers
                entry["left"] -= 1
                if entry["left"] == 0:
                    _write_generated_shard(Path(path_name), entry["items"], entry["results"], molecules)
                    del pending[Path(path_name)]
                labelled += len(conformers)
                elapsed = time.perf_counter() - start
                bar.update(bar_task, advance=len(conformers), rate=f"{labelled / max(elapsed, 1e-9):.0f}/s")
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"interrupted: finished shards are kept in {root}; "
                                "rerun the same command to resume") from None
    meta = finalize(root, settings, expected_structures=num_structures)
    if progress:
        elapsed = time.perf_counter() - start
        sizes = ", ".join(f"{s} {meta['splits'][s]['structures']}" for s in SPLITS)
        atoms = sum(meta["splits"][s]["atoms"] for s in SPLITS)
        print(f"{root}: {sizes} structures, {atoms} atoms; labelled {labelled} in {elapsed:.1f} s "
              f"with {workers} worker(s)")
    return root


@contextmanager
def _pool(workers: int, num_tasks: int, molecules: qm9.Molecules, qm9_cache):
    global _MOLECULES
    if workers == 1 or num_tasks <= 1:
        _MOLECULES = molecules  # label in this process
        try:
            yield None
        finally:
            _MOLECULES = None
        return
    with _single_threaded_children():
        # spawn, not fork: the parent may hold torch's thread pools, which do not survive a fork.
        pool = multiprocessing.get_context("spawn").Pool(min(workers, num_tasks), initializer=_start_worker,
                                                         initargs=(qm9_cache,))
    try:
        yield pool
    except BaseException:
        pool.terminate()
        pool.join()
        raise
    pool.close()
    pool.join()


def _prepare_root(root: Path, settings: dict, overwrite: bool) -> None:
    settings_path = root / "settings.json"
    if root.exists() and any(root.iterdir()):
        if settings_path.exists():
            import json
            existing = json.loads(settings_path.read_text())
            if existing != settings:
                if not overwrite:
                    changed = sorted(k for k in set(existing) | set(settings) if existing.get(k) != settings.get(k))
                    raise ValueError(f"{root} holds a dataset generated with other settings (differs in "
                                     f"{changed}); choose another folder or pass overwrite=True (--overwrite)")
                shutil.rmtree(root)
        elif not overwrite:
            raise ValueError(f"{root} exists and is not an nffk dataset being generated; "
                             "choose another folder or pass overwrite=True (--overwrite)")
        else:
            shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    remove_temp_files(root)
    if (root / "meta.json").exists():
        try:
            read_meta(root)
            return
        except Exception:  # noqa: BLE001 - a damaged meta.json is recomputed from the shards
            (root / "meta.json").unlink()
    if not settings_path.exists():
        atomic_write_json(settings_path, settings)


def _shard_complete(path: Path, items, molecules: qm9.Molecules) -> bool:
    """A shard counts as done if it reads back and holds the planned structures."""
    if not path.exists():
        return False
    try:
        arrays = read_shard(path)
    except ShardError:
        return False
    if "conformer" not in arrays:
        return False
    planned = {(int(molecules.index[row]), conformer) for row, conformer in items}
    stored = set(zip(arrays["molecule"].tolist(), arrays["conformer"].tolist()))
    return stored <= planned  # fewer only when a conformer failed every attempt


def _write_generated_shard(path: Path, items, chunk_results, molecules: qm9.Molecules) -> None:
    conformers = [c for chunk in chunk_results for c in chunk]
    structures, conformer_ids, temperatures, rejected = [], [], [], []
    for (row, conformer_id), conformer in zip(items, conformers):
        if conformer is None:
            continue
        numbers, _ = molecules.get(row)
        structures.append(Structure(numbers=numbers, positions=conformer.positions, energy=conformer.energy,
                                    forces=conformer.forces, molecule=int(molecules.index[row])))
        conformer_ids.append(conformer_id)
        temperatures.append(conformer.temperature)
        rejected.append(conformer.rejected)
    if not structures:
        raise RuntimeError(f"every structure of {path.name} failed GFN2-xTB {SamplerSettings().max_attempts} times")
    write_shard(path, structures, extras={
        "conformer": np.array(conformer_ids, dtype=np.int64),
        "temperature": np.array(temperatures, dtype=np.float32),
        "rejected": np.array(rejected, dtype=np.int64),
    })
