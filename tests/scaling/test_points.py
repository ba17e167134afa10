"""Loading sweep directories into points."""
import json
import shutil

import numpy as np
import pytest

from nffk.scaling.points import Points, arch_label, load_points, load_sweeps
from nffk.scaling.runlog import atomic_write_json, dumps, read_json
from nffk.scaling.synthetic import law_with, write_synthetic_sweep

LAWS = {"MPNN": law_with(0.3, 0.4), "Equivariant-lmax2": law_with(0.6, 0.5)}


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    write_synthetic_sweep(root, laws=LAWS, architectures=["MPNN", ("Equivariant", 2)], widths=[8, 16, 32],
                          n_evals=20, seed=3)
    return root


def test_points_match_what_the_runs_logged(sweep_dir):
    points = load_points(sweep_dir, drop_fraction=0.0)
    assert len(points) == 6 * 20
    assert list(points.group_by()) == ["MPNN", "Equivariant-lmax2"]  # the grid's order
    for label, group in points.group_by().items():
        law = LAWS[label]
        # the trainer's noise is 2 % log-normal: the loaded losses sit on the law
        ratio = group.val_loss / law.loss(group.params, group.atoms_seen)
        assert np.all(np.abs(np.log(ratio)) < 0.1)
        assert len(group.run_ids()) == 3
    assert arch_label("Equivariant", 2) == "Equivariant-lmax2" and arch_label("MPNN", None) == "MPNN"


def test_first_steps_are_dropped(sweep_dir):
    data = load_sweeps(sweep_dir, drop_fraction=0.1)
    for run in data.runs:
        mine = data.points.subset(data.points.run == run.run_id)
        assert mine.step.min() >= 0.1 * run.total_steps
        assert run.n_points == len(mine) < run.n_records
    with pytest.raises(ValueError, match="drop_fraction"):
        load_sweeps(sweep_dir, drop_fraction=1.0)


def test_resumed_steps_keep_the_last_record_and_torn_lines_are_skipped(sweep_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(sweep_dir, copy)
    run_dir = next((copy / "runs").iterdir())
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    duplicate = dict(json.loads(lines[5]), val_loss=123.0)
    with open(run_dir / "metrics.jsonl", "a") as handle:
        handle.write(dumps(duplicate) + "\n" + lines[6][:30])  # re-logged step, then a torn line
    points = load_points(copy, drop_fraction=0.0)
    mine = points.subset(points.run == run_dir.name)
    assert len(mine) == 20 and np.all(np.diff(mine.step) > 0)
    assert mine.val_loss[mine.step == duplicate["step"]][0] == 123.0


def test_duplicate_runs_across_directories_prefer_the_finished_copy(sweep_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(sweep_dir, other)
    run_dir = next((other / "runs").iterdir())
    meta = read_json(run_dir / "run.json")
    atomic_write_json(run_dir / "run.json", {**meta, "status": "running"})
    with pytest.warns(RuntimeWarning, match="found in"):
        data = load_sweeps([other, sweep_dir])
    assert len(data.runs) == 6
    chosen = {r.run_id: r for r in data.runs}[run_dir.name]
    assert chosen.status == "done" and chosen.sweep_dir == str(sweep_dir)


def test_not_a_sweep_directory(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_sweeps(tmp_path / "missing")
    with pytest.raises(ValueError, match="not a sweep directory"):
        load_sweeps(tmp_path)
    with pytest.raises(ValueError, match="empty"):
        load_sweeps([])


def test_points_table_operations():
    records = [{"run": f"r{i % 2}", "arch": "EGNN", "width": 4, "lmax": None, "step": i, "params": 10,
                "atoms_seen": i, "flops": float(i), "wall": float(i), "val_loss": 1.0, "train_loss": 1.0}
               for i in range(6)]
    points = Points.from_records(records)
    assert len(points) == 6 and points.run_ids() == ["r0", "r1"]
    assert points.subset(points.run == "r1").step.tolist() == [1, 3, 5]
    assert points.to_records()[2] == {**records[2], "label": "EGNN"}
    with pytest.raises(AttributeError):
        points.nonexistent
