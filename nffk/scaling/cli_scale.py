"""`nffk scale`: a scaling study end to end — dataset, sweep of architectures x widths (x data
budgets), report with the fitted exponents.

    nffk scale --preset default                       # the README's main job (< 20 min on 2 cores)
    nffk scale --preset smoke --out /tmp/smoke        # a one-minute check of the pipeline
    nffk scale --archs MPNN Equivariant-lmax3 --widths 8 16 32 --data data/mine --out runs/mine
    nffk scale --grid my_grid.json --data data/mine   # a grid file (see nffk.scaling.presets)
    nffk scale --preset large --shard 2/8             # machine 2 of 8 (own directory) ...
    nffk scale --merge runs/large-shard*of8 --out runs/large   # ... then merge and report

Every run is one pass over the training data with validation at log-spaced steps, so each run
gives many (N, D, C, loss) points. Runs start from the most expensive (the last architecture of
the grid, widest first), so parallel workers finish together. Rerunning the same command resumes: finished runs are
skipped, an interrupted run continues from its checkpoint; results are never overwritten.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def add_arguments(parser):
    from nffk.scaling.presets import PRESETS

    parser.add_argument("--preset", choices=sorted(PRESETS), default="default",
                        help="; ".join(f"{p.name}: {p.description}" for p in PRESETS.values()))
    parser.add_argument("--data", type=Path, default=None,
                        help="dataset folder (default: the preset's, generated if missing)")
    parser.add_argument("--out", type=Path, default=None, help="sweep directory (default runs/<preset>)")
    parser.add_argument("--archs", nargs="+", default=None, metavar="ARCH",
                        help="architectures instead of the preset's: MPNN, EGNN, Equivariant-lmax<L>")
    parser.add_argument("--widths", nargs="+", type=int, default=None, metavar="W",
                        help="widths for every architecture instead of the preset's")
    parser.add_argument("--data-budgets", nargs="+", type=int, default=None, metavar="ATOMS",
                        help="also sweep the training-set size (atoms; one pass each)")
    parser.add_argument("--grid", type=Path, default=None, help="a JSON grid file instead of the preset's grid")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="training settings for every run, e.g. forces=conservative batch_size=32")
    parser.add_argument("--shard", default=None, metavar="K/N", help="run only shard K of N of the grid")
    parser.add_argument("--workers", type=int, default=None,
                        help="training processes sharing the sweep (default: one per core on CPU, 1 on GPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process "
                        "(default: cores / workers)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--merge", nargs="+", type=Path, default=None, metavar="DIR",
                        help="merge these sweep directories (shards) into --out and report")
    parser.add_argument("--no-report", action="store_true", help="train only")


def _settings(pairs) -> dict:
    import json

    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE, got {pair!r}")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value  # a bare string such as forces=conservative
    from nffk.train import TrainConfig

    reserved = {"arch", "width", "lmax", "data_budget"} & set(settings)
    if reserved:
        raise ValueError(f"--set cannot change {sorted(reserved)}: use --archs, --widths, --data-budgets")
    TrainConfig.from_dict({"arch": "MPNN", "width": 1, **settings})  # unknown keys and bad values fail here
    return settings


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def run(args):
    from rich.console import Console

    console = Console(stderr=True)
    try:
        return _run(args, console)
    except ValueError as err:
        console.print(f"[red]nffk scale: {err}[/red]")
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: rerun the same command to resume (finished runs are kept)[/yellow]")
        return 130


def _run(args, console) -> int:
    import torch

    from nffk.scaling.presets import PRESETS, grid_for, grid_from_json
    from nffk.scaling.sweep import Sweep, merge, parse_shard

    preset = PRESETS[args.preset]
    started = time.perf_counter()
    timings = {}
    if args.merge:
        if args.out is None:
            raise ValueError("--merge needs --out (a new directory)")
        merge(args.merge, args.out)
        console.print(f"merged {len(args.merge)} sweep directories into {args.out}")
        return _report(args.out, preset, console, timings, started)

    options = _settings(args.set)
    if args.grid is not None:
        specs, _ = grid_from_json(args.grid)
        if options:
            raise ValueError("--set applies to presets; put settings in the grid file's 'options'")
    else:
        specs = grid_for(preset, args.archs, args.widths, args.data_budgets, options)
    shard = parse_shard(args.shard) if args.shard else None
    out = args.out or Path("runs") / (preset.name if shard is None else f"{preset.name}-shard{shard[0]}of{shard[1]}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cores = _cores()
    todo = len(specs) if shard is None else len(specs[shard[0] - 1::shard[1]])
    workers = args.workers or (1 if device.startswith("cuda") else max(1, min(cores, todo)))
    threads = args.threads or max(1, cores // workers)
    if workers < 1 or threads < 1:
        raise ValueError(f"--workers and --threads must be >= 1, got {workers} and {threads}")

    # 1. dataset -----------------------------------------------------------------------------------
    start = time.perf_counter()
    data = _dataset(args.data, preset, console)
    timings["dataset"] = time.perf_counter() - start

    # 2. sweep -------------------------------------------------------------------------------------
    sweep = Sweep(out, specs, meta={"preset": preset.name, "data": str(data), "device": device,
                                     "command": "nffk scale " + " ".join(sys.argv[2:] if len(sys.argv) > 2 else [])})
    sweep.record_timing("dataset", timings["dataset"])
    before = sweep.summary()
    console.print(f"[bold]{preset.name}[/bold]: {len(specs)} runs ({before['done']} done) -> {out}; "
                  f"{workers} worker(s) x {threads} thread(s) on {device}"
                  + (f"; shard {shard[0]}/{shard[1]}: {todo} runs" if shard else ""))
    from nffk.scaling.trainer import SweepTrainer

    trainer = SweepTrainer(data, device=device, threads=threads, progress=workers == 1)
    start = time.perf_counter()
    try:
        sweep.run(trainer, shard=shard, workers=workers, on_error="continue", order=longest_first(specs))
    finally:
        timings["training"] = time.perf_counter() - start
        sweep.record_timing("training", timings["training"])
    summary = sweep.summary()
    failed = [run_id for run_id, status in sweep.statuses().items() if status == "failed"]
    for run_id in failed:
        console.print(f"[red]run {run_id} failed[/red]: see {out / 'runs' / run_id / 'run.json'}")
    console.print(f"runs: {summary['done']} done, {summary['failed']} failed, "
                  f"{summary['pending'] + summary['interrupted'] + summary['running']} left")
    if shard is not None:
        console.print(f"shard {shard[0]}/{shard[1]} finished; when every shard is done: "
                      f"nffk scale --merge <shard dirs> --out <dir>")
        return 1 if failed else 0
    if args.no_report:
        return 1 if failed else 0
    code = _report(out, preset, console, timings, started, sweep)
    return code or (1 if failed else 0)


def longest_first(specs) -> list[str]:
    """Run ids from the (probably) longest run to the shortest, so that parallel workers finish
    together: grids list architectures from the cheapest to the most expensive (as the presets
    do), and within one architecture a wider model or a larger data budget costs more."""
    labels = list(dict.fromkeys(s.label for s in specs))
    cost = {s.run_id: (labels.index(s.label), s.data_budget or float("inf"), s.width) for s in specs}
    return sorted(cost, key=cost.get, reverse=True)


def _dataset(data, preset, console) -> Path:
    from nffk.data import generate_dataset

    if data is not None:
        if not (Path(data) / "meta.json").exists():
            raise ValueError(f"{data} is not a dataset folder (no meta.json); create one with "
                             "`nffk data generate` or `nffk data import`")
        return Path(data)
    root = Path(preset.data_root)
    if not (root / "meta.json").exists():
        console.print(f"generating the dataset {root}: {preset.data_structures} QM9 conformers labelled with "
                      "GFN2-xTB (once; resumable)")
        generate_dataset(root, num_structures=preset.data_structures, progress=True)
    return root


def _report(out: Path, preset, console, timings: dict, started: float, sweep=None) -> int:
    from rich.console import Console
    from rich.table import Table

    from nffk.scaling.report import print_exponents_table, write_report

    start = time.perf_counter()
    with console.status("fitting scaling laws and plotting"):
        report = write_report([out], out / "report", **preset.report)
    timings["report"] = time.perf_counter() - start
    if sweep is not None:
        sweep.record_timing("report", timings["report"])
    print_exponents_table(report, Console())
    for entry in report["architectures"].values():
        for name, reason in entry["errors"].items():
            console.print(f"[yellow]{entry['label']}: {name} not fitted: {reason}[/yellow]")
    table = Table(title="stage timings (this command)")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for stage, seconds in timings.items():
        table.add_row(stage, f"{seconds:.1f}")
    table.add_row("total", f"{time.perf_counter() - started:.1f}")
    Console().print(table)
    console.print(f"report: {out / 'report' / 'report.md'}  (numbers: report.json, plots: "
                  f"{len(report['plots'])} PNG)")
    return 0
