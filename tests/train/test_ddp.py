"""Data-parallel training under torchrun (2 processes, gloo) gives the one-process loss curve."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nffk.scaling.runlog import read_metrics

ROOT = Path(__file__).resolve().parents[2]


def nffk_train(tmp_path, toy_data, out, processes):
    args = ["train", "--arch", "EGNN", "--width", "8", "--data", str(toy_data), "--out", str(out),
            "--batch-size", "8", "--evals", "5", "--cutoff", "3.0", "--dtype", "float64", "--threads", "1",
            "--device", "cpu", "--no-progress"]
    if processes == 1:
        command = [sys.executable, "-m", "nffk.cli", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                   "-m", "nffk.cli", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_two_processes_follow_the_one_process_loss_curve(toy_data, tmp_path):
    one = nffk_train(tmp_path, toy_data, tmp_path / "one", 1)
    two = nffk_train(tmp_path, toy_data, tmp_path / "two", 2)
    a = read_metrics(tmp_path / "one" / "metrics.jsonl", strict=True)
    b = read_metrics(tmp_path / "two" / "metrics.jsonl", strict=True)
    assert [r["step"] for r in a] == [r["step"] for r in b] and len(a) >= 4
    for x, y in zip(a, b):
        for key in ("atoms_seen", "edges_seen", "params"):
            assert x[key] == y[key]
        assert y["flops"] == pytest.approx(x["flops"], rel=1e-12)
        # float64: only the order of the sums differs between one and two processes
        assert y["val_loss"] == pytest.approx(x["val_loss"], rel=1e-9)
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-9)
    assert a[-1]["val_loss"] < a[0]["val_loss"]
    assert one["params"] == two["params"] and two["finished"]
