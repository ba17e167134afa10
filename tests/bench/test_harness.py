"""The benchmark harness: `nffk bench --quick` on tiny configs writes a complete report in which
every implementation produced a finite time; missing or failing peers are reported, not fatal.
No timing is asserted (speed is measured in bench/, never in tests)."""
import json
import math
import os
import platform
import subprocess
import sys

import pytest
import torch

from nffk import cli
from nffk.bench import allocator, registry, report, runner
from nffk.bench.registry import Built, Case, Implementation, PeerMissing
from nffk.bench.timing import Rotation, rotation_sets, summarize, time_interleaved

OPS = ("tp", "sh", "nlist", "conv", "model")


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "report.json"
    threads = torch.get_num_threads()
    # --malloc system: the default policy would stay in effect for the rest of this test process.
    assert cli.main(["bench", "--ops", ",".join(OPS), "--configs", "tiny", "--quick", "--threads", "1",
                     "--device", "cpu", "--malloc", "system", "--json", str(path)]) == 0
    torch.set_num_threads(threads)
    with open(path) as f:
        return json.load(f)


def test_report_structure(quick_report):
    r = quick_report
    assert r["schema"] == runner.SCHEMA
    assert r["settings"]["mode"] == "quick" and r["settings"]["threads"] == 1 and r["settings"]["device"] == "cpu"
    assert r["settings"]["malloc"] == "system"
    for key in ("cpu", "cpu_count", "torch_threads", "load_average_start", "load_average_end", "nffk_extension"):
        assert key in r["machine"], key
    assert r["packages"]["torch"] == torch.__version__
    for key in ("copy_bytes_per_s", "matmul_flops_per_s"):
        assert math.isfinite(r["floors"][key]) and r["floors"][key] > 0
    assert {rec["op"] for rec in r["records"]} == set(OPS)


def test_every_implementation_has_a_finite_time(quick_report):
    records = quick_report["records"]
    errors = [(rec["op"], rec["pass"], rec["impl"], rec["note"]) for rec in records if rec["status"] == "error"]
    assert not errors
    for rec in records:
        if rec["status"] == "missing":  # a peer that is not installed here
            assert rec["impl"] != "nffk" and rec["note"]
            continue
        assert rec["status"] == "ok"
        assert len(rec["times_s"]) == rec["runs"] >= 3
        assert all(math.isfinite(t) and t > 0 for t in rec["times_s"])
        assert rec["q25_s"] <= rec["median_s"] <= rec["q75_s"]
        assert rec["ratio_vs_nffk"] is not None and math.isfinite(rec["ratio_vs_nffk"])
        if rec["bytes"]:
            assert rec["gbytes_per_s"] == pytest.approx(rec["bytes"] / rec["median_s"] / 1e9)
            assert 0 < rec["floor_fraction"]
    # nffk itself is timed for every case
    keys = {(rec["op"], rec["config"], rec["pass"]) for rec in records}
    nffk_keys = {(rec["op"], rec["config"], rec["pass"]) for rec in records if rec["impl"] == "nffk"}
    assert keys == nffk_keys


def test_peers_agree_with_nffk_where_comparable(quick_report):
    """e3nn computes the same tensor product and convolution, so the harness's check must say ok;
    neighbour lists agree on the number of pairs."""
    checks = {(rec["op"], rec["pass"], rec["impl"]): rec["check"] for rec in quick_report["records"]
              if rec["status"] == "ok"}
    for op in ("tp", "conv"):
        if (op, "forward", "e3nn") in checks:
            assert checks[(op, "forward", "e3nn")] == "ok"
    # the same model and weights on the reference backend
    assert checks[("model", "inference", "nffk[reference]")] == "ok"
    for impl in ("vesin", "matscipy", "ase"):
        if ("nlist", "build", impl) in checks:
            assert checks[("nlist", "build", impl)] == "ok"


def test_rendering_and_reload(quick_report, tmp_path, capsys):
    path = tmp_path / "saved.json"
    report.write_json(quick_report, path)
    table = tmp_path / "table.md"
    assert cli.main(["bench", "--load", str(path), "--markdown", str(table)]) == 0
    text = table.read_text()
    assert text.count("\n| tiny |") == sum(1 for rec in quick_report["records"])
    assert "copy" in capsys.readouterr().out


