"""Run files: record schema, atomic JSON, append-only metrics that survive a killed writer."""
import json
import math

import pytest

from nffk.scaling.runlog import MetricsLog, atomic_write_json, dumps, read_json, read_metrics, validate_record


def record(step, **changes):
    base = {"run": "r", "arch": "MPNN", "width": 8, "lmax": None, "step": step, "params": 100,
            "atoms_seen": 10 * step, "flops": 6e3 * step, "wall": 0.1 * step, "val_loss": 1.0 / (step + 1),
            "train_loss": 1.1 / (step + 1)}
    base.update(changes)
    return base


@pytest.mark.parametrize("field,value,message", [
    ("width", 8.5, "'width' must be int"),
    ("width", True, "'width' must be int"),
    ("lmax", "2", "'lmax' must be int or null"),
    ("val_loss", "x", "'val_loss' must be int or float"),
    ("step", -1, "'step' must be >= 0"),
])
def test_validate_record_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        validate_record({**record(1), field: value})
    bad = record(1)
    del bad["flops"]
    with pytest.raises(ValueError, match="missing the field 'flops'"):
        validate_record(bad)


def test_dumps_writes_strict_json():
    text = dumps({"a": float("nan"), "b": [1.0, float("inf")], "c": 2})
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": 2}
    assert "NaN" not in text and "Infinity" not in text


def test_atomic_write_json_replaces_whole_file(tmp_path):
    path = tmp_path / "x.json"
    atomic_write_json(path, {"v": 1})
    atomic_write_json(path, {"v": 2, "more": list(range(5))})
    assert read_json(path) == {"v": 2, "more": [0, 1, 2, 3, 4]}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temporary left behind


def test_metrics_log_appends_rewinds_and_cuts_torn_lines(tmp_path):
    log = MetricsLog(tmp_path, durable=False)
    for step in (1, 2, 3, 4):
        log.append(record(step))
    assert [r["step"] for r in log.records()] == [1, 2, 3, 4] and log.last_step() == 4
    assert log.rewind(2) == 2
    assert [r["step"] for r in read_metrics(log.path)] == [1, 2]
    # a writer killed mid-line leaves a torn record: readers skip it, the next writer cuts it
    with open(log.path, "a") as handle:
        handle.write(dumps(record(3))[:25])
    assert [r["step"] for r in read_metrics(log.path)] == [1, 2]
    log = MetricsLog(tmp_path, durable=False)
    log.append(record(3))
    assert [r["step"] for r in read_metrics(log.path)] == [1, 2, 3]
    assert log.path.read_text().count("\n") == 3
    with pytest.raises(ValueError, match="must be"):
        log.append(record(4, params=1.5))


def test_a_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(dumps(record(1)) + "\n" + dumps(record(2)))
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    MetricsLog(tmp_path).append(record(3))
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]


def test_malformed_lines_warn_or_raise(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(dumps(record(1)) + "\n{not json}\n" + dumps(record(2, width="w")) + "\n" + dumps(record(3)) + "\n")
    with pytest.warns(RuntimeWarning, match="skipped 2 malformed"):
        records = read_metrics(path)
    assert [r["step"] for r in records] == [1, 3]
    with pytest.raises(ValueError, match="line 2"):
        read_metrics(path, strict=True)
    assert math.isclose(records[0]["val_loss"], 0.5)
