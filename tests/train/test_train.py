"""The training loop: learning, logging, compute accounting, exact resume, checkpoints, muP, CLI."""
import json

import pytest
import torch

from nffk.data import load_dataset
from nffk.models import build_model
from nffk.scaling.runlog import read_metrics
from nffk.testing import TOY_ELEMENTS
from nffk.train import TrainConfig, eval_steps, parameter_roles, train
from nffk.train.checkpoint import load_checkpoint, save_checkpoint
from nffk.train.optim import make_optimizer


def small(arch="MPNN", width=8, lmax=None, **overrides):
    options = dict(batch_size=8, n_evals=6, val_structures=0, cutoff=3.0, threads=1)
    options.update(overrides)
    return TrainConfig(arch, width, lmax, **options)


def without_wall(records):
    return [{k: v for k, v in r.items() if k != "wall"} for r in records]


def test_loss_decreases_and_every_point_is_logged(toy_data, tmp_path):
    config = small("MPNN", 16, lr=3e-2)
    result = train(config, toy_data, tmp_path / "run", progress=False)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl", strict=True)
    train_set = load_dataset(toy_data, "train")
    assert result["finished"] and result["total_steps"] == len(train_set) // 8 == 16
    assert [r["step"] for r in records] == eval_steps(16, 6) and records[-1]["step"] == 16
    assert records[-1]["val_loss"] < 0.8 * records[0]["val_loss"]
    assert records[-1]["atoms_seen"] == result["atoms_seen"] == train_set.total_atoms  # 128 = 16 x 8: all seen
    for r in records:
        assert r["params"] == result["params"] == build_model(
            "MPNN", 16, elements=TOY_ELEMENTS, cutoff=3.0).num_parameters
        assert r["run"] == "run" and r["arch"] == "MPNN" and r["width"] == 16 and r["lmax"] is None
    flops = [r["flops"] for r in records]
    walls = [r["wall"] for r in records]
    assert all(a < b for a, b in zip(flops, flops[1:])) and all(a <= b for a, b in zip(walls, walls[1:]))
    # C = 3 x forward FLOPs, forward FLOPs = a atoms + b edges (+ c structures), exact per batch
    fm = result["flop_model"]
    expected = 3 * (fm["per_atom"] * result["atoms_seen"] + fm["per_edge"] * records[-1]["edges_seen"]
                    + fm["per_structure"] * 128)
    assert abs(records[-1]["flops"] - expected) < 1e-9 * expected
    assert result["kappa"] == pytest.approx(expected / 3 / (result["params"] * result["atoms_seen"]))
    assert 2.9 < result["train_flops_ratio"] < 3.1  # a counted training step is ~3 forward passes
    state = load_checkpoint(tmp_path / "run" / "model.pt")
    assert state["arch"] == "MPNN" and "model" in state


@pytest.mark.parametrize("arch, lmax, forces", [("MPNN", None, "direct"), ("Equivariant", 1, "conservative")])
def test_an_interrupted_run_resumes_to_the_same_result(arch, lmax, forces, toy_data, tmp_path):
    config = small(arch, 4, lmax, forces=forces, data_budget=300)
    straight = train(config, toy_data, tmp_path / "straight", run_id="r", progress=False)
    stopped = train(config, toy_data, tmp_path / "resumed", run_id="r", progress=False, stop_after=5)
    assert not stopped["finished"] and stopped["steps"] == 5
    resumed = train(config, toy_data, tmp_path / "resumed", run_id="r", progress=False)
    assert resumed["finished"] and resumed["steps"] == straight["steps"]
    a = read_metrics(tmp_path / "straight" / "metrics.jsonl", strict=True)
    b = read_metrics(tmp_path / "resumed" / "metrics.jsonl", strict=True)
    assert without_wall(a) == without_wall(b)  # bit for bit
    final_a = load_checkpoint(tmp_path / "straight" / "model.pt")["model"]
    final_b = load_checkpoint(tmp_path / "resumed" / "model.pt")["model"]
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    again = train(config, toy_data, tmp_path / "resumed", progress=False)  # finished: nothing to do
    assert again["finished"] and len(read_metrics(tmp_path / "resumed" / "metrics.jsonl")) == len(a)


def test_resume_drops_points_logged_after_the_checkpoint(toy_data, tmp_path):
    config = small("MPNN", 4)
    train(config, toy_data, tmp_path / "run", progress=False, stop_after=4)
    metrics = tmp_path / "run" / "metrics.jsonl"
    logged = read_metrics(metrics)
    fake = dict(logged[-1], step=7, val_loss=123.0)  # as if the killed process had logged step 7
    with open(metrics, "a") as handle:
        handle.write(json.dumps(fake) + "\n" + '{"run": "torn')
    train(config, toy_data, tmp_path / "run", progress=False)
    records = read_metrics(metrics, strict=True)
    assert 123.0 not in [r["val_loss"] for r in records]
    assert [r["step"] for r in records] == eval_steps(16, 6)


def test_resuming_with_other_settings_is_refused(toy_data, tmp_path):
    train(small("MPNN", 4), toy_data, tmp_path / "run", progress=False, stop_after=2)
    with pytest.raises(ValueError, match="other settings.*lr"):
        train(small("MPNN", 4, lr=1e-4), toy_data, tmp_path / "run", progress=False)


def test_checkpoints_are_atomic_and_load_weights_only(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1, "weights": torch.ones(3)})

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2, "weights": torch.zeros(3)})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left
    torch.save({"code": print}, tmp_path / "evil.pt")  # a pickled function: refused by weights_only
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


def test_mup_roles_and_learning_rates():
    model = build_model("EGNN", 64, elements=TOY_ELEMENTS)  # base width 32: multiplier 2
    roles = parameter_roles(model)
    assert roles["embedding.weight"] == "vector"  # species (fixed) -> width
    assert roles["messages.0.out.weight"] == "matrix"  # width -> width
    assert roles["messages.0.node_in.bias"] == "vector" and roles["messages.0.edge_in.weight"] == "vector"
    assert roles["energy_head.weight"] == "vector"  # width -> 1: a readout, scaled in the forward pass
    assert roles["radial.basis.wavenumbers"] == "fixed"
    optimizer = make_optimizer(model, 1e-2)
    lrs = {group["role"]: group["lr"] for group in optimizer.param_groups}
    assert lrs == pytest.approx({"matrix": 1e-2 / 2 ** 0.5, "vector": 1e-2, "fixed": 1e-2})
    state = torch.get_rng_state()
    parameter_roles(model)  # building the twin model must leave the random stream alone
    assert torch.equal(state, torch.get_rng_state())


def test_cli_trains_and_reports(toy_data, tmp_path, capsys):
    from nffk.cli import main

    args = ["train", "--arch", "Equivariant", "--lmax", "1", "--width", "2", "--data", str(toy_data), "--out",
            str(tmp_path / "eq"), "--batch-size", "16", "--evals", "3", "--cutoff", "3.0", "--no-progress"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["finished"] and summary["steps"] == 8 and summary["kappa"] > 0
    assert main(["train", "--arch", "MPNN", "--lmax", "2", "--width", "4", "--data", str(toy_data)]) == 2
    assert "--lmax applies to Equivariant only" in capsys.readouterr().err
    assert main(["train", "--arch", "MPNN", "--width", "4", "--data", str(tmp_path / "nothing")]) == 2
    assert "not a dataset folder" in capsys.readouterr().err
