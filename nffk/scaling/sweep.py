"""Sweep bookkeeping: the grid of runs, which are done, who is running what, shards and merging.

Layout of a sweep directory:

    sweep.json                 the grid (every run's spec, in order), metadata, stage timings
    runs/<run_id>/run.json     spec, status (running / done / failed / interrupted), attempts
    runs/<run_id>/metrics.jsonl, checkpoint.pt   written by the training function

`Sweep.run(train_fn)` calls `train_fn(spec, run_dir)` for every run not yet done. A run is
owned by the process holding an exclusive `flock` on `runs/<run_id>/.lock`; the kernel drops
the lock when the process dies, however it dies, so several processes (here, or on machines
sharing a POSIX file system) can work through one sweep without running a run twice, and a
run whose owner was killed shows up as "interrupted" and is handed to `train_fn` again, which
resumes from its checkpoint. Status files are replaced atomically, so they are never torn.

For machines without a shared file system, `--shard k/n` gives each machine a fixed, disjoint
part of the grid in its own directory and `merge` combines the directories afterwards.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX (Windows): specs, shards and merge work, running a sweep does not
    fcntl = None

from nffk.scaling.points import RUNS_DIR, SWEEP_FILE, arch_label
from nffk.scaling.runlog import METRICS_FILE, RUN_FILE, atomic_write_json, read_json, read_metrics

LOCK_FILE = ".lock"
SWEEP_LOCK_FILE = ".sweep.lock"
SWEEP_VERSION = 1
STATUSES = ("pending", "running", "interrupted", "failed", "done")
_NAME = re.compile(r"^[A-Za-z0-9_.+]+$")


@dataclass
class RunSpec:
    """One training run of a sweep. `data_budget`: atoms to train on (None: one pass over the
    whole training set); `options`: any further settings the training code reads."""

    arch: str
    width: int
    lmax: int | None = None
    data_budget: int | None = None
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.arch, str) or not _NAME.match(self.arch):
            raise ValueError(f"arch must be a non-empty name of letters, digits, '_', '.', '+', got {self.arch!r}")
        if isinstance(self.width, bool) or not isinstance(self.width, int) or self.width <= 0:
            raise ValueError(f"width must be an int > 0, got {self.width!r}")
        if self.lmax is not None and (isinstance(self.lmax, bool) or not isinstance(self.lmax, int)
                                      or self.lmax < 0):
            raise ValueError(f"lmax must be None or an int >= 0, got {self.lmax!r}")
        if self.data_budget is not None and (isinstance(self.data_budget, bool)
                                             or not isinstance(self.data_budget, int) or self.data_budget <= 0):
            raise ValueError(f"data_budget must be None or an int > 0 (atoms), got {self.data_budget!r}")
        if not isinstance(self.options, dict):
            raise ValueError(f"options must be a dict, got {type(self.options).__name__}")
        try:
            json.dumps(self.options, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ValueError(f"options must be JSON-serialisable ({err})") from None

    @property
    def label(self) -> str:
        return arch_label(self.arch, self.lmax)

    @property
    def run_id(self) -> str:
        """Readable and stable: the same spec always gets the same id, different specs never share one."""
        canonical = json.dumps(self._fields(), sort_keys=True, allow_nan=False)
        digest = hashlib.sha1(canonical.encode()).hexdigest()[:8]
        budget = "" if self.data_budget is None else f"-d{self.data_budget:.0e}".replace("+", "")
        return f"{self.label}-w{self.width}{budget}-{digest}"

    def _fields(self) -> dict:
        return {"arch": self.arch, "width": self.width, "lmax": self.lmax, "data_budget": self.data_budget,
                "options": self.options}

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, **self._fields()}

    @classmethod
    def from_dict(cls, data: dict) -> "RunSpec":
        spec = cls(**{k: data[k] for k in ("arch", "width", "lmax", "data_budget", "options") if k in data})
        if "run_id" in data and data["run_id"] != spec.run_id:
            raise ValueError(f"run id {data['run_id']!r} does not match its spec (expected {spec.run_id!r})")
        return spec


def make_grid(architectures, widths=None, data_budgets=(None,), options=None) -> list[RunSpec]:
    """Run specs for architectures x data budgets x widths, in that nesting order.

    architectures: names ("MPNN"), (name, lmax) pairs, or dicts {"arch", "lmax", "widths", "options"}
    (per-architecture widths and options override the shared ones). widths: ints, or a dict
    {label: [ints]} keyed by architecture label ("Equivariant-lmax2").
    """
    specs = []
    for entry in architectures:
        if isinstance(entry, str):
            entry = {"arch": entry}
        elif isinstance(entry, (tuple, list)):
            entry = {"arch": entry[0], "lmax": entry[1]}
        elif not isinstance(entry, dict):
            raise ValueError(f"an architecture must be a name, (name, lmax) or dict, got {entry!r}")
        arch, lmax = entry.get("arch"), entry.get("lmax")
        label = arch_label(arch, lmax) if isinstance(arch, str) else arch
        arch_widths = entry.get("widths")
        if arch_widths is None:
            arch_widths = widths.get(label) if isinstance(widths, dict) else widths
        if not arch_widths:
            raise ValueError(f"no widths given for architecture {label!r}")
        arch_options = {**(options or {}), **entry.get("options", {})}
        for budget in data_budgets:
            for width in arch_widths:
                specs.append(RunSpec(arch=arch, width=width, lmax=lmax, data_budget=budget, options=arch_options))
    ids = [s.run_id for s in specs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"the grid lists the same run more than once: {duplicates}")
    return specs


def parse_shard(text: str) -> tuple[int, int]:
    """'k/n' (1 <= k <= n) -> (k, n)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise ValueError(f"shard must look like 'k/n' (e.g. '2/4'), got {text!r}")
    k, n = int(match.group(1)), int(match.group(2))
    if not 1 <= k <= n:
        raise ValueError(f"shard {text!r}: need 1 <= k <= n")
    return k, n


