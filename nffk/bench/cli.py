"""`nffk bench`: time nffk's kernels side by side with the installed peers and the machine's floors.

    nffk bench --quick                               # smoke test, about a minute on a laptop
    nffk bench --ops tp,sh --json out.json --plots plots/
    nffk bench --ops tp --configs mace-medium --full --threads 1
    nffk bench --load out.json --markdown table.md  # re-render a saved run without re-running
"""
from __future__ import annotations

import os
import shlex
import sys

import torch

from nffk.bench import allocator, registry, report
from nffk.bench.runner import derive, run as run_cases


def add_arguments(parser):
    parser.description = __doc__.split("\n\n")[0]
    parser.epilog = ("Peers that are not installed are reported as missing. Timing: warm-up, then rounds in which "
                     "every implementation runs once on the next of several rotated input sets; the median per "
                     "implementation is reported. See bench/NOTES.md for how to read the table.")
    parser.add_argument("--ops", default=",".join(op for op in registry.OPS if op != "model"),
                        help=f"comma-separated ops among {','.join(registry.OPS)} (default: all with cases)")
    parser.add_argument("--configs", default=None,
                        help="comma-separated config names (default: each op's defaults for the mode; "
                             "--list shows them)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="mode", const="quick",
                      help="small sizes and few repeats: a smoke test")
    size.add_argument("--full", action="store_const", dest="mode", const="full",
                      help="the full sizes (e.g. 10,000 edges per tensor product) and more repeats")
    parser.set_defaults(mode="default")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--malloc", default="keep", choices=allocator.POLICIES,
                        help="keep (default): glibc keeps freed memory for reuse, as a caching allocator "
                             "(jemalloc, tcmalloc) would, for every implementation alike; system: the C library's "
                             "default, which gives each big temporary fresh pages. Set for the whole process, so "
                             "it stays in effect after an in-process call (see nffk/bench/allocator.py)")
    parser.add_argument("--reference", action="store_true",
                        help="also time nffk's pure-torch reference backend where 'auto' picks a kernel")
    parser.add_argument("--json", metavar="FILE", help="write the full report (machine, versions, every time) here")
    parser.add_argument("--markdown", metavar="FILE", help="write the table as Markdown here")
    parser.add_argument("--plots", metavar="DIR",
                        help="also run the sweeps (lmax 1..6, batch sizes) and write PNG plots here")
    parser.add_argument("--load", metavar="FILE", help="re-render a report saved with --json instead of running")
    parser.add_argument("--list", action="store_true", help="list ops, configs and defaults, then exit")


def _command_line() -> str:
    """How this run was started, as a person would type it."""
    argv = list(sys.argv)
    if argv and os.path.basename(argv[0]) in ("cli.py", "nffk"):
        argv[0] = "nffk"
    elif argv:
        argv[0] = os.path.relpath(argv[0]) if os.path.isabs(argv[0]) else argv[0]
    return " ".join(shlex.quote(a) for a in argv)


def _split(text):
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def list_cases() -> None:
    for op in registry.OPS:
        module = registry.op_module(op)
        summary = " ".join((module.__doc__ or "").split("\n\n")[0].split())
        print(f"{op}: {summary.split('. ')[0].rstrip('.')}")
        if not module.CONFIGS:
            print("    (no cases yet)")
        for mode in registry.MODES:
            print(f"    {mode:8s} defaults: {', '.join(module.DEFAULTS[mode]) or '-'}")
        print(f"    configs: {', '.join(registry.config_names(module)) or '-'}")


def run(args) -> int:
    if args.list:
        list_cases()
        return 0
    if args.load:
        result = report.read_json(args.load)
        derive(result["records"], result["floors"])  # ratios and rates again, from the saved times
    else:
        if args.threads is not None:
            if args.threads < 1:
                raise SystemExit("nffk bench: --threads must be at least 1")
            torch.set_num_threads(args.threads)
        device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                              ("cpu" if args.device == "auto" else args.device))
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("nffk bench: --device cuda but torch sees no CUDA device")
        ops = _split(args.ops)
        try:
            cases = registry.collect(ops, _split(args.configs), args.mode, device, getattr(torch, args.dtype),
                                     sweeps=bool(args.plots), reference=args.reference)
        except ValueError as error:
            raise SystemExit(f"nffk bench: {error}")
        for op in ops:
            if not any(c.op == op for c in cases):
                print(f"nffk bench: {op}: no cases to run "
                      f"({'none registered yet' if not registry.op_module(op).CONFIGS else 'none selected'})",
                      file=sys.stderr)
        if not cases:
            return 1
        load, cores = (os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0), os.cpu_count() or 1
        if load > cores:
            advice = "; multi-threaded ones are inflated most (try --threads 1)" if torch.get_num_threads() > 1 else ""
            print(f"nffk bench: warning: the machine is loaded (load average {load:.1f} on {cores} cores): times "
                  f"will be noisy{advice}", file=sys.stderr)
        malloc = allocator.apply(args.malloc)
        result = run_cases(cases, args.mode, device, getattr(torch, args.dtype),
                           command=_command_line())
        result["settings"]["malloc"] = malloc
    report.print_table(result)
    if args.json:
        report.write_json(result, args.json)
        print(f"report written to {args.json}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(report.markdown(result))
        print(f"table written to {args.markdown}")
    if args.plots:
        from nffk.bench.plots import plot_sweeps
        paths = plot_sweeps(result, args.plots)
        print(f"{len(paths)} plot(s) written to {args.plots}" if paths else "no sweeps in this report: no plots")
    return 0
