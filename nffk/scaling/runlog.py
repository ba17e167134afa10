"""A run's files on disk: `metrics.jsonl` (one JSON record per validation point) and `run.json`.

Everything here is written so that a process killed at any instant leaves readable files:
JSON documents are replaced atomically (write a temporary file, fsync, rename), and metric
records are appended one whole line at a time; a torn last line (the only damage a kill can
do to an append-only file) is ignored when reading and cut off before the next append.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

from nffk._files import atomic_file

METRICS_FILE = "metrics.jsonl"
RUN_FILE = "run.json"
CHECKPOINT_FILE = "checkpoint.pt"

# field -> accepted Python types. "lmax" may be null (architectures without an irrep order).
RECORD_FIELDS = {
    "run": (str,),
    "arch": (str,),
    "width": (int,),
    "lmax": (int, type(None)),
    "step": (int,),
    "params": (int,),
    "atoms_seen": (int,),
    "flops": (int, float),
    "wall": (int, float),
    "val_loss": (int, float),
    "train_loss": (int, float),
}


def validate_record(record: dict) -> dict:
    """Check one metrics record against the schema; returns it, raises ValueError naming the field."""
    if not isinstance(record, dict):
        raise ValueError(f"a metrics record must be a dict, got {type(record).__name__}")
    for name, types in RECORD_FIELDS.items():
        if name not in record:
            raise ValueError(f"metrics record is missing the field {name!r} (fields: {sorted(record)})")
        value = record[name]
        # bool is an int subclass; a True "width" is a bug, not a width.
        if isinstance(value, bool) or not isinstance(value, types):
            expected = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise ValueError(f"metrics field {name!r} must be {expected}, got {value!r}")
    for name in ("width", "step", "params", "atoms_seen"):
        if record[name] < 0:
            raise ValueError(f"metrics field {name!r} must be >= 0, got {record[name]}")
    return record


def _json_safe(value):
    """NaN and infinities are not JSON; they become null so that every file is standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _json_safe(value.item())
    return value


def dumps(value, **kwargs) -> str:
    """JSON text with non-finite floats written as null (strict JSON, loads anywhere)."""
    return json.dumps(_json_safe(value), allow_nan=False, **kwargs)


def atomic_write_text(path, text: str, durable: bool = True) -> None:
    """Replace `path` with `text` so that readers see the old or the new file, never a mix.
    durable: fsync before the rename, so the new file also survives a machine crash."""
    with atomic_file(path, "w", durable) as handle:
        handle.write(text)


def atomic_write_json(path, value, durable: bool = True) -> None:
    atomic_write_text(path, dumps(value, indent=2, sort_keys=False) + "\n", durable)


def read_json(path):
    with open(path) as handle:
        return json.load(handle)


def read_metrics(path, strict: bool = False) -> list[dict]:
    """Records of a metrics.jsonl file, in file order.

    A torn last line (the process was killed while writing it) is skipped silently. Other lines
    that are not valid records are skipped with a warning, or raise ValueError if `strict`.
    """
    path = Path(path)
    if not path.exists():
        return []
    records = []
    with open(path) as handle:
        lines = handle.read().split("\n")
    # Text after the last newline is either a record written without a newline or a torn line
    # (killed mid-write); it is kept only if it parses.
    complete, tail = lines[:-1], lines[-1]
    tail_record = _parse_tail(tail)
    bad = []
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            records.append(validate_record(json.loads(line)))
        except (ValueError, json.JSONDecodeError) as err:
            bad.append(f"line {number}: {err}")
    if tail_record is not None:
        records.append(tail_record)
    if bad:
        message = f"{path}: skipped {len(bad)} malformed metrics line(s): " + "; ".join(bad[:3])
        if strict:
            raise ValueError(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    return records


def _parse_tail(text: str):
    if not text.strip():
        return None
    try:
        return validate_record(json.loads(text))
    except (ValueError, json.JSONDecodeError):
        return None


class MetricsLog:
    """Append-only writer of one run's metrics.jsonl, for the training loop.

    On opening it cuts a torn last line left by a killed process. `rewind(step)` drops records
    logged after the step a resumed run restarts from, so a resumed run does not log a step twice.
    """

    def __init__(self, run_dir, durable: bool = True):
        self.path = Path(run_dir) / METRICS_FILE
        self.durable = durable  # fsync each record (survives a machine crash, not only a killed process)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._cut_torn_line()

    def _cut_torn_line(self) -> None:
        if not self.path.exists():
            return
        text = self.path.read_text()
        if text and not text.endswith("\n"):
            head, _, tail = text.rpartition("\n")
            head = head + "\n" if head else ""
            atomic_write_text(self.path, head + (tail + "\n" if _parse_tail(tail) else ""), self.durable)

    def records(self) -> list[dict]:
        return read_metrics(self.path)

    def last_step(self) -> int | None:
        records = self.records()
        return records[-1]["step"] if records else None

    def append(self, record: dict) -> None:
        line = dumps(validate_record(dict(record))) + "\n"
        with open(self.path, "a") as handle:
            handle.write(line)
            if self.durable:
                handle.flush()
                os.fsync(handle.fileno())

    def rewind(self, step: int) -> int:
        """Drop the records with a step greater than `step`; returns how many were dropped."""
        records = self.records()
        keep = [r for r in records if r["step"] <= step]
        if len(keep) != len(records):
            atomic_write_text(self.path, "".join(dumps(r) + "\n" for r in keep), self.durable)
        return len(records) - len(keep)
