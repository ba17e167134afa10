"""A NequIP-like interaction layer, nffk's fused conv against the same layer assembled from e3nn
modules (gather -> e3nn TensorProduct -> index_add), on the CPU.

Layer: node features 32x0e+32x0o+32x1o+32x1e+32x2e+32x2o (learnable, as if from a previous layer),
edge spherical harmonics 0e+1o+2e of r_ij, per-edge weights from a radial MLP (8 Bessel functions
x polynomial cutoff -> 64 -> SiLU -> weight_numel; one plain-torch module shared by both sides),
the channel-wise (uvu) tensor product to every irrep up to l=2 summed into receivers, and an
energy read out from the scalar outputs. Passes:

    forward      energy, no autograd graph
    fwd+bwd      energy, backward to positions and parameters
    train step   energy, forces = -dE/dpositions (create_graph), loss on the forces, backward
    conv *       the same three on the message passing alone: node features, SH and weights are
                 leaves ("forces" are the gradient w.r.t. the SH), no MLP or SH evaluation

Systems: a periodic box of random atoms (~30 neighbours within the 5 Å cutoff), numbered at
random ("periodic", no locality in the gathers) or cell by cell ("periodic-sorted", as supercells
and sorted MD snapshots are), and a batch of small random molecules (9-29 atoms, ~QM9 density). Times are medians of interleaved repeats in
one process. Peak memory (--memory) is measured for each (system, pass, implementation) in a
fresh process: the peak resident set during one step (VmHWM, reset through /proc/self/clear_refs
just before it) minus the resident set before it, after a warm-up step on a tiny system (e3nn's
code generation) and after the inputs are built (Linux only).

    python bench/bench_conv_layer.py [--atoms 5000] [--neighbors 30] [--molecules 128] [--repeat 5]
                                     [--threads N] [--passes ...] [--memory] [--no-e3nn]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import numpy as np  # noqa: E402
import torch  # noqa: E402

import nffk.nn  # noqa: E402
from nffk.ops.conv import ConvGraph, conv  # noqa: E402
from nffk.ops.neighbor_list import edge_vectors, neighbor_list  # noqa: E402
from nffk.ops.spherical_harmonics import spherical_harmonics  # noqa: E402

NODE = "32x0e+32x0o+32x1o+32x1e+32x2e+32x2o"
SH = "0e+1o+2e"
CUTOFF = 5.0
LAYER_PASSES = ("forward", "fwd+bwd", "train step")
CONV_PASSES = ("conv forward", "conv fwd+bwd", "conv train step")
PASSES = LAYER_PASSES + CONV_PASSES


# ------------------------------------------------------------------------------------------------
# Systems
# ------------------------------------------------------------------------------------------------
def periodic_system(atoms: int, neighbors: float, seed: int = 0, order: str = "random") -> dict:
    """Random atoms in a cubic periodic box, dense enough for ~`neighbors` within CUTOFF.

    order="random": atoms numbered at random (no locality: the worst case for gathers);
    "space": numbered cell by cell (cells of CUTOFF, x-major), as a supercell built by repetition
    or a spatially sorted MD snapshot is."""
    density = neighbors / (4 / 3 * math.pi * CUTOFF ** 3)
    length = (atoms / density) ** (1 / 3)
    positions = torch.tensor(np.random.default_rng(seed).uniform(0, length, (atoms, 3)), dtype=torch.float32)
    if order == "space":
        cells = max(1, int(length // CUTOFF))
        index = (positions / length * cells).long().clamp(max=cells - 1)
        key = (index[:, 0] * cells + index[:, 1]) * cells + index[:, 2]
        positions = positions[torch.sort(key, stable=True).indices]
    cell = torch.eye(3) * length
    pairs = neighbor_list(positions, CUTOFF, cell=cell)
    return {"positions": positions, "cell": cell, "senders": pairs.senders, "receivers": pairs.receivers,
            "shifts": pairs.shifts.to(torch.float32), "batch": None}


def molecule_batch(count: int, seed: int = 0) -> dict:
    """`count` random compact molecules of 9-29 atoms (0.1 atoms / Å^3), batched without a cell."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(9, 30, count)
    positions = []
    for n in sizes:
        radius = (3 * n / (4 * math.pi * 0.1)) ** (1 / 3)
        direction = rng.normal(size=(n, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        positions.append(direction * radius * rng.uniform(0, 1, (n, 1)) ** (1 / 3))
    positions = torch.tensor(np.concatenate(positions), dtype=torch.float32)
    batch = torch.repeat_interleave(torch.arange(count), torch.tensor(sizes))
    pairs = neighbor_list(positions, CUTOFF, batch=batch)
    return {"positions": positions, "cell": None, "senders": pairs.senders, "receivers": pairs.receivers,
            "shifts": None, "batch": batch}


# ------------------------------------------------------------------------------------------------
# The layer
# ------------------------------------------------------------------------------------------------
class Radial(torch.nn.Module):
    """Bessel basis x polynomial cutoff -> MLP -> per-edge weights (plain torch, shared by both sides)."""

    def __init__(self, weight_numel: int, num_basis: int = 8, hidden: int = 64):
        super().__init__()
        self.register_buffer("frequencies", torch.arange(1, num_basis + 1) * math.pi / CUTOFF)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(num_basis, hidden), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, weight_numel))

    def forward(self, distance):
        d = distance.unsqueeze(-1)
        u = d / CUTOFF
        envelope = 1 - 10 * u ** 3 + 15 * u ** 4 - 6 * u ** 5  # smooth to zero at the cutoff
        return self.mlp(torch.sin(self.frequencies * d) / d * envelope)


