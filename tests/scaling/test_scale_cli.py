"""`nffk scale` end to end: the smoke preset (real QM9-xTB data, real training, report), killed
mid-sweep and restarted; presets and grids."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nffk.scaling.cli_scale import longest_first
from nffk.scaling.presets import PRESETS, grid_for, grid_from_json, parse_architecture
from nffk.scaling.runlog import read_metrics
from nffk.scaling.sweep import Sweep
from nffk.scaling.trainer import SweepTrainer
from nffk.train import eval_steps

ROOT = Path(__file__).resolve().parents[2]


def scale(cwd, *args, **popen):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", "COLUMNS": "160"}
    return subprocess.Popen([sys.executable, "-m", "nffk.cli", "scale", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            **popen)


def statuses(sweep_dir):
    found = {}
    for run_json in (sweep_dir / "runs").glob("*/run.json"):
        try:
            found[run_json.parent.name] = json.loads(run_json.read_text())
        except (json.JSONDecodeError, OSError):
            pass  # replaced atomically, but it may not exist yet
    return found


@pytest.mark.slow
def test_smoke_preset_end_to_end_killed_and_resumed(tmp_path):
    out = tmp_path / "runs" / "smoke"
    process = scale(tmp_path, "--preset", "smoke", "--workers", "1")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # kill it once a run is done and the next one is under way
        runs = statuses(out)
        done = [r for r in runs.values() if r.get("status") == "done"]
        running = [r for r in runs.values() if r.get("status") == "running"]
        if done and running and (out / "runs" / running[0]["run_id"] / "metrics.jsonl").exists():
            break
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.2)
    else:
        pytest.fail("the smoke sweep did not get going within 10 minutes")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed = statuses(out)
    finished_before = {run_id: r for run_id, r in killed.items() if r["status"] == "done"}
    interrupted = running[0]["run_id"]
    assert Sweep(out).status(interrupted) == "interrupted"

    process = scale(tmp_path, "--preset", "smoke", "--workers", "1")
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    runs = statuses(out)
    assert len(runs) == len(grid_for(PRESETS["smoke"])) and all(r["status"] == "done" for r in runs.values())
    for run_id, before in finished_before.items():
        assert runs[run_id] == before  # not run again
    assert f"resuming {interrupted}" in stderr
    # the interrupted run, resumed, logged exactly what an uninterrupted run logs
    spec = next(s for s in Sweep(out).specs if s.run_id == interrupted)
    SweepTrainer(tmp_path / "data" / "qm9-xtb-smoke", threads=1, progress=False)(spec, tmp_path / "straight")
    resumed = read_metrics(out / "runs" / interrupted / "metrics.jsonl", strict=True)
    straight = read_metrics(tmp_path / "straight" / "metrics.jsonl", strict=True)
    drop_wall = lambda records: [{k: v for k, v in r.items() if k != "wall"} for r in records]  # noqa: E731
    assert drop_wall(resumed) == drop_wall(straight)
    assert [r["step"] for r in resumed] == eval_steps(runs[interrupted]["result"]["total_steps"], 5)
    # the report and the exponents table
    assert (out / "report" / "report.md").exists() and (out / "report" / "report.json").exists()
    assert len(list((out / "report").glob("*.png"))) == 6
    assert "Equivariant-lmax1" in stdout and "γ_c" in stdout and "stage timings" in stdout
    report = json.loads((out / "report" / "report.json").read_text())
    assert set(report["architectures"]) == {"MPNN", "EGNN", "Equivariant-lmax1"}
    timings = json.loads((out / "sweep.json").read_text())["timings"]
    assert timings["dataset"] > 0 and timings["training"] > 0 and timings["report"] > 0


def test_presets_and_grids(tmp_path):
    default = grid_for(PRESETS["default"])
    labels = {s.label for s in default}
    assert labels == {"MPNN", "EGNN", "Equivariant-lmax1", "Equivariant-lmax2"}
    for label in labels:
        assert len([s for s in default if s.label == label]) >= 4
    assert all(s.options["lr"] > 0 and s.options["batch_size"] == 16 for s in default)
    order = longest_first(default)  # widest model of the last (most expensive) architecture first
    by_id = {s.run_id: s for s in default}
    assert sorted(order) == sorted(by_id)
    widths = PRESETS["default"].widths
    assert (by_id[order[0]].label, by_id[order[0]].width) == ("Equivariant-lmax2", max(widths["Equivariant-lmax2"]))
    assert (by_id[order[-1]].label, by_id[order[-1]].width) == ("MPNN", min(widths["MPNN"]))
    specs = grid_for(PRESETS["default"], archs=["Equivariant-lmax3", "MPNN"], widths=[4, 8],
                     data_budgets=[1000, 2000], options={"forces": "conservative"})
    assert len(specs) == 8 and all(s.options["forces"] == "conservative" for s in specs)
    assert {s.data_budget for s in specs} == {1000, 2000}
    assert parse_architecture("Equivariant:4") == ("Equivariant", 4)
    with pytest.raises(ValueError, match="irrep order"):
        grid_for(PRESETS["default"], archs=["Equivariant"])
    with pytest.raises(ValueError, match="unknown architecture"):
        grid_for(PRESETS["default"], archs=["SchNet"])
    with pytest.raises(ValueError, match="no widths"):
        grid_for(PRESETS["default"], archs=["Equivariant-lmax5"])
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"architectures": ["EGNN", ["Equivariant", 2]], "widths": [8, 16],
                                "options": {"batch_size": 4, "lr": 0.01}}))
    specs, options = grid_from_json(grid)
    assert len(specs) == 4 and all(s.options["lr"] == 0.01 and s.options["batch_size"] == 4 for s in specs)


def test_bad_arguments_are_reported(tmp_path, capsys):
    from nffk.cli import main

    assert main(["scale", "--preset", "smoke", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "not a dataset folder" in capsys.readouterr().err
    assert main(["scale", "--preset", "smoke", "--set", "batch_size"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main(["scale", "--preset", "smoke", "--set", "colour=red"]) == 2
    assert "colour" in capsys.readouterr().err


def test_shards_then_merge_then_report(tmp_path, capsys):
    from nffk.cli import main
    from nffk.testing import toy_dataset

    data = toy_dataset(tmp_path / "toy", num_structures=64)
    common = ["scale", "--archs", "MPNN", "EGNN", "--widths", "2", "4", "--data", str(data), "--workers", "1",
              "--set", "batch_size=8", "n_evals=3", "val_structures=8", "cutoff=3.0"]
    for k in (1, 2):
        assert main(common + ["--shard", f"{k}/2", "--out", str(tmp_path / f"shard{k}")]) == 0
    assert "when every shard is done" in capsys.readouterr().err
    shard_runs = [sorted(p.name for p in (tmp_path / f"shard{k}" / "runs").iterdir()) for k in (1, 2)]
    assert len(shard_runs[0]) == len(shard_runs[1]) == 2 and not set(shard_runs[0]) & set(shard_runs[1])
    assert main(["scale", "--merge", str(tmp_path / "shard1"), str(tmp_path / "shard2"),
                 "--out", str(tmp_path / "merged")]) == 0
    captured = capsys.readouterr()
    assert "MPNN" in captured.out and "EGNN" in captured.out
    report = json.loads((tmp_path / "merged" / "report" / "report.json").read_text())
    assert report["n_runs"] == 4 and set(report["architectures"]) == {"MPNN", "EGNN"}
    # the same shard again: everything is done, nothing is trained twice
    before = (tmp_path / "shard1" / "runs" / shard_runs[0][0] / "run.json").read_text()
    assert main(common + ["--shard", "1/2", "--out", str(tmp_path / "shard1")]) == 0
    assert (tmp_path / "shard1" / "runs" / shard_runs[0][0] / "run.json").read_text() == before
