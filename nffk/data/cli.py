"""`nffk data`: generate the default dataset, import an extended XYZ file, describe a dataset."""
import argparse

from nffk.data.generate import DEFAULT_CONFORMERS_PER_MOLECULE, DEFAULT_ROOT, DEFAULT_STRUCTURES
from nffk.data.sampling import SamplerSettings


def _fractions(text: str):
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated fractions train,val,test; got {text!r}")
    return values


def add_arguments(parser):
    actions = parser.add_subparsers(dest="action", required=True)
    defaults = SamplerSettings()

    generate = actions.add_parser(
        "generate", help="QM9 conformers labelled with GFN2-xTB (resumable: rerun to finish)",
        description="Build the default dataset: QM9 molecules, thermally distorted conformers, GFN2-xTB "
                    "energies and forces (tblite), split by molecule. Deterministic from --seed; an "
                    "interrupted run resumes where it stopped when rerun with the same options.")
    generate.add_argument("--out", default=DEFAULT_ROOT, help=f"dataset folder (default {DEFAULT_ROOT})")
    generate.add_argument("--structures", type=int, default=DEFAULT_STRUCTURES,
                          help=f"structures in all splits (default {DEFAULT_STRUCTURES})")
    generate.add_argument("--molecules", type=int, default=None,
                          help=f"QM9 molecules to use (default structures / {DEFAULT_CONFORMERS_PER_MOLECULE})")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--workers", type=int, default=None, help="labelling processes (default: all cores)")
    generate.add_argument("--split", type=_fractions, default=(0.8, 0.1, 0.1), metavar="TRAIN,VAL,TEST",
                          help="fractions of molecules per split (default 0.8,0.1,0.1)")
    generate.add_argument("--t-min", type=float, default=defaults.t_min, help="lowest sampling temperature, K")
    generate.add_argument("--t-max", type=float, default=defaults.t_max, help="highest sampling temperature, K")
    generate.add_argument("--amplitude", type=float, default=defaults.amplitude,
                          help="displacement RMS of carbon at 300 K, Å")
    generate.add_argument("--md-steps", type=int, default=defaults.md_steps,
                          help="velocity-Verlet steps with xTB forces after the displacement (costs one "
                               "xTB call each)")
    generate.add_argument("--shard-size", type=int, default=1024, help="structures per shard file")
    generate.add_argument("--overwrite", action="store_true",
                          help="replace a dataset in --out that was generated with other options")
    generate.add_argument("--quiet", action="store_true", help="no progress bar")

    imp = actions.add_parser(
        "import", help="build a dataset folder from an extended XYZ file with energies and forces",
        description="Read an extended XYZ file (ase) with energies and forces and write a dataset folder "
                    "like the generated one: split by molecule, reference energies, statistics.")
    imp.add_argument("file", help="extended XYZ file")
    imp.add_argument("--out", required=True, help="dataset folder to create")
    imp.add_argument("--energy-key", default="energy", help="info key of the energy (default energy)")
    imp.add_argument("--forces-key", default="forces", help="per-atom key of the forces (default forces)")
    imp.add_argument("--molecule-key", default=None, help="info key of a molecule id, if the file has one")
    imp.add_argument("--energy-unit", default="eV", help="eV, meV, Hartree, kcal/mol or kJ/mol (default eV)")
    imp.add_argument("--force-unit", default="eV/Å", help="<energy unit>/<Å|Bohr> (default eV/Å)")
    imp.add_argument("--group-by", default="auto", choices=("auto", "molecule", "formula", "structure"),
                     help="what counts as one molecule when splitting (default auto: ids from the file, "
                          "else chemical formula, else each structure)")
    imp.add_argument("--seed", type=int, default=0)
    imp.add_argument("--split", type=_fractions, default=(0.8, 0.1, 0.1), metavar="TRAIN,VAL,TEST")
    imp.add_argument("--overwrite", action="store_true")

    info = actions.add_parser("info", help="sizes, elements and statistics of a dataset folder")
    info.add_argument("root", nargs="?", default=DEFAULT_ROOT, help=f"dataset folder (default {DEFAULT_ROOT})")


def run(args):
    if args.action == "generate":
        from nffk.data.generate import generate_dataset
        sampler = SamplerSettings(t_min=args.t_min, t_max=args.t_max, amplitude=args.amplitude,
                                  md_steps=args.md_steps)
        try:
            root = generate_dataset(args.out, num_structures=args.structures, num_molecules=args.molecules,
                                    seed=args.seed, fractions=args.split, sampler=sampler,
                                    workers=args.workers, shard_size=args.shard_size,
                                    overwrite=args.overwrite, progress=not args.quiet)
        except KeyboardInterrupt as interrupt:
            print(interrupt)
            return 130
        return show(root)
    if args.action == "import":
        from nffk.data.extxyz import import_extxyz
        root = import_extxyz(args.file, args.out, energy_key=args.energy_key, forces_key=args.forces_key,
                             molecule_key=args.molecule_key, energy_unit=args.energy_unit,
                             force_unit=args.force_unit, group_by=args.group_by, seed=args.seed,
                             fractions=args.split, overwrite=args.overwrite)
        return show(root)
    return show(args.root)


def show(root) -> int:
    from rich.console import Console
    from rich.table import Table

    from nffk.data.store import SPLITS, read_meta
    from ase.data import chemical_symbols

    meta = read_meta(root)
    console = Console()
    console.print(f"[bold]{root}[/bold]: {meta.get('source', '?')} (seed {meta.get('seed', '?')})")
    sizes = Table("split", "structures", "atoms", "molecules", "atoms/structure")
    for split in SPLITS:
        entry = meta["splits"][split]
        mean = entry["atoms"] / max(entry["structures"], 1)
        sizes.add_row(split, f"{entry['structures']:,}", f"{entry['atoms']:,}", f"{entry['molecules']:,}", f"{mean:.1f}")
    console.print(sizes)
    refs = Table("element", "reference energy (eV)")
    for z, e in meta["reference_energies"].items():
        refs.add_row(chemical_symbols[int(z)], f"{e:.4f}")
    console.print(refs)
    stats = Table("training statistic (reference energies subtracted)", "value")
    units = {"energy": "eV", "force": "eV/Å"}
    for name, value in meta["statistics"].items():
        unit = next((u for prefix, u in units.items() if name.startswith(prefix)), "")
        stats.add_row(name, f"{value:.4f} {unit}")
    console.print(stats)
    if meta.get("dropped_structures"):
        console.print(f"[yellow]{meta['dropped_structures']} structures could not be labelled and were dropped")
    rejected = sum(meta["splits"][s].get("rejected_attempts", 0) for s in SPLITS)
    if "rejected_attempts" in meta["splits"]["train"]:
        console.print(f"rejected and redrawn conformers (xTB failure or |F| > max_force): {rejected}")
    return 0