class Layer(torch.nn.Module):
    """Everything but the spherical harmonics and the message sum, which the two sides do their way."""

    def __init__(self, system: dict, plan, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.plan = plan
        torch.manual_seed(seed)  # the radial MLP's initialisation: the same weights on both sides
        self.radial = Radial(plan.weight_numel)
        atoms = system["positions"].shape[0]
        self.features = torch.nn.Parameter(torch.randn(atoms, plan.dim_in1, generator=g))
        scalars = torch.zeros(plan.dim_out, dtype=torch.bool)
        for (mul, ir), sl in zip(plan.irreps_out, plan.irreps_out.slices()):
            if ir.l == 0 and ir.p == 1:
                scalars[sl] = True
        self.register_buffer("readout", torch.randn(plan.dim_out, generator=g) * scalars / math.sqrt(plan.dim_out))

    def energy(self, positions, system, messages) -> torch.Tensor:
        vectors = edge_vectors(positions, system["senders"], system["receivers"], system["shifts"], system["cell"])
        return (messages(self.features, vectors, self.radial(vectors.norm(dim=-1))) @ self.readout).sum()


class Messages:
    """Spherical harmonics of the edge vectors and the message sum, each side its own way."""

    def __init__(self, implementation: str, plan, system: dict, instructions):
        self.implementation = implementation
        if implementation == "nffk":
            graph = ConvGraph.build(system["senders"], system["receivers"], system["positions"].shape[0])
            self.conv = lambda x, sh, w: conv(x, sh, w, plan=plan, graph=graph)  # noqa: E731
            return
        import e3nn.o3
        tp = e3nn.o3.TensorProduct(NODE, SH, str(plan.irreps_out), instructions, shared_weights=False,
                                   internal_weights=False)
        senders, receivers = system["senders"], system["receivers"]

        def unfused(x, sh, w):
            per_edge = tp(x[senders], sh, w)
            return per_edge.new_zeros(x.shape[0], plan.dim_out).index_add_(0, receivers, per_edge)
        self.conv = unfused

    def __call__(self, x, vectors, weights):
        if self.implementation == "nffk":
            sh = spherical_harmonics(SH, vectors, normalize=True, normalization="component")
        else:
            import e3nn.o3
            sh = e3nn.o3.spherical_harmonics(SH, vectors, normalize=True, normalization="component")
        return self.conv(x, sh, weights)


def build(system: dict, implementation: str):
    """(layer, messages) for one implementation; the same seeds give both sides the same weights."""
    channelwise = nffk.nn.ChannelwiseTensorProduct(NODE, SH, 2)
    layer = Layer(system, channelwise.plan)
    instructions = [(i.i_in1, i.i_in2, i.i_out, i.connection_mode, i.has_weight) for i in channelwise.instructions]
    return layer, Messages(implementation, channelwise.plan, system, instructions)


def conv_inputs(layer: Layer, system: dict) -> dict:
    """Leaves for the `conv *` passes: the layer's SH and radial weights, detached."""
    with torch.no_grad():
        vectors = edge_vectors(system["positions"], system["senders"], system["receivers"], system["shifts"],
                               system["cell"])
        return {"sh": spherical_harmonics(SH, vectors, normalize=True, normalization="component"),
                "w": layer.radial(vectors.norm(dim=-1))}


def conv_step(pass_name: str, layer: Layer, messages: Messages, leaves: dict, target: torch.Tensor):
    x = layer.features.detach().requires_grad_(pass_name != "conv forward")
    sh, w = (leaves[k].clone().requires_grad_(pass_name != "conv forward") for k in ("sh", "w"))
    if pass_name == "conv forward":
        with torch.no_grad():
            return [messages.conv(x, sh, w) @ layer.readout]
    energy = (messages.conv(x, sh, w) @ layer.readout).sum()
    if pass_name == "conv fwd+bwd":
        energy.backward()
        return [energy.detach(), x.grad, sh.grad, w.grad]
    (gradient,) = torch.autograd.grad(energy, sh, create_graph=True)
    loss = (gradient - target).pow(2).mean()
    loss.backward()
    return [loss.detach(), gradient.detach(), x.grad, w.grad]  # (sh.grad: none, the gradient is linear in sh)


def step(pass_name: str, layer: Layer, messages, system: dict, forces_target: torch.Tensor | None = None):
    """One pass; returns what it computed (for the cross-check)."""
    if pass_name in CONV_PASSES:
        return conv_step(pass_name, layer, messages, system["leaves"], system["sh_target"])
    if pass_name == "forward":
        with torch.no_grad():
            return [layer.energy(system["positions"], system, messages)]
    layer.zero_grad(set_to_none=True)
    positions = system["positions"].clone().requires_grad_()
    energy = layer.energy(positions, system, messages)
    if pass_name == "fwd+bwd":
        energy.backward()
        return [energy.detach(), positions.grad, layer.features.grad]
    (gradient,) = torch.autograd.grad(energy, positions, create_graph=True)
    forces = -gradient
    loss = (forces - forces_target).pow(2).mean()
    loss.backward()
    return [loss.detach(), forces.detach(), layer.features.grad, layer.radial.mlp[0].weight.grad]


def make_system(name: str, args) -> dict:
    if name == "molecules":
        system = molecule_batch(args.molecules)
    else:
        system = periodic_system(args.atoms, args.neighbors, order="space" if name == "periodic-sorted" else "random")
    return with_leaves(system)


def with_leaves(system: dict) -> dict:
    layer, _ = build(system, "nffk")
    system["leaves"] = conv_inputs(layer, system)
    system["sh_target"] = torch.randn(system["senders"].numel(), 9, generator=torch.Generator().manual_seed(1))
    return system


# ------------------------------------------------------------------------------------------------
# Peak memory: one step in a fresh process
# ------------------------------------------------------------------------------------------------
def proc_status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def memory_child(args) -> None:
    torch.set_num_threads(args.threads)
    tiny = with_leaves(periodic_system(64, 10))
    layer, messages = build(tiny, args.child_impl)
    for _ in range(2):  # warm-up (e3nn's code generation and TorchScript profiling runs)
        step(args.child_pass, layer, messages, tiny, torch.zeros(64, 3))
    system = make_system(args.child_system, args)
    layer, messages = build(system, args.child_impl)
    target = torch.randn(system["positions"].shape[0], 3)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak resident set (VmHWM) to the current one (Linux >= 4.0)
    before = proc_status_bytes("VmRSS")
    step(args.child_pass, layer, messages, system, target)
    print(json.dumps({"peak_bytes": proc_status_bytes("VmHWM") - before}))


def measure_memory(system_name: str, pass_name: str, implementation: str, args) -> float | None:
    command = [sys.executable, os.path.abspath(__file__), "--child-system", system_name, "--child-pass", pass_name,
               "--child-impl", implementation, "--atoms", str(args.atoms), "--neighbors", str(args.neighbors),
               "--molecules", str(args.molecules), "--threads", str(args.threads)]
    # Peaks are the largest resident set during one step, so one step at a time: no other children.
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"  memory child failed ({implementation}, {system_name}, {pass_name}): {done.stderr[-500:]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_bytes"]


