"""The scaling-study models side by side: parameters, kappa, training speed, symmetry errors.

    python bench/bench_models.py                       # the default preset's grid, default dataset
    python bench/bench_models.py --archs MPNN Equivariant-lmax2 --widths 8 16 --batch-size 16

For each architecture and width: N (parameters), kappa (forward FLOPs per parameter per atom, from
the exact per-batch FLOP model on the dataset's neighbour counts), training steps/s (forward,
loss, backward, optimiser step; wall time and CPU time of this process — on a shared machine the
CPU time is the steadier estimate of a quiet machine's wall time), a projection of one training
pass over the dataset with the preset's validation, and the symmetry errors of energies and forces
under a random rotation (float64; energy per atom over the model's energy scale, forces over the
largest force; the MPNN has no built-in symmetry, so its errors are of order one).
"""
import argparse
import time

import numpy as np
import torch

from nffk import o3
from nffk.data import collate, load_dataset
from nffk.models import build_model
from nffk.scaling.presets import PRESETS, parse_architecture
from nffk.scaling.points import arch_label
from nffk.train import DEFAULT_LR, Normalisation, loss_terms, make_optimizer
from nffk.train.compute import FlopModel


def steps_per_second(model, batches, norm, lr, repeat):
    optimizer = make_optimizer(model, lr)
    optimizer.train()

    def step(batch):
        loss = loss_terms(model(batch), batch, norm).loss(batch.num_atoms.shape[0], batch.positions.shape[0])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step(batches[0])  # warm-up
    wall, cpu = time.perf_counter(), time.process_time()
    for k in range(repeat):
        step(batches[k % len(batches)])
    return repeat / (time.perf_counter() - wall), repeat / (time.process_time() - cpu)


def validation_seconds(model, batches, repeat=2):
    model.eval()
    cpu = time.process_time()
    with torch.no_grad():
        for _ in range(repeat):
            for batch in batches:
                model(batch)
    model.train()
    return (time.process_time() - cpu) / repeat


def symmetry_errors(model, structures, cutoff):
    model = model.double().eval()
    R = o3.rand_matrix(dtype=torch.float64)
    batch = collate(structures, cutoff, torch.float64)
    moved = collate([type(s)(**{**vars(s), "positions": s.positions @ R.numpy().T}) for s in structures], cutoff,
                    torch.float64)
    with torch.no_grad():
        a, b = model(batch), model(moved)
    # per atom, in the model's energy unit (the training RMS): comparable across models
    energy = float(((b["energy"] - a["energy"]).abs() / batch.num_atoms).max() / model.energy_scale)
    forces = float((b["forces"] - a["forces"] @ R.T).norm(dim=-1).max() / a["forces"].norm(dim=-1).max())
    return energy, forces


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/qm9-xtb")
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument("--archs", nargs="+", default=None)
    parser.add_argument("--widths", nargs="+", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    options = preset.options
    batch_size = args.batch_size or options["batch_size"]
    cutoff = options["cutoff"]
    train_set, val_set = load_dataset(args.data, "train"), load_dataset(args.data, "val")
    norm = Normalisation.from_statistics(train_set.statistics)
    rng = np.random.default_rng(0)
    picks = [rng.choice(len(train_set), batch_size, replace=False) for _ in range(4)]
    batches = [collate([train_set[int(i)] for i in p], cutoff) for p in picks]
    val_count = min(options["val_structures"] or len(val_set), len(val_set))
    val_batches = [collate([val_set[i] for i in range(k, min(k + 64, val_count))], cutoff)
                   for k in range(0, val_count, 64)]
    edges_per_atom = sum(b.senders.shape[0] for b in batches) / sum(b.positions.shape[0] for b in batches)
    atoms_per_structure = train_set.total_atoms / len(train_set)
    steps = len(train_set) // batch_size
    evals = options["n_evals"]
    print(f"{args.data}: {len(train_set)} training structures, batch {batch_size}, cutoff {cutoff} Å, "
          f"{edges_per_atom:.1f} edges/atom; one pass = {steps} steps + {evals} validations of {val_count}; "
          f"{args.threads} thread(s)")
    print(f"{'model':20s} {'width':>5s} {'N':>9s} {'kappa':>7s} {'steps/s':>8s} {'(cpu)':>7s} "
          f"{'pass (cpu s)':>12s} {'E rot err':>10s} {'F rot err':>10s}")
    archs = [parse_architecture(a) for a in args.archs] if args.archs else preset.architectures
    for entry in archs:
        arch, lmax = (entry, None) if isinstance(entry, str) else entry
        label = arch_label(arch, lmax)
        for width in args.widths or preset.widths[label]:
            torch.manual_seed(0)
            model = build_model(arch, width, lmax, elements=train_set.meta["elements"], cutoff=cutoff,
                                avg_num_neighbors=edges_per_atom, statistics=train_set.statistics,
                                reference_energies=train_set.reference_energies)
            flops = FlopModel.measure(model, [train_set[int(i)] for i in picks[0][:8]], cutoff)
            kappa = flops.kappa(model.num_parameters, edges_per_atom, atoms_per_structure)
            wall_rate, cpu_rate = steps_per_second(model, batches, norm, DEFAULT_LR[arch], args.repeat)
            validation = validation_seconds(model, val_batches)
            projected = steps / cpu_rate + evals * validation
            energy, force = symmetry_errors(model, [train_set[int(i)] for i in picks[0][:4]], cutoff)
            print(f"{label:20s} {width:5d} {model.num_parameters:9d} {kappa:7.1f} {wall_rate:8.2f} {cpu_rate:7.2f} "
                  f"{projected:12.0f} {energy:10.1e} {force:10.1e}", flush=True)


if __name__ == "__main__":
    main()
