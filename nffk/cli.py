"""The `nffk` command. Each subcommand lives next to the code it drives and is imported lazily,
so `nffk --help` stays fast and a missing optional dependency only affects its own subcommand."""
import argparse
import importlib
import sys

# name -> (module, one-line help). The module defines `add_arguments(parser)` and `run(args)`.
SUBCOMMANDS = {
    "info": ("nffk.cli_info", "show the installed backends, threads and versions"),
    "data": ("nffk.data.cli", "generate, import or describe a dataset (generate | import | info)"),
    "train": ("nffk.train.cli", "train one model (one pass, validation at log-spaced steps, resumable)"),
    "scale": ("nffk.scaling.cli_scale", "run a scaling study end to end: dataset, sweep, report (resumable)"),
    "report": ("nffk.scaling.cli_report", "fit scaling laws to sweep results and write a report with plots"),
    "bench": ("nffk.bench.cli", "time nffk's kernels against the installed peers and the machine's floors"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="nffk", description="nffk: an equivariance engine for PyTorch")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        # Only the chosen subcommand's module is imported.
        sub.add_parser(name, help=help_text, add_help=False)
    args, rest = parser.parse_known_args(argv)
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    command_parser = argparse.ArgumentParser(prog=f"nffk {args.command}",
                                             description=SUBCOMMANDS[args.command][1])
    module.add_arguments(command_parser)
    return int(module.run(command_parser.parse_args(rest)) or 0)


if __name__ == "__main__":
    sys.exit(main())