# ------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--atoms", type=int, default=5000)
    parser.add_argument("--neighbors", type=float, default=30)
    parser.add_argument("--molecules", type=int, default=128)
    parser.add_argument("--systems", nargs="+", default=["periodic", "periodic-sorted", "molecules"],
                        choices=["periodic", "periodic-sorted", "molecules"],
                        help="periodic: atoms numbered at random; periodic-sorted: the same box numbered cell by cell")
    parser.add_argument("--passes", nargs="+", default=list(PASSES), choices=PASSES)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (e3nn's TorchScript "
                        "profiling executor optimises after the first calls)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--memory", action="store_true", help="also measure peak memory (fresh processes)")
    parser.add_argument("--no-e3nn", action="store_true", help="time nffk only")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--child-system", help=argparse.SUPPRESS)
    parser.add_argument("--child-pass", help=argparse.SUPPRESS)
    parser.add_argument("--child-impl", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_impl:
        memory_child(args)
        return 0
    torch.set_num_threads(args.threads)
    implementations = ["nffk"] + ([] if args.no_e3nn else ["e3nn"])
    print(f"threads={args.threads} load={os.getloadavg()[0]:.1f} torch={torch.__version__}")
    results = []
    for system_name in args.systems:
        system = make_system(system_name, args)
        atoms, edges = system["positions"].shape[0], system["senders"].numel()
        print(f"\n{system_name}: {atoms} atoms, {edges} edges ({edges / atoms:.1f} per atom)")
        built = {name: build(system, name) for name in implementations}
        target = torch.randn(atoms, 3)
        for pass_name in args.passes:
            for _ in range(args.warmup - 1):
                for name in implementations:
                    step(pass_name, *built[name], system, target)
            outputs = {name: step(pass_name, *built[name], system, target) for name in implementations}
            if "e3nn" in outputs:
                worst = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
                            for a, b in zip(outputs["nffk"], outputs["e3nn"]))
            times = {name: [] for name in implementations}
            for _ in range(args.repeat):  # interleaved: the load of a shared machine hits both alike
                for name in implementations:
                    start = time.perf_counter()
                    step(pass_name, *built[name], system, target)
                    times[name].append(time.perf_counter() - start)
            row = {"system": system_name, "atoms": atoms, "edges": edges, "pass": pass_name,
                   "seconds": {name: statistics.median(t) for name, t in times.items()},
                   "load": os.getloadavg()[0]}
            line = f"  {pass_name:11s} nffk {row['seconds']['nffk'] * 1e3:9.1f} ms"
            if "e3nn" in times:
                row["speedup"] = row["seconds"]["e3nn"] / row["seconds"]["nffk"]
                row["max_relative_difference"] = worst
                line += (f" | e3nn {row['seconds']['e3nn'] * 1e3:9.1f} ms | x{row['speedup']:.1f}"
                         f" | max rel. diff {worst:.1e}")
            if args.memory:
                row["peak_bytes"] = {name: measure_memory(system_name, pass_name, name, args)
                                     for name in implementations}
                peaks = row["peak_bytes"]
                line += " | peak " + " / ".join(f"{n} {peaks[n] / 2**20:.0f} MiB" if peaks[n] is not None
                                                  else f"{n} ?" for n in implementations)
                if None not in peaks.values() and "e3nn" in peaks and peaks["e3nn"] > 0:
                    row["memory_ratio"] = peaks["nffk"] / peaks["e3nn"]
                    line += f" (x{row['memory_ratio']:.2f})"
            print(line + f" | load {row['load']:.1f}", flush=True)
            results.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "command": " ".join(sys.argv), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
