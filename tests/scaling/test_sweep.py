"""Sweep bookkeeping: run ids, shards, skipping and resuming, concurrent processes, merging."""
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from nffk.scaling.runlog import read_json
from nffk.scaling.sweep import RunSpec, Sweep, _RunLock, make_grid, merge, parse_shard, shard_specs
from nffk.scaling.synthetic import SyntheticCrash, SyntheticTrainer, law_with

REPO = Path(__file__).resolve().parents[2]
LAWS = {"MPNN": law_with(0.3, 0.4), "EGNN": law_with(0.4, 0.4)}
GRID = make_grid(["MPNN", "EGNN"], [8, 16, 32])


def trainer(tmp_path, **options):
    return SyntheticTrainer(LAWS, n_evals=10, calls_log=tmp_path / "calls.log", **options)


def calls(tmp_path):
    """[(pid, run_id, first_eval)] in call order."""
    path = tmp_path / "calls.log"
    if not path.exists():
        return []
    return [(int(p), r, int(f)) for p, r, f in (line.split() for line in path.read_text().splitlines())]


def metrics_by_run(root):
    return {d.name: (d / "metrics.jsonl").read_text() for d in sorted((Path(root) / "runs").iterdir())}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same sweep run straight through, once."""
    root = tmp_path_factory.mktemp("reference")
    Sweep(root / "sweep", GRID).run(SyntheticTrainer(LAWS, n_evals=10), verbose=False)
    return metrics_by_run(root / "sweep")


# ----------------------------------------------------------------------------- specs and grids


def test_run_ids_are_stable_readable_and_distinct():
    spec = RunSpec("Equivariant", 64, lmax=2, data_budget=1_000_000, options={"lr": 1e-3})
    again = RunSpec.from_dict(spec.to_dict())
    assert again.run_id == spec.run_id == RunSpec("Equivariant", 64, 2, 1_000_000, {"lr": 1e-3}).run_id
    assert spec.run_id.startswith("Equivariant-lmax2-w64-d1e06-")
    others = [RunSpec("Equivariant", 64, lmax=2, data_budget=1_000_000, options={"lr": 2e-3}),
              RunSpec("Equivariant", 64, lmax=1, data_budget=1_000_000, options={"lr": 1e-3}),
              RunSpec("Equivariant", 32, lmax=2, data_budget=1_000_000, options={"lr": 1e-3})]
    assert len({spec.run_id} | {o.run_id for o in others}) == 4
    with pytest.raises(ValueError, match="does not match"):
        RunSpec.from_dict({**spec.to_dict(), "run_id": "Equivariant-lmax2-w64-00000000"})


@pytest.mark.parametrize("kwargs,message", [
    ({"arch": "my model", "width": 8}, "arch must be"),
    ({"arch": "MPNN", "width": 0}, "width must be"),
    ({"arch": "MPNN", "width": 8, "lmax": -1}, "lmax must be"),
    ({"arch": "MPNN", "width": 8, "data_budget": 2.5}, "data_budget must be"),
    ({"arch": "MPNN", "width": 8, "options": {"f": object()}}, "JSON-serialisable"),
])
def test_bad_specs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RunSpec(**kwargs)


def test_make_grid_order_and_overrides():
    grid = make_grid(["MPNN", ("Equivariant", 1), {"arch": "Equivariant", "lmax": 2, "widths": [4]}],
                     {"MPNN": [8, 16], "Equivariant-lmax1": [8]}, data_budgets=[None, 10_000])
    assert [(s.label, s.data_budget, s.width) for s in grid] == [
        ("MPNN", None, 8), ("MPNN", None, 16), ("MPNN", 10_000, 8), ("MPNN", 10_000, 16),
        ("Equivariant-lmax1", None, 8), ("Equivariant-lmax1", 10_000, 8),
        ("Equivariant-lmax2", None, 4), ("Equivariant-lmax2", 10_000, 4)]
    with pytest.raises(ValueError, match="more than once"):
        make_grid(["MPNN", "MPNN"], [8])
    with pytest.raises(ValueError, match="no widths"):
        make_grid(["EGNN"], {"MPNN": [8]})


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_shards_cover_every_run_exactly_once(n):
    grid = make_grid(["MPNN", "EGNN", ("Equivariant", 2)], [4, 8, 16, 32])
    parts = [shard_specs(grid, k, n) for k in range(1, n + 1)]
    ids = Counter(s.run_id for part in parts for s in part)
    assert set(ids) == {s.run_id for s in grid} and set(ids.values()) == {1}
    assert max(map(len, parts)) - min(map(len, parts)) <= 1  # balanced
    assert parts == [shard_specs(grid, k, n) for k in range(1, n + 1)]  # deterministic


def test_parse_shard():
    assert parse_shard("2/4") == (2, 4) and parse_shard(" 1 / 1 ") == (1, 1)
    for bad in ("0/4", "5/4", "2", "a/b", "2/4/1"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


# ----------------------------------------------------------------------------- running


def test_sweep_runs_everything_once_and_skips_finished_runs(tmp_path, reference):
    sweep = Sweep(tmp_path / "s", GRID, meta={"dataset": "synthetic"})
    assert sweep.summary()["pending"] == 6
    assert sweep.run(trainer(tmp_path), verbose=False) == [s.run_id for s in GRID]
    assert sweep.summary()["done"] == 6
    assert sweep.run(trainer(tmp_path), verbose=False) == []  # nothing left to do
    assert Counter(run for _, run, _ in calls(tmp_path)) == {s.run_id: 1 for s in GRID}
    assert metrics_by_run(tmp_path / "s") == reference
    meta = read_json(sweep.run_dir(GRID[0].run_id) / "run.json")
    assert meta["status"] == "done" and meta["spec"] == GRID[0].to_dict() and meta["result"]["total_steps"] > 0
    assert Sweep(tmp_path / "s").document()["meta"] == {"dataset": "synthetic"}


def test_runs_start_in_the_order_given(tmp_path, reference):
    order = [GRID[4].run_id, GRID[1].run_id]  # the others follow in grid order
    sweep = Sweep(tmp_path / "s", GRID)
    expected = order + [s.run_id for s in GRID if s.run_id not in order]
    assert sweep.run(trainer(tmp_path), verbose=False, order=order) == expected
    assert [run for _, run, _ in calls(tmp_path)] == expected
    assert metrics_by_run(tmp_path / "s") == reference


def test_a_different_grid_is_refused(tmp_path):
    Sweep(tmp_path / "s", GRID)
    with pytest.raises(ValueError, match="differs"):
        Sweep(tmp_path / "s", GRID[:3])
    with pytest.raises(ValueError, match="give the grid"):
        Sweep(tmp_path / "empty")
    assert len(Sweep(tmp_path / "s").specs) == 6


def test_failed_run_is_recorded_then_resumed_from_its_checkpoint(tmp_path, reference):
    crashing = GRID[1].run_id
    sweep = Sweep(tmp_path / "s", GRID)
    with pytest.raises(SyntheticCrash):
        sweep.run(trainer(tmp_path, crash_at={crashing: 4}), verbose=False)
    assert sweep.status(GRID[0].run_id) == "done" and sweep.status(crashing) == "failed"
    assert sweep.status(GRID[2].run_id) == "pending"
    assert "SyntheticCrash" in read_json(sweep.run_dir(crashing) / "run.json")["error"]
    sweep.run(trainer(tmp_path, crash_at={crashing: 6}), on_error="continue", verbose=False)
    assert sweep.status(crashing) == "failed" and sweep.summary()["done"] == 5
    sweep.run(trainer(tmp_path), verbose=False)
    assert sweep.summary()["done"] == 6
    starts = [first for _, run, first in calls(tmp_path) if run == crashing]
    assert starts == [0, 4, 6]  # each attempt resumed after the last checkpoint
    assert len(read_json(sweep.run_dir(crashing) / "run.json")["history"]) == 3
    assert metrics_by_run(tmp_path / "s") == reference  # nothing lost, nothing logged twice


def test_killed_sweep_resumes_the_interrupted_run(tmp_path, reference):
    root = tmp_path / "s"
    Sweep(root, GRID)
    script = ("from nffk.scaling.sweep import Sweep\n"
              "from nffk.scaling.synthetic import SyntheticTrainer, law_with\n"
              "laws = {'MPNN': law_with(0.3, 0.4), 'EGNN': law_with(0.4, 0.4)}\n"
              f"train_fn = SyntheticTrainer(laws, n_evals=10, sleep=0.05, calls_log={str(tmp_path / 'calls.log')!r})\n"
              f"Sweep({str(root)!r}).run(train_fn, verbose=False)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=REPO)
    victim = root / "runs" / GRID[1].run_id / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and not (victim.exists() and victim.read_text().count("\n") >= 3):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    sweep = Sweep(root)
    assert sweep.status(GRID[0].run_id) == "done"
    assert sweep.status(GRID[1].run_id) == "interrupted"  # run.json says running, nobody holds it
    assert sweep.status(GRID[2].run_id) == "pending"
    sweep.run(trainer(tmp_path), verbose=False)
    assert sweep.summary()["done"] == 6
    log = calls(tmp_path)
    assert [run for _, run, _ in log].count(GRID[0].run_id) == 1  # finished run not redone
    resumed = [first for pid, run, first in log if run == GRID[1].run_id and pid == os.getpid()]
    assert len(resumed) == 1 and resumed[0] >= 2
    assert metrics_by_run(root) == reference


def test_a_run_owned_by_another_process_is_left_alone(tmp_path):
    sweep = Sweep(tmp_path / "s", GRID)
    owned = GRID[2].run_id
    sweep.run_dir(owned).mkdir()
    lock = _RunLock(sweep.run_dir(owned) / ".lock")
    assert lock.acquire()  # stands in for another process (flock locks are per open file)
    try:
        sweep.run(trainer(tmp_path), verbose=False)
        assert sweep.status(owned) == "pending" and sweep.summary()["done"] == 5
        assert owned not in {run for _, run, _ in calls(tmp_path)}
    finally:
        lock.release()
    sweep.run(trainer(tmp_path), verbose=False)
    assert sweep.summary()["done"] == 6


class MeetFirst:
    """A train_fn that, on its first call in each process, waits until every worker has started
    a run: so that the test below really has two processes working through one sweep at once."""

    def __init__(self, train_fn, barrier):
        self.train_fn, self.barrier, self.met = train_fn, barrier, False

    def __call__(self, spec, run_dir):
        if not self.met:
            self.met = True
            self.barrier.wait(timeout=120)
        return self.train_fn(spec, run_dir)


def test_two_processes_never_run_the_same_run(tmp_path, reference):
    sweep = Sweep(tmp_path / "s", GRID)
    barrier = multiprocessing.get_context("spawn").Barrier(2)
    train_fn = MeetFirst(trainer(tmp_path, sleep=0.02), barrier)
    finished = sweep.run(train_fn, workers=2, verbose=False)
    assert sorted(finished) == sorted(s.run_id for s in GRID)
    log = calls(tmp_path)
    assert Counter(run for _, run, _ in log) == {s.run_id: 1 for s in GRID}  # no run twice
    assert len({pid for pid, _, _ in log}) == 2 and os.getpid() not in {pid for pid, _, _ in log}
    assert sweep.summary()["done"] == 6
    assert metrics_by_run(tmp_path / "s") == reference


def test_record_timing_adds_up(tmp_path):
    sweep = Sweep(tmp_path / "s", GRID)
    sweep.record_timing("dataset", 1.5)
    sweep.record_timing("dataset", 2.0)
    assert Sweep(tmp_path / "s").document()["timings"] == {"dataset": 3.5}
    with pytest.raises(ValueError, match="seconds"):
        sweep.record_timing("dataset", -1)


# ----------------------------------------------------------------------------- shards and merging


def test_shards_in_separate_directories_merge_into_the_full_sweep(tmp_path, reference):
    dirs = []
    for k in (1, 2, 3):
        sweep = Sweep(tmp_path / f"shard{k}", GRID)
        sweep.run(trainer(tmp_path), shard=f"{k}/3", verbose=False)
        sweep.record_timing("training", 1.0)
        assert sweep.summary()["done"] == 2
        dirs.append(sweep.root)
    out = merge(dirs, tmp_path / "merged")
    merged = Sweep(out)
    assert merged.summary()["done"] == 6
    assert metrics_by_run(out) == reference
    assert merged.document()["timings"] == {"training": 3.0}
    assert len(merged.document()["merged_from"]) == 3
    assert not any(p.name == ".lock" for p in out.rglob("*"))
    with pytest.raises(ValueError, match="not empty"):
        merge(dirs, out)


def test_merge_refuses_conflicting_duplicates_and_keeps_the_most_progress(tmp_path):
    a, b = Sweep(tmp_path / "a", GRID), Sweep(tmp_path / "b", GRID)
    a.run(trainer(tmp_path), verbose=False)
    b.run(SyntheticTrainer(LAWS, n_evals=10, seed=1), verbose=False)  # same runs, different numbers
    with pytest.raises(ValueError, match="conflicting"):
        merge([a.root, b.root], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written
    # identical finished copies are fine
    shutil.copytree(a.root, tmp_path / "a2")
    assert Sweep(merge([a.root, tmp_path / "a2"], tmp_path / "ok")).summary()["done"] == 6
    # unfinished in both: the copy with more validation records wins
    c, d = Sweep(tmp_path / "c", GRID), Sweep(tmp_path / "d", GRID)
    run_id = GRID[0].run_id
    with pytest.raises(SyntheticCrash):
        c.run(trainer(tmp_path, crash_at={run_id: 2}), verbose=False)
    with pytest.raises(SyntheticCrash):
        d.run(trainer(tmp_path, crash_at={run_id: 6}), verbose=False)
    out = merge([c.root, d.root], tmp_path / "partial")
    kept = (out / "runs" / run_id / "metrics.jsonl").read_text()
    assert kept == (d.root / "runs" / run_id / "metrics.jsonl").read_text()
    assert Sweep(out).status(run_id) == "failed"
    with pytest.raises(ValueError, match="not a sweep directory"):
        merge([tmp_path / "nowhere"], tmp_path / "x")