def _case(implementations, inputs=lambda seed: (torch.full((4,), float(seed)),)):
    return Case(op="tp", config="synthetic", pass_name="forward", size=4, size_name="batch", make_inputs=inputs,
                implementations=implementations, flops=8.0, bytes=32.0, input_bytes=16.0)


def test_missing_and_failing_peers_are_reported():
    def missing():
        raise PeerMissing("not installed (pip install nothing)")

    def broken():
        def fn(x):
            raise RuntimeError("unsupported configuration")
        return Built(fn)

    case = _case([Implementation("nffk", lambda: Built(lambda x: x * 2, output=lambda x: x * 2)),
                  Implementation("absent", missing), Implementation("broken", broken),
                  Implementation("wrong", lambda: Built(lambda x: x, output=lambda x: x + 1))])
    records = {r["impl"]: r for r in runner.run_case(case, runner.EFFORT["quick"])}
    assert records["nffk"]["status"] == "ok" and records["nffk"]["check"] == "ref"
    assert records["absent"]["status"] == "missing" and "pip install" in records["absent"]["note"]
    assert records["broken"]["status"] == "error" and "unsupported configuration" in records["broken"]["note"]
    assert records["wrong"]["status"] == "ok" and records["wrong"]["check"].startswith("DIFFERS")


def test_timing_groups_fit_the_memory_available():
    names = ["nffk", "e3nn", "cue"]
    gb = 1e9 / runner.PEAK_MARGIN  # peaks counted at PEAK_MARGIN times their first call's
    peaks = {"nffk": 3 * gb, "e3nn": 4 * gb, "cue": 9 * gb}
    assert runner.timing_groups(names, peaks, 17e9 / runner.MEMORY_SHARE) == ([names], {})
    # Together past what timing may use: nffk beside each peer in turn.
    assert runner.timing_groups(names, peaks, 15e9 / runner.MEMORY_SHARE) == ([["nffk", "e3nn"], ["nffk", "cue"]], {})
    available = 11e9 / runner.MEMORY_SHARE
    groups, left_out = runner.timing_groups(names, peaks, available)
    assert groups == [["nffk", "e3nn"]] and list(left_out) == ["cue"]
    assert f"{9 * gb / 1e9:.1f} GB" in left_out["cue"] and f"{available / 1e9:.1f} GB available" in left_out["cue"]
    # Unknown peaks or memory: all together, as before the measurement existed.
    assert runner.timing_groups(names, dict(peaks, nffk=None), 1e9) == ([names], {})
    assert runner.timing_groups(names, peaks, None) == ([names], {})


@pytest.mark.skipif(not allocator.reset_peak(), reason="peak memory needs Linux's /proc/self/clear_refs")
def test_implementations_too_big_together_are_timed_beside_nffk(monkeypatch):
    def allocating(numbers):
        def fn(x):
            return float(torch.ones(numbers).sum()) + float(x.sum())
        return lambda: Built(fn)

    monkeypatch.setattr(allocator, "available_bytes", lambda: 400e6 * runner.PEAK_MARGIN)  # 300 MB of peaks
    case = _case([Implementation("nffk", allocating(1_000)), Implementation("big", allocating(50_000_000)),
                  Implementation("bigger", allocating(60_000_000)), Implementation("huge", allocating(100_000_000))])
    records = {r["impl"]: r for r in runner.run_case(case, runner.EFFORT["quick"])}
    assert records["big"]["peak_bytes"] > 150e6 and records["nffk"]["peak_bytes"] < 50e6
    for name in ("big", "bigger"):
        assert records[name]["status"] == "ok" and records[name]["timed_beside_nffk"]
    assert records["huge"]["status"] == "skipped" and "available" in records["huge"]["note"]
    # nffk ran in both pairs: its times are both groups' rounds.
    assert len(records["nffk"]["times_s"]) == len(records["big"]["times_s"]) + len(records["bigger"]["times_s"])
    fake = {"records": list(records.values())}
    assert any("beside each peer in turn" in line and "synthetic forward" in line for line in report.footnotes(fake))


