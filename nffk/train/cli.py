"""`nffk train`: train one model on a dataset, one pass, validation at log-spaced steps.

    nffk train --arch Equivariant --lmax 2 --width 16                  # default dataset, runs/train/<name>
    nffk train --arch MPNN --width 64 --data data/mine --out runs/mpnn64 --forces conservative
    torchrun --nproc-per-node 2 -m nffk.cli train --arch EGNN --width 32   # data-parallel

Running the same command again resumes an interrupted run (or reports a finished one).
"""
import argparse
from pathlib import Path

from nffk.train.config import DTYPES, TrainConfig


def add_arguments(parser):
    from nffk.data import DEFAULT_ROOT
    from nffk.models import ARCHITECTURES, FORCE_MODES

    defaults = TrainConfig("MPNN", 1)
    parser.add_argument("--arch", required=True, choices=sorted(ARCHITECTURES), help="architecture")
    parser.add_argument("--width", required=True, type=int, help="the width knob (channels per layer)")
    parser.add_argument("--lmax", type=int, default=None, help="irrep order of Equivariant (1..6)")
    parser.add_argument("--data", type=Path, default=Path(DEFAULT_ROOT),
                        help=f"dataset folder (default {DEFAULT_ROOT}, generated if missing)")
    parser.add_argument("--out", type=Path, default=None, help="run directory (default runs/train/<arch>-w<width>)")
    parser.add_argument("--forces", choices=FORCE_MODES, default=defaults.forces,
                        help="direct force head (default, as in the study) or -dE/dx")
    parser.add_argument("--data-budget", type=int, default=None, metavar="ATOMS",
                        help="train on the first ATOMS atoms of the training split (default: all)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="structures per step")
    parser.add_argument("--lr", type=float, default=None, help="learning rate at the base width "
                        "(default: the architecture's tuned value, see nffk.train.DEFAULT_LR)")
    parser.add_argument("--no-mup", action="store_true", help="one learning rate for all parameters")
    parser.add_argument("--cutoff", type=float, default=defaults.cutoff, help="neighbour cutoff in Å")
    parser.add_argument("--evals", type=int, default=defaults.n_evals, help="validation points (log-spaced)")
    parser.add_argument("--val-structures", type=int, default=defaults.val_structures,
                        help="validation sample size (0: the whole validation split)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--dtype", choices=DTYPES, default=defaults.dtype)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available; "
                        "under torchrun cuda:<local rank>)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader processes building graphs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    # testing hook: stop (checkpointed) after this many steps, as if interrupted
    parser.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)


def _device(requested):
    import os

    import torch

    if requested:
        return requested
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def run(args):
    import json
    import os

    from rich.console import Console

    console = Console(stderr=True)
    main_process = int(os.environ.get("RANK", "0")) == 0
    try:
        config = TrainConfig(arch=args.arch, width=args.width, lmax=args.lmax, forces=args.forces,
                             data_budget=args.data_budget, batch_size=args.batch_size, lr=args.lr,
                             mup=not args.no_mup, cutoff=args.cutoff, n_evals=args.evals,
                             val_structures=args.val_structures, seed=args.seed, dtype=args.dtype,
                             device=_device(args.device), num_workers=args.workers, threads=args.threads)
        from nffk.models import build_model  # noqa: F401  (arguments are checked by the model)

        if config.arch == "Equivariant" and config.lmax is None:
            raise ValueError("--arch Equivariant needs --lmax (1..6)")
        if config.arch != "Equivariant" and config.lmax is not None:
            raise ValueError(f"--lmax applies to Equivariant only, not {config.arch}")
        name = f"{config.arch}" + (f"-lmax{config.lmax}" if config.lmax is not None else "") + f"-w{config.width}"
        out = args.out or Path("runs") / "train" / name
        ensure_dataset(args.data, console, main_process)
        from nffk.train.loop import train

        result = train(config, args.data, out, run_id=name, progress=not args.no_progress,
                       stop_after=args.stop_after)
    except ValueError as err:
        console.print(f"[red]nffk train: {err}[/red]")
        return 2
    if main_process:
        keys = ("finished", "steps", "total_steps", "params", "atoms_seen", "flops", "kappa", "val_loss", "wall",
                "steps_per_second")
        print(json.dumps({k: result[k] for k in keys}))
        console.print(f"metrics: {out / 'metrics.jsonl'}  model: {out / 'model.pt'}")
    return 0


def ensure_dataset(root: Path, console, main_process: bool = True) -> None:
    """Generate the default dataset when `root` is the default folder and holds none yet."""
    from nffk.data import DEFAULT_ROOT, generate_dataset

    if (Path(root) / "meta.json").exists():
        return
    if Path(root) != Path(DEFAULT_ROOT):
        raise ValueError(f"{root} is not a dataset folder (no meta.json); create one with "
                         "`nffk data generate` or `nffk data import`")
    if not main_process:
        raise ValueError(f"{root} is missing: generate it first (`nffk data generate`) before torchrun")
    console.print(f"generating the default dataset in {root} (QM9 conformers, GFN2-xTB labels)")
    generate_dataset(root)
