"""The report: files, JSON round trip, numbers against the laws the sweep was drawn from, CLI."""
import json

import pytest
from rich.console import Console

from nffk.cli import main
from nffk.scaling.report import PLOTS, exponents_table, write_report
from nffk.scaling.runlog import atomic_write_json, read_json
from nffk.scaling.synthetic import law_with, write_synthetic_sweep

LAWS = {"MPNN": law_with(0.3, 0.35), "EGNN": law_with(0.45, 0.4)}


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    write_synthetic_sweep(root, laws=LAWS, architectures=["MPNN", "EGNN"], widths=[8, 16, 32, 64, 128],
                          n_evals=16, seed=5)
    return root


@pytest.fixture(scope="module")
def report(sweep_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return out, write_report([sweep_dir], out, n_boot=40)


def test_report_writes_every_file(report):
    out, result = report
    for name in ["report.md", "report.json", *PLOTS.values()]:
        path = out / name
        assert path.exists() and path.stat().st_size > 1000, name
    for name in PLOTS.values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(result["plots"]) == sorted(PLOTS.values())


def test_report_json_round_trips(report):
    out, result = report
    assert json.loads((out / "report.json").read_text()) == result
    assert "NaN" not in (out / "report.json").read_text()


def test_report_numbers_follow_the_laws_the_sweep_was_drawn_from(report):
    _, result = report
    assert list(result["architectures"]) == ["MPNN", "EGNN"]
    for label, law in LAWS.items():
        entry = result["architectures"][label]
        assert entry["n_runs"] == entry["n_runs_done"] == 5 and entry["errors"] == {}
        surface = entry["loss_surface"]["params"]
        assert surface["alpha"] == pytest.approx(law.alpha, abs=0.06)
        assert surface["beta"] == pytest.approx(law.beta, abs=0.12)
        optimal = entry["compute_optimal"]
        assert optimal["a"] == pytest.approx(surface["beta"] / (surface["alpha"] + surface["beta"]))
        # the frontier of a finite sweep is near, not at, alpha beta / (alpha + beta)
        assert entry["frontier"]["params"]["gamma"] == pytest.approx(law.gamma, abs=0.05)
        assert entry["gamma_check"]["gamma_implied"] == pytest.approx(optimal["gamma"])
        assert entry["flops_per_param_atom"] == pytest.approx(3 * {"MPNN": 2.3, "EGNN": 28.0}[label])
        assert entry["frontier"]["n_runs"] >= 2 and entry["frontier"]["n_points"] >= 4
    assert result["stage_timings"]["training"] > 0


def test_report_markdown_has_the_tables(report):
    out, result = report
    text = (out / "report.md").read_text()
    assert "| architecture | runs | points | γ_c (compute)" in text
    for label, entry in result["architectures"].items():
        alpha = entry["loss_surface"]["params"]["alpha"]
        assert f"| {label} | 5 | {entry['n_points']} |" in text and f"{alpha:.3f}" in text
    assert "*EGNN, published* |  |  | 0.170 | 0.270 | 0.390 | 0.390" in text
    for name in PLOTS.values():
        assert f"]({name})" in text


def test_terminal_table(report):
    _, result = report
    console = Console(record=True, width=160)
    console.print(exponents_table(result))
    text = console.export_text()
    for label in ("MPNN", "EGNN", "GemNet-OC (pub.)"):
        assert label in text
    assert f"{result['architectures']['EGNN']['loss_surface']['params']['beta']:.3f}" in text


def test_report_on_degenerate_sweep_records_why(tmp_path):
    root = tmp_path / "sweep"
    write_synthetic_sweep(root, laws=LAWS, architectures=["MPNN", "EGNN"], widths=[16], n_evals=12)
    # one run left unfinished: its points still count, its status shows
    run_dir = next((root / "runs").iterdir())
    atomic_write_json(run_dir / "run.json", {**read_json(run_dir / "run.json"), "status": "running"})
    result = write_report([root], tmp_path / "out", n_boot=10)
    for entry in result["architectures"].values():
        assert "single width" in entry["errors"]["loss_surface"]
        assert entry["compute_optimal"] is None and entry["gamma_check"] is None
    assert result["architectures"]["MPNN"]["n_runs_done"] == 0
    text = (tmp_path / "out" / "report.md").read_text()
    assert "not fitted" in text and "single width" in text
    assert (tmp_path / "out" / "loss_vs_compute.png").exists()


def test_cli(sweep_dir, tmp_path, capsys):
    assert main(["report", str(sweep_dir), "--out", str(tmp_path / "r"), "--bootstrap", "10",
                 "--l-inf", "fit", "--keep-edges"]) == 0
    captured = capsys.readouterr()
    assert "EGNN" in captured.out and "γ_c" in captured.out and "report.md" in captured.err
    result = read_json(tmp_path / "r" / "report.json")
    assert result["settings"]["frontier_l_inf"] == "fit" and result["settings"]["trim_edges"] is False
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["report", str(sweep_dir), "--l-inf", "-1"]) == 2
    assert not (tmp_path / "missing").exists()
