"""Generation of a tiny QM9/GFN2-xTB dataset: determinism, splits, statistics, resume."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nffk.data import generate_dataset, load_dataset
from nffk.data.store import SPLITS, composition, read_shard

TINY = dict(num_structures=36, num_molecules=12, shard_size=4, workers=1, progress=False)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("tiny") / "ds", seed=0, **TINY)


def files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(tiny, tmp_path):
    again = generate_dataset(tmp_path / "again", seed=0, **{**TINY, "workers": 2})  # also: pool == in-process
    assert files(again) == files(tiny)
    other = generate_dataset(tmp_path / "other", seed=1, **TINY)
    a, b = load_dataset(tiny), load_dataset(other)
    assert set(a.arrays["molecule"].tolist()) != set(b.arrays["molecule"].tolist())


def test_sizes_and_split_by_molecule(tiny):
    meta = json.loads((tiny / "meta.json").read_text())
    molecules = {}
    total = 0
    for split in SPLITS:
        data = load_dataset(tiny, split)
        assert len(data) == meta["splits"][split]["structures"] and data.total_atoms == meta["splits"][split]["atoms"]
        molecules[split] = set(data.arrays["molecule"].tolist())
        assert len(molecules[split]) == meta["splits"][split]["molecules"] >= 1
        total += len(data)
        # every conformer of a molecule is distinct and labelled at its own positions
        pairs = list(zip(data.arrays["molecule"].tolist(), data.arrays["conformer"].tolist()))
        assert len(set(pairs)) == len(pairs)
    assert total == 36 and meta["dropped_structures"] == 0
    assert not (molecules["train"] & molecules["val"]) and not (molecules["train"] & molecules["test"])
    assert not (molecules["val"] & molecules["test"])
    assert sum(len(m) for m in molecules.values()) == 12
    assert load_dataset(tiny, "validation").split == "val"


def test_structures_are_distorted_qm9_molecules(tiny):
    from nffk.data.qm9 import load_qm9
    qm9 = load_qm9()
    row_of = {int(i): r for r, i in enumerate(qm9.index)}
    data = load_dataset(tiny)
    temperatures = data.arrays["temperature"]
    assert temperatures.min() >= 50 and temperatures.max() <= 1000 and temperatures.std() > 50
    for k in range(len(data)):
        s = data[k]
        numbers, equilibrium = qm9.get(row_of[s.molecule])
        assert np.array_equal(s.numbers, numbers)
        shift = np.linalg.norm(s.positions - equilibrium, axis=1)
        assert 0.001 < shift.mean() < 0.5  # moved, but still the same molecule
        assert s.numbers.dtype == np.int64 and s.positions.shape == (len(numbers), 3) and s.cell is None


def test_meta_statistics_match_an_independent_recomputation(tiny):
    meta = json.loads((tiny / "meta.json").read_text())
    train = load_dataset(tiny, "train")
    reference = {int(z): e for z, e in meta["reference_energies"].items()}
    # per structure, in plain python: E - sum of reference energies of its atoms
    residual = np.array([s.energy - sum(reference[int(z)] for z in s.numbers) for s in train])
    per_atom = residual / train.num_atoms
    forces = np.concatenate([s.forces for s in train]).astype(np.float64)
    stats = meta["statistics"]
    assert stats["energy_per_atom_mean"] == pytest.approx(per_atom.mean(), abs=1e-9)
    assert stats["energy_per_atom_rms"] == pytest.approx(np.sqrt((per_atom ** 2).mean()), rel=1e-9)
    assert stats["force_rms"] == pytest.approx(np.sqrt((forces ** 2).mean()), rel=1e-9)
    # least squares: the residuals are orthogonal to every element-count column
    counts = composition(train.arrays["numbers"], train.num_atoms, sorted(reference))
    assert np.abs(counts.T @ residual).max() < 1e-6 * np.abs(train.arrays["energy"]).sum()
    assert sorted(meta["elements"]) == sorted(set(np.concatenate(
        [load_dataset(tiny, s).arrays["numbers"] for s in SPLITS]).tolist()))


def test_resume_after_damage_gives_the_same_dataset(tiny, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny, damaged)
    shards = sorted(damaged.glob("train-*.npz"))
    shards[0].unlink()                                         # never written
    shards[1].write_bytes(shards[1].read_bytes()[:200])        # truncated (not possible via our writer)
    (damaged / f".{shards[2].name}.1234.tmp").write_bytes(b"half a shard")  # leftover of a killed write
    (damaged / "meta.json").unlink()                           # the run never finished
    with pytest.raises(FileNotFoundError, match="rerun"):
        load_dataset(damaged)
    generate_dataset(damaged, seed=0, **TINY)
    assert files(damaged) == files(tiny)


def test_resume_after_kill(tiny, tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "nffk.cli", "data", "generate", "--out", str(out), "--quiet",
               "--structures", "36", "--molecules", "12", "--shard-size", "4", "--workers", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, env=env, cwd=ROOT)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None and not list(out.glob("*-*.npz")):
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "meta.json").exists(), "the run finished before it could be killed"
    for shard in out.glob("*-*.npz"):
        read_shard(shard)  # whatever exists after a kill is complete
    generate_dataset(out, seed=0, **TINY)
    assert files(out) == files(tiny)


def test_other_settings_in_the_same_folder_are_refused(tiny, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny, copy)
    with pytest.raises(ValueError, match="other settings"):
        generate_dataset(copy, seed=3, **TINY)
    with pytest.raises(ValueError, match="num_molecules"):
        generate_dataset(tmp_path / "x", seed=0, **{**TINY, "num_molecules": 40})


def test_take_atoms_and_subset(tiny):
    data = load_dataset(tiny)
    part = data.take_atoms(100)
    assert part.total_atoms >= 100 and part.total_atoms - part.num_atoms[-1] < 100
    picked = data.subset([3, 0])
    for k, original in zip(range(2), (3, 0)):
        assert np.array_equal(picked[k].positions, data[original].positions)
        assert picked[k].energy == data[original].energy
    with pytest.raises(ValueError, match="atoms"):
        data.take_atoms(data.total_atoms + 1)