def shard_specs(specs, k: int, n: int) -> list:
    """Shard k of n (1-based): every n-th run of the grid starting at the k-th. Deterministic,
    disjoint, covers every run, and spreads each architecture's widths over the shards."""
    if not (isinstance(k, int) and isinstance(n, int) and 1 <= k <= n):
        raise ValueError(f"shard needs 1 <= k <= n, got k={k!r}, n={n!r}")
    return list(specs)[k - 1::n]


def _require_flock():
    if fcntl is None:
        raise RuntimeError("sweep directories need POSIX file locks (fcntl.flock): run sweeps on Linux or macOS")


class _RunLock:
    """Exclusive, non-blocking ownership of a run (released by the kernel if the process dies)."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = None

    def acquire(self) -> bool:
        _require_flock()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
        self.fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
        return True

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class Sweep:
    """A sweep directory: create it with a grid (`specs`), or open an existing one without."""

    def __init__(self, root, specs=None, meta: dict | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / RUNS_DIR).mkdir(exist_ok=True)
        with self._sweep_lock():
            path = self.root / SWEEP_FILE
            if path.exists():
                doc = read_json(path)
                existing = [d["run_id"] for d in doc["runs"]]
                if specs is not None:
                    given = [s.run_id for s in specs]
                    if given != existing:
                        new, gone = set(given) - set(existing), set(existing) - set(given)
                        raise ValueError(
                            f"{self.root} already holds a sweep whose grid differs from the one given "
                            f"({len(new)} run(s) not in it, {len(gone)} missing, or a different order); "
                            "use a new directory, or open this one without a grid")
                if meta:
                    doc["meta"] = {**doc.get("meta", {}), **meta}
                    atomic_write_json(path, doc)
            else:
                if specs is None:
                    raise ValueError(f"{self.root} has no {SWEEP_FILE}: give the grid (specs) to create the sweep")
                specs = list(specs)
                if not specs:
                    raise ValueError("specs is empty: a sweep needs at least one run")
                ids = [s.run_id for s in specs]
                if len(set(ids)) != len(ids):
                    raise ValueError("specs lists the same run more than once")
                doc = {"version": SWEEP_VERSION, "created": _now(), "runs": [s.to_dict() for s in specs],
                       "meta": dict(meta or {}), "timings": {}}
                atomic_write_json(path, doc)
        self.specs = [RunSpec.from_dict(d) for d in doc["runs"]]
        self._by_id = {s.run_id: s for s in self.specs}

    # -- sweep-level metadata -------------------------------------------------------------

    @contextmanager
    def _sweep_lock(self):
        """Serialises read-modify-write of sweep.json between processes."""
        _require_flock()
        fd = os.open(self.root / SWEEP_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def document(self) -> dict:
        return read_json(self.root / SWEEP_FILE)

    def record_timing(self, stage: str, seconds: float) -> None:
        """Add `seconds` to the time spent in `stage` (e.g. "dataset"); summed over processes and restarts."""
        if not (isinstance(seconds, (int, float)) and seconds >= 0):
            raise ValueError(f"seconds must be a number >= 0, got {seconds!r}")
        with self._sweep_lock():
            doc = self.document()
            timings = doc.setdefault("timings", {})
            timings[stage] = float(timings.get(stage, 0.0)) + float(seconds)
            atomic_write_json(self.root / SWEEP_FILE, doc)

    # -- runs ---------------------------------------------------------------------------

    def run_dir(self, run_id: str) -> Path:
        if run_id not in self._by_id:
            raise ValueError(f"run {run_id!r} is not part of this sweep")
        return self.root / RUNS_DIR / run_id

    def _run_meta(self, run_id: str) -> dict:
        path = self.run_dir(run_id) / RUN_FILE
        return read_json(path) if path.exists() else {}

    def _lock(self, run_id: str) -> _RunLock:
        run_dir = self.run_dir(run_id)
        run_dir.mkdir(exist_ok=True)
        return _RunLock(run_dir / LOCK_FILE)

    def _lock_held(self, run_id: str) -> bool:
        if not (self.run_dir(run_id) / LOCK_FILE).exists():
            return False
        lock = self._lock(run_id)
        if lock.acquire():
            lock.release()
            return False
        return True

    def status(self, run_id: str) -> str:
        """pending (never started), running (owned by a live process), interrupted (its owner
        died), failed (train_fn raised), or done."""
        status = self._run_meta(run_id).get("status", "pending")
        if status == "running" and not self._lock_held(run_id):
            return "interrupted"
        return status

    def statuses(self) -> dict:
        return {s.run_id: self.status(s.run_id) for s in self.specs}

    def summary(self) -> dict:
        counts = dict.fromkeys(STATUSES, 0)
        for status in self.statuses().values():
            counts[status] = counts.get(status, 0) + 1
        return counts

    def shard(self, k: int, n: int) -> list[RunSpec]:
        return shard_specs(self.specs, k, n)

    def run(self, train_fn, *, shard=None, retry_failed: bool = True, on_error: str = "raise",
            workers: int = 1, verbose: bool = True, order=None) -> list[str]:
        """Call `train_fn(spec, run_dir)` for every run of this sweep (or of `shard`, 'k/n' or
        (k, n)) that is not done and not owned by another process; returns the run ids finished here.

        train_fn trains (resuming from its checkpoint in run_dir if there is one), writes
        metrics.jsonl, and may return a JSON-able dict stored as run.json's "result".
        on_error: "raise" (stop at the first failure) or "continue" (mark it failed, go on).
        workers > 1 starts that many processes (train_fn must be picklable) over the same runs.
        order: run ids in the order to start them (e.g. the longest first, so that parallel
        workers finish together); runs it leaves out follow in grid order. Default: grid order.
        """
        if on_error not in ("raise", "continue"):
            raise ValueError(f"on_error must be 'raise' or 'continue', got {on_error!r}")
        if not callable(train_fn):
            raise ValueError("train_fn must be callable as train_fn(spec, run_dir)")
        if isinstance(shard, str):
            shard = parse_shard(shard)
        specs = self.shard(*shard) if shard is not None else self.specs
        if order is not None:
            rank = {run_id: k for k, run_id in enumerate(order)}
            specs = sorted(specs, key=lambda s: rank.get(s.run_id, len(rank)))  # stable: grid order otherwise
        if workers > 1:
            return self._run_processes(train_fn, shard, retry_failed, on_error, workers, verbose, order)
        console = _console() if verbose else None
        finished = []
        for index, spec in enumerate(specs, start=1):
            if self._run_one(spec, train_fn, retry_failed, on_error, console, f"[{index}/{len(specs)}]"):
                finished.append(spec.run_id)
        return finished

    def _run_one(self, spec: RunSpec, train_fn, retry_failed, on_error, console, position) -> bool:
        run_id = spec.run_id
        status = self.status(run_id)
        if status in ("done", "running") or (status == "failed" and not retry_failed):
            return False
        lock = self._lock(run_id)
        if not lock.acquire():
            return False  # another process took it a moment ago
        try:
            meta = self._run_meta(run_id)  # re-read: it may have finished before we got the lock
            if meta.get("status") == "done" or (meta.get("status") == "failed" and not retry_failed):
                return False
            run_dir = self.run_dir(run_id)
            history = list(meta.get("history", []))
            attempt = {"host": socket.gethostname(), "pid": os.getpid(), "started": _now()}
            resumed = bool(meta)
            base = {"run_id": run_id, "spec": spec.to_dict(), "attempts": len(history) + 1}
            atomic_write_json(run_dir / RUN_FILE, {**base, "status": "running", **attempt, "history": history})
            if console:
                console.print(f"{position} {'resuming' if resumed else 'starting'} {run_id}")
            start = time.perf_counter()
            try:
                result = train_fn(spec, run_dir)
            except Exception as err:  # the run failed: record why, then stop or go on
                attempt.update(ended=_now(), seconds=time.perf_counter() - start, status="failed",
                               error=f"{type(err).__name__}: {err}")
                atomic_write_json(run_dir / RUN_FILE, {**base, "status": "failed", "error": attempt["error"],
                                                       "traceback": traceback.format_exc(limit=20),
                                                       "history": history + [attempt]})
                if console:
                    console.print(f"{position} [red]failed[/red] {run_id}: {attempt['error']}")
                if on_error == "raise":
                    raise
                return False
            except BaseException:  # Ctrl-C, SystemExit: leave it resumable
                attempt.update(ended=_now(), seconds=time.perf_counter() - start, status="interrupted")
                atomic_write_json(run_dir / RUN_FILE, {**base, "status": "interrupted",
                                                       "history": history + [attempt]})
                raise
            seconds = time.perf_counter() - start
            attempt.update(ended=_now(), seconds=seconds, status="done")
            done = {**base, "status": "done", "finished": attempt["ended"], "history": history + [attempt],
                    "seconds": sum(a.get("seconds", 0.0) for a in history + [attempt])}
            if isinstance(result, dict):
                done["result"] = result
            atomic_write_json(run_dir / RUN_FILE, done)
            if console:
                console.print(f"{position} done {run_id} in {seconds:.1f} s")
            return True
        finally:
            lock.release()

    def _run_processes(self, train_fn, shard, retry_failed, on_error, workers, verbose, order=None) -> list[str]:
        import multiprocessing

        before = {s.run_id for s in self.specs if self.status(s.run_id) == "done"}
        context = multiprocessing.get_context("spawn")  # fork after torch started threads can hang
        processes = [context.Process(target=_worker, args=(str(self.root), train_fn, shard, retry_failed,
                                                           on_error, verbose, order)) for _ in range(workers)]
        for process in processes:
            process.start()
        for process in processes:
            process.join()
        bad = [p.exitcode for p in processes if p.exitcode != 0]
        if bad:
            raise RuntimeError(f"{len(bad)} of {workers} sweep worker process(es) failed (exit codes {bad}); "
                               "see their output and the runs' run.json")
        return [s.run_id for s in self.specs if s.run_id not in before and self.status(s.run_id) == "done"]


def _worker(root, train_fn, shard, retry_failed, on_error, verbose, order=None):
    Sweep(root).run(train_fn, shard=shard, retry_failed=retry_failed, on_error=on_error, verbose=verbose,
                    order=order)


def _console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


# ------------------------------------------------------------------------------------------
# merging shard directories


def _metrics_bytes(run_dir: Path) -> bytes:
    path = run_dir / METRICS_FILE
    return path.read_bytes() if path.exists() else b""


def merge(dirs, out, include_checkpoints: bool = True) -> Path:
    """Combine sweep directories (shards, or copies from several machines) into `out` (new).

    Each run is taken from the directory where it is done; a run done in several directories
    must have identical metrics there (otherwise: ValueError listing the conflicts, nothing
    written). A run done nowhere is taken from the copy with the most validation records, so
    it can be resumed from `out`. `out` appears complete or not at all.
    """
    dirs = [Path(d) for d in dirs]
    out = Path(out)
    if not dirs:
        raise ValueError("merge needs at least one sweep directory")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"merge output {out} already exists and is not empty")
    if any(out.resolve() == d.resolve() for d in dirs):
        raise ValueError("merge output must differ from the inputs")
    docs, specs = [], {}
    for d in dirs:
        if not (d / SWEEP_FILE).exists():
            raise ValueError(f"{d} is not a sweep directory (no {SWEEP_FILE})")
        doc = read_json(d / SWEEP_FILE)
        docs.append(doc)
        for spec in doc["runs"]:
            previous = specs.setdefault(spec["run_id"], spec)
            if previous != spec:
                raise ValueError(f"run {spec['run_id']} has different specs in different directories")
    chosen, conflicts, notes = {}, [], []
    for run_id in specs:
        copies = [d / RUNS_DIR / run_id for d in dirs if (d / RUNS_DIR / run_id).is_dir()]
        copies = [c for c in copies if (c / RUN_FILE).exists() or (c / METRICS_FILE).exists()]
        if not copies:
            continue
        done = [c for c in copies if (c / RUN_FILE).exists() and read_json(c / RUN_FILE).get("status") == "done"]
        if done:
            if len({_metrics_bytes(c) for c in done}) > 1:
                where = ", ".join(str(c.parent.parent) for c in done)
                conflicts.append(f"{run_id} (done with different metrics in {where})")
                continue
            chosen[run_id] = done[0]
        else:
            chosen[run_id] = max(copies, key=lambda c: len(read_metrics(c / METRICS_FILE)))
            if len(copies) > 1:
                notes.append(f"{run_id}: unfinished in {len(copies)} directories; kept {chosen[run_id]}")
    if conflicts:
        raise ValueError("refusing to merge conflicting duplicate runs: " + "; ".join(conflicts))
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.merge-"))
    try:
        (staging / RUNS_DIR).mkdir()
        skip = {LOCK_FILE} | (set() if include_checkpoints else {"checkpoint.pt"})
        for run_id, source in chosen.items():
            shutil.copytree(source, staging / RUNS_DIR / run_id,
                            ignore=lambda _dir, names: [n for n in names if n in skip])
        timings = {}
        for doc in docs:
            for stage, seconds in doc.get("timings", {}).items():
                timings[stage] = timings.get(stage, 0.0) + float(seconds)
        merged = {"version": SWEEP_VERSION, "created": _now(), "runs": list(specs.values()),
                  "meta": docs[0].get("meta", {}), "timings": timings,
                  "merged_from": [{"path": str(d), "timings": doc.get("timings", {})}
                                  for d, doc in zip(dirs, docs)],
                  "merge_notes": notes}
        atomic_write_json(staging / SWEEP_FILE, merged)
        if out.exists():
            out.rmdir()
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