def test_rotation_never_repeats_a_set_back_to_back():
    seen = []
    rotation = Rotation([(k,) for k in range(3)])
    times = time_interleaved({"a": lambda k: seen.append(k), "b": lambda k: seen.append(k)}, rotation,
                             warmup=1, repeat=4)
    assert [len(t) for t in times.values()] == [4, 4]
    assert all(x != y for x, y in zip(seen, seen[1:]))
    assert rotation_sets(1 << 30, cache_bytes=32 << 20) == 2
    assert rotation_sets(1 << 20, cache_bytes=32 << 20, max_sets=100) == 65
    stats = summarize([3.0, 1.0, 2.0, 10.0])
    assert stats["median_s"] == 2.5 and stats["min_s"] == 1.0 and stats["runs"] == 4


def test_garbage_collection_is_off_while_timing_and_restored_after():
    """Timed rounds run with the cyclic collector off (its pauses would land in random calls);
    warm-up calls and the caller's setting are untouched."""
    import gc
    states = []
    rotation = Rotation([(0,), (1,)])
    assert gc.isenabled()
    time_interleaved({"f": lambda k: states.append(gc.isenabled())}, rotation, warmup=2, repeat=3)
    assert states == [True, True, False, False, False]
    assert gc.isenabled()


def test_the_inputs_device_is_synchronised_when_none_is_named(monkeypatch):
    """A timer given GPU inputs but no device must still wait for the kernels (bench_gpu.py's did
    not, and timed launches). Meta tensors stand in for a GPU's: the timer must name their device."""
    from nffk.bench import timing
    synchronised = []
    monkeypatch.setattr(timing, "synchronize", synchronised.append)
    off_cpu = torch.empty(3, device="meta")
    time_interleaved({"f": lambda *args: None}, Rotation([(1, off_cpu), ([torch.ones(2)], {"x": off_cpu})]),
                     warmup=0, repeat=1)
    assert synchronised == [torch.device("meta")] * 2
    synchronised.clear()
    time_interleaved({"f": lambda x: None}, Rotation([(torch.ones(2),)]), warmup=0, repeat=1)
    assert synchronised == [None, None]


def test_ratios_are_taken_within_each_case():
    """A sweep repeating a main case's config and size is a separate case: each has its own nffk time."""
    def record(impl, seconds, family):
        return dict(op="tp", config="c", size=10, family=family, impl=impl, status="ok", median_s=seconds,
                    flops=None, bytes=100.0, **{"pass": "forward"})
    records = [record("nffk", 1.0, None), record("e3nn", 3.0, None), record("nffk", 2.0, "batch"),
               record("e3nn", 1.0, "batch")]
    runner.derive(records, {"copy_bytes_per_s": 1e3, "matmul_flops_per_s": 1e9})
    assert [r["ratio_vs_nffk"] for r in records] == [1.0, 3.0, 1.0, 0.5]
    assert records[0]["floor_s"] == pytest.approx(0.1) and records[0]["floor_fraction"] == pytest.approx(0.1)
    assert records[0]["gflops_per_s"] is None


def test_the_loss_ops_of_loss_based_passes_are_timed_as_a_bound(quick_report):
    """torch's ops on the output (`out.pow(2).sum()` and its derivatives) are part of every
    implementation's loss-based pass: timed alongside them, without bytes or a floor of their own,
    and the report turns them into the largest ratio any implementation could reach."""
    bound = [r for r in quick_report["records"] if r.get("bound")]
    assert {(r["op"], r["pass"]) for r in bound} == {("tp", "forward+backward"), ("tp", "double backward")}
    for r in bound:
        assert r["status"] == "ok" and r["bytes"] is None and r["floor_fraction"] is None
        assert 0 < r["median_s"] and r["ratio_vs_nffk"] < 1  # a part of nffk's pass
    assert len(report.bounds(quick_report)) == len(bound)


