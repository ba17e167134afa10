"""`nffk report SWEEP_DIR... --out DIR`: fit scaling laws to finished (or running) sweeps and
write report.md, report.json and plots; prints the exponents table."""
from pathlib import Path


def _l_inf(text: str):
    if text == "fit":
        return "fit"
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--l-inf must be 'fit' or a number >= 0, got {text!r}") from None
    if not value >= 0:
        raise ValueError(f"--l-inf must be 'fit' or a number >= 0, got {text!r}")
    return value


def add_arguments(parser):
    parser.add_argument("sweep_dirs", nargs="+", type=Path, metavar="SWEEP_DIR",
                        help="sweep directories (several: shards or sweeps to fit together)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: SWEEP_DIR/report of the first sweep)")
    parser.add_argument("--drop-fraction", type=float, default=0.05,
                        help="drop each run's first fraction of steps (default 0.05)")
    parser.add_argument("--bootstrap", type=int, default=200, metavar="N",
                        help="bootstrap resamples for the intervals (default 200; 0 for none)")
    parser.add_argument("--ci", type=float, default=0.95, help="interval level (default 0.95)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--l-inf", default="0", metavar="VALUE",
                        help="frontier L_inf: a fixed value (default 0, as in the study) or 'fit'")
    parser.add_argument("--keep-edges", action="store_true",
                        help="also fit frontier points set by the smallest and largest model")
    parser.add_argument("--huber-delta", type=float, default=1e-3,
                        help="Huber threshold on log-loss residuals for L(N, D) (default 1e-3)")
    parser.add_argument("--synthetic", action="store_true",
                        help="first write a synthetic sweep from known laws into SWEEP_DIR (if it has "
                             "none), to try the report without training")


def run(args):
    from rich.console import Console

    console = Console(stderr=True)
    try:
        settings = dict(drop_fraction=args.drop_fraction, n_boot=args.bootstrap, ci=args.ci, seed=args.seed,
                        frontier_l_inf=_l_inf(args.l_inf), trim_edges=not args.keep_edges,
                        huber_delta=args.huber_delta)
        if args.bootstrap < 0:
            raise ValueError(f"--bootstrap must be >= 0, got {args.bootstrap}")
        if args.synthetic:
            from nffk.scaling.synthetic import write_synthetic_sweep

            if len(args.sweep_dirs) != 1:
                raise ValueError("--synthetic takes exactly one SWEEP_DIR")
            if not (args.sweep_dirs[0] / "sweep.json").exists():
                with console.status(f"writing a synthetic sweep into {args.sweep_dirs[0]}"):
                    write_synthetic_sweep(args.sweep_dirs[0])
        out = args.out or args.sweep_dirs[0] / "report"
        from nffk.scaling.report import print_exponents_table, write_report

        with console.status("fitting scaling laws (bootstrap) and plotting"):
            report = write_report(args.sweep_dirs, out, **settings)
    except ValueError as err:
        console.print(f"[red]nffk report: {err}[/red]")
        return 2
    print_exponents_table(report, Console())
    for entry in report["architectures"].values():
        for name, reason in entry["errors"].items():
            console.print(f"[yellow]{entry['label']}: {name} not fitted: {reason}[/yellow]")
    console.print(f"report: {out / 'report.md'}  (numbers: report.json, plots: {len(report['plots'])} PNG)")
    return 0


