"""Loading logged training points (N, D, C, wall, loss) from one or many sweep directories.

A sweep directory holds `sweep.json` and `runs/<run_id>/{run.json, metrics.jsonl}`. Each
validation record becomes one point. Per run, the first `drop_fraction` of the training steps
is dropped (early-training transients do not follow the laws; the study drops 1-10 %), a step
logged twice (a resumed run) keeps its last record, and points are sorted by step.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nffk.scaling.runlog import METRICS_FILE, RUN_FILE, read_json, read_metrics

SWEEP_FILE = "sweep.json"
RUNS_DIR = "runs"

NUMERIC_COLUMNS = ("width", "step", "params", "atoms_seen", "flops", "wall", "val_loss", "train_loss")
TEXT_COLUMNS = ("run", "arch", "label")
COLUMNS = TEXT_COLUMNS + ("lmax",) + NUMERIC_COLUMNS


def arch_label(arch: str, lmax) -> str:
    """The name an architecture goes by in fits and reports: 'MPNN', 'Equivariant-lmax2'."""
    return arch if lmax is None else f"{arch}-lmax{int(lmax)}"


class Points:
    """Column-wise table of validation points: `points.flops`, `points.val_loss`, ... are numpy arrays."""

    def __init__(self, columns: dict):
        missing = [c for c in COLUMNS if c not in columns]
        if missing:
            raise ValueError(f"Points needs the columns {missing}")
        lengths = {len(columns[c]) for c in COLUMNS}
        if len(lengths) > 1:
            raise ValueError(f"Points columns have different lengths: {sorted(lengths)}")
        self._columns = {}
        for name in COLUMNS:
            values = columns[name]
            if name in NUMERIC_COLUMNS:
                self._columns[name] = np.asarray(values, dtype=np.float64)
            else:
                self._columns[name] = np.asarray(values, dtype=object)

    @classmethod
    def from_records(cls, records) -> "Points":
        records = list(records)
        columns = {name: [r.get(name) for r in records] for name in COLUMNS if name != "label"}
        columns["label"] = [arch_label(r["arch"], r.get("lmax")) for r in records]
        for name in NUMERIC_COLUMNS:
            columns[name] = [np.nan if v is None else v for v in columns[name]]
        return cls(columns)

    def __getattr__(self, name):
        columns = self.__dict__.get("_columns", {})
        if name in columns:
            return columns[name]
        raise AttributeError(name)

    def __len__(self) -> int:
        return len(self._columns["run"])

    def subset(self, mask) -> "Points":
        return Points({name: values[mask] for name, values in self._columns.items()})

    def group_by(self, column: str = "label") -> dict:
        """{value: Points} in order of first appearance."""
        values = self._columns[column]
        order = list(dict.fromkeys(values.tolist()))
        return {value: self.subset(values == value) for value in order}

    def run_ids(self) -> list[str]:
        return list(dict.fromkeys(self._columns["run"].tolist()))

    def to_records(self) -> list[dict]:
        out = []
        for i in range(len(self)):
            record = {}
            for name in COLUMNS:
                value = self._columns[name][i]
                if name in NUMERIC_COLUMNS:
                    value = float(value)
                    if name in ("width", "step", "params", "atoms_seen") and np.isfinite(value):
                        value = int(value)
                record[name] = value
            out.append(record)
        return out


@dataclass
class RunInfo:
    """What the loader knows about one run."""

    run_id: str
    sweep_dir: str
    status: str  # run.json's status ("done", "running", "failed", ...) or "unknown" without run.json
    spec: dict
    label: str
    n_records: int  # validation records in metrics.jsonl (after de-duplicating steps)
    n_points: int  # records kept after dropping the first steps
    total_steps: int
    seconds: float | None = None  # training time over all attempts (run.json), if recorded


@dataclass
class SweepData:
    points: Points
    runs: list[RunInfo]
    sweeps: list[dict] = field(default_factory=list)  # each sweep.json (with "path" added)
    warnings: list[str] = field(default_factory=list)


def _total_steps(spec: dict, run_meta: dict, records: list[dict]) -> int:
    """The run's planned length: "steps" or "total_steps" from its spec, options or result,
    else the last step logged."""
    sources = (spec, spec.get("options") or {}, run_meta, run_meta.get("result") or {})
    for source in sources:
        if not isinstance(source, dict):
            continue
        for key in ("steps", "total_steps"):
            if isinstance(source.get(key), int) and source[key] > 0:
                return source[key]
    return max((r["step"] for r in records), default=0)


def _load_run(run_dir: Path, sweep_dir: Path, drop_fraction: float):
    run_meta = read_json(run_dir / RUN_FILE) if (run_dir / RUN_FILE).exists() else {}
    spec = run_meta.get("spec", {}) if isinstance(run_meta.get("spec"), dict) else {}
    by_step = {}
    for record in read_metrics(run_dir / METRICS_FILE):
        by_step[record["step"]] = record  # a step logged twice keeps its last record
    records = [by_step[s] for s in sorted(by_step)]
    total = _total_steps(spec, run_meta, records)
    first_kept = drop_fraction * total
    kept = [r for r in records if r["step"] >= first_kept]
    run_id = run_meta.get("run_id") or (records[0]["run"] if records else run_dir.name)
    if records:
        label = arch_label(records[0]["arch"], records[0].get("lmax"))
    else:
        label = arch_label(spec.get("arch", "?"), spec.get("lmax"))
    info = RunInfo(run_id=run_id, sweep_dir=str(sweep_dir), status=run_meta.get("status", "unknown"),
                   spec=spec, label=label, n_records=len(records), n_points=len(kept), total_steps=total,
                   seconds=run_meta.get("seconds"))
    return info, kept


def load_sweeps(sweep_dirs, drop_fraction: float = 0.05) -> SweepData:
    """Read every run of the given sweep directories.

    A run id found in several directories (shards that were not merged) is read once: a finished
    copy wins over an unfinished one, otherwise the first directory given wins.
    """
    if isinstance(sweep_dirs, (str, Path)):
        sweep_dirs = [sweep_dirs]
    if not 0.0 <= drop_fraction < 1.0:
        raise ValueError(f"drop_fraction must be in [0, 1), got {drop_fraction}")
    if not sweep_dirs:
        raise ValueError("sweep_dirs is empty: give at least one sweep directory")
    chosen: dict[str, tuple[RunInfo, list]] = {}
    sweeps, notes = [], []
    for sweep_dir in map(Path, sweep_dirs):
        if not sweep_dir.is_dir():
            raise ValueError(f"sweep directory {str(sweep_dir)!r} does not exist")
        if not (sweep_dir / SWEEP_FILE).exists() and not (sweep_dir / RUNS_DIR).is_dir():
            raise ValueError(f"{str(sweep_dir)!r} is not a sweep directory: it has neither "
                             f"{SWEEP_FILE} nor a {RUNS_DIR}/ folder")
        grid_order = []
        if (sweep_dir / SWEEP_FILE).exists():
            meta = read_json(sweep_dir / SWEEP_FILE)
            meta["path"] = str(sweep_dir)
            sweeps.append(meta)
            grid_order = [run.get("run_id") for run in meta.get("runs", [])]
        runs_root = sweep_dir / RUNS_DIR
        run_dirs = [p for p in runs_root.iterdir() if p.is_dir()] if runs_root.is_dir() else []
        # the grid's order (architectures as the sweep lists them), then any other folders by name
        rank = {run_id: i for i, run_id in enumerate(grid_order)}
        run_dirs.sort(key=lambda p: (rank.get(p.name, len(rank)), p.name))
        for run_dir in run_dirs:
            info, kept = _load_run(run_dir, sweep_dir, drop_fraction)
            if info.n_records == 0 and info.status == "unknown":
                continue  # an empty folder, nothing to read
            previous = chosen.get(info.run_id)
            if previous is not None:
                keep_new = info.status == "done" and previous[0].status != "done"
                notes.append(f"run {info.run_id} found in {previous[0].sweep_dir} and {info.sweep_dir}; "
                             f"using {(info if keep_new else previous[0]).sweep_dir}")
                if not keep_new:
                    continue
            chosen[info.run_id] = (info, kept)
    records = [r for _, kept in chosen.values() for r in kept]
    for note in notes:
        warnings.warn(note, RuntimeWarning, stacklevel=2)
    return SweepData(points=Points.from_records(records), runs=[info for info, _ in chosen.values()],
                     sweeps=sweeps, warnings=notes)


def load_points(sweep_dirs, drop_fraction: float = 0.05) -> Points:
    """All validation points of the given sweep directories (see `load_sweeps`)."""
    return load_sweeps(sweep_dirs, drop_fraction).points