def test_bounds_divide_each_peer_by_the_bound_within_its_case():
    def record(impl, seconds, family=None, **extra):
        return dict(op="tp", config="c", size=10, size_name="batch", family=family, impl=impl, status="ok",
                    median_s=seconds, **{"pass": "forward+backward"}, **extra)
    records = [record("nffk", 2.0), record("e3nn", 30.0), record("cuequivariance", 10.0),
               record("torch loss ops", 3.0, bound=True),
               record("nffk", 1.0, "batch"), record("e3nn", 5.0, "batch"), record("torch loss ops", 0.5, "batch", bound=True)]
    (line,) = report.bounds({"records": records})
    assert "torch loss ops alone take 3000 ms of nffk's 2000" in line
    assert line.endswith("by more than 10x e3nn, 3.33x cuequivariance")
    lines = report.bounds({"records": records}, include_sweeps=True)
    assert len(lines) == 2 and lines[1].endswith("by more than 10x e3nn")


def test_bounds_add_the_kernels_floor_where_the_pass_has_one():
    """With nffk's kernels at their floor as well, a peer's time is divided by bound + floor."""
    def record(impl, seconds, **extra):
        return dict(op="tp", config="c", size=10, size_name="batch", family=None, impl=impl, status="ok",
                    median_s=seconds, **{"pass": "double backward"}, **extra)
    records = [record("nffk", 2.0, floor_s=1.0), record("e3nn", 30.0), record("torch loss ops", 2.0, bound=True)]
    (line,) = report.bounds({"records": records})
    assert line.endswith("by more than 15x e3nn; with the kernels at the floor the bench counts for this pass too "
                         "(1000 ms), by more than 10x e3nn")


def test_unknown_config_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown config"):
        registry.collect(["tp"], ["no-such-config"], "quick")
    with pytest.raises(ValueError, match="unknown op"):
        registry.collect(["nope"], None, "quick")


def test_plots_of_sweeps(tmp_path):
    pytest.importorskip("matplotlib")
    from nffk.bench.plots import plot_sweeps
    records = [dict(op="tp", config=f"high-order-l{l}", family="lmax", params={"lmax": l}, impl=impl, status="ok",
                    median_s=1e-3 * l * k, floor_s=1e-4 * l, **{"pass": "forward"})
               for l in (1, 2, 3) for k, impl in ((1, "nffk"), (2, "e3nn"))]
    fake = {"records": records, "machine": {"cpu": "test"}, "settings": {"device": "cpu", "threads": 1,
                                                                         "dtype": "float32"}, "created": "now"}
    paths = plot_sweeps(fake, tmp_path)
    assert len(paths) == 1
    with open(paths[0], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# Page faults of a 40 MB buffer filled and freed, after ten such buffers: glibc gives each a
# fresh mapping by default (a fault per 4 KiB page), none under "keep" once the heap has grown
# (a freed block is a little short of an aligned request of its size: the first few extend the heap).
_FAULTS_OF_A_FRESH_BUFFER = """
import resource, sys, torch
from nffk.bench import allocator
print(allocator.apply(sys.argv[1]))
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(10_000_000)
    del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
for _ in range(10):
    faults()
print(faults())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the malloc policy is glibc's")
@pytest.mark.parametrize("policy", allocator.POLICIES)
def test_malloc_policy(policy):
    result = subprocess.run([sys.executable, "-c", _FAULTS_OF_A_FRESH_BUFFER, policy], capture_output=True,
                            text=True, check=True)
    applied, faults = result.stdout.split()
    assert applied == policy
    pages = 40e6 / 4096
    if policy == "keep":
        assert int(faults) < 0.1 * pages
    else:
        assert int(faults) > 0.5 * pages


def test_unknown_malloc_policy_is_a_clear_error():
    with pytest.raises(ValueError, match="expected one of keep, system"):
        allocator.apply("jemalloc")


# Resident memory (MB) after a 200 MB buffer is filled and freed under "keep", then after release().
_RESIDENT_AFTER_RELEASE = """
import torch
from nffk.bench import allocator
def resident_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6
allocator.apply("keep")
x = torch.ones(50_000_000)
del x
kept = resident_mb()
allocator.release()
print(kept, resident_mb())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not os.path.exists("/proc/self/statm"),
                    reason="malloc_trim is glibc's; resident memory read from /proc")
def test_release_returns_the_memory_keep_holds():
    result = subprocess.run([sys.executable, "-c", _RESIDENT_AFTER_RELEASE], capture_output=True, text=True,
                            check=True)
    kept, released = map(float, result.stdout.split())
    assert kept - released > 150, (kept, released)
