"""Neighbour lists: nffk against vesin, matscipy and ase, full lists (both directions) with
periodic shifts and distances ("ijSd"), the form message passing needs.

Systems as in bench/bench_neighbor_list.py (the neighbour-list kernel's own benchmark, which
imports them from here): rattled fcc copper with periodic boundaries, and a batch of QM9
molecules with open boundaries; cutoff 5 Å, float64 positions. Peers get their native inputs
(numpy arrays) and their fastest call (vesin with as many threads as torch, ase's
primitive_neighbor_list); for a batch of molecules nffk makes one call and the peers one per
molecule, their results concatenated with index offsets (what a user must do to get a batch).
The check compares the number of pairs. Bytes: positions read once and every pair written once
as nffk returns it (int64 sender, receiver and three shifts, float64 distance: 48 bytes)."""
from __future__ import annotations

import csv
import importlib
import importlib.util
import json
import os

import numpy as np
import torch

from nffk import backends
from nffk.bench.cases._common import require
from nffk.bench.registry import Built, Case, Implementation

nl_op = importlib.import_module("nffk.ops.neighbor_list")  # the module (nffk.ops exports the function)

CUTOFF = 5.0  # Å
BYTES_PER_PAIR = 48
# name -> (kind, size per mode, description); sizes are fcc repeats (4 atoms per cubic cell) or molecules
CONFIGS = {
    "cu-fcc": ("bulk", {"quick": 6, "default": 10, "full": 16}, "rattled fcc Cu (a = 3.61 Å), periodic"),
    "molecules": ("molecules", {"quick": 32, "default": 128, "full": 256}, "QM9 molecules, open boundaries"),
    "tiny": ("bulk", {"quick": 3, "default": 3, "full": 3}, "smoke test: 108 atoms of fcc Cu"),
}
DEFAULTS = {mode: ["cu-fcc", "molecules"] for mode in ("quick", "default", "full")}


# -- systems: lists of dict(positions, cell, pbc) in numpy, one per structure ------------------
def bulk_copper(repeat: int, seed: int = 0) -> list:
    """Rattled fcc Cu (a = 3.61 Å, rattle 0.05 Å), repeat^3 cubic cells of 4 atoms."""
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (repeat, repeat, repeat)
    atoms.rattle(0.05, seed=seed)
    return [dict(positions=atoms.positions.copy(), cell=atoms.cell.array.copy(), pbc=np.ones(3, dtype=bool))]


def qm9_molecules(count: int, seed: int = 0) -> list:
    """`count` molecules from QM9 (qm9pack's CSV, read directly), else ase's g2 set, rattled 0.02 Å."""
    rng = np.random.default_rng(seed)
    geometries = []
    spec = importlib.util.find_spec("qm9pack")
    if spec is not None and spec.submodule_search_locations:
        path = os.path.join(spec.submodule_search_locations[0], "data", "qm9_part3.csv")
        if os.path.exists(path):
            csv.field_size_limit(1 << 24)
            with open(path, newline="") as handle:
                for row in csv.DictReader(handle):
                    geometries.append(np.array(json.loads(row["XYZ_Ang"]), dtype=np.float64))
                    if len(geometries) == count:
                        break
    if len(geometries) < count:
        from ase.build import molecule
        from ase.collections import g2

        names = sorted(g2.names)
        while len(geometries) < count:
            geometries.append(molecule(names[int(rng.integers(len(names)))]).positions)
    return [dict(positions=g + 0.02 * rng.standard_normal(g.shape), cell=np.zeros((3, 3)),
                 pbc=np.zeros(3, dtype=bool)) for g in geometries[:count]]


def _as_torch(systems: list, device) -> tuple:
    """nffk's native input: (positions, cell, pbc, batch) tensors for one call."""
    positions = torch.from_numpy(np.concatenate([s["positions"] for s in systems])).to(device)
    if len(systems) == 1:
        s = systems[0]
        periodic = bool(s["pbc"].any())
        return (positions, torch.from_numpy(s["cell"]).to(device) if periodic else None,
                torch.from_numpy(s["pbc"]).to(device) if periodic else None, None)
    sizes = torch.tensor([len(s["positions"]) for s in systems])
    batch = torch.repeat_interleave(torch.arange(len(systems)), sizes).to(device)
    pbc = np.stack([s["pbc"] for s in systems])
    if not pbc.any():
        return positions, None, None, batch
    return (positions, torch.from_numpy(np.stack([s["cell"] for s in systems])).to(device),
            torch.from_numpy(pbc).to(device), batch)


def _per_system(one, systems: list):
    """Peers: one call per system, then one batch (indices offset, arrays concatenated)."""
    results = [one(s) for s in systems]
    if len(results) == 1:
        return results[0]
    offsets = np.cumsum([0] + [len(s["positions"]) for s in systems[:-1]])
    return (np.concatenate([r[0] + o for r, o in zip(results, offsets)]),
            np.concatenate([r[1] + o for r, o in zip(results, offsets)]),
            np.concatenate([r[2] for r in results]), np.concatenate([r[3] for r in results]))


def _implementations(device, reference: bool) -> list:
    def nffk_built(backend):
        def build():
            chosen = backends.resolve("neighbor_list", backend, device, nl_op.IMPLEMENTED)

            def compute(positions, cell, pbc, batch, systems):
                return nl_op.neighbor_list(positions, CUTOFF, cell, pbc, batch=batch, return_distances=True,
                                           backend=backend)
            return Built(compute, output=lambda *args: int(compute(*args).senders.shape[0]), note=f"backend={chosen}")
        return build

    def peer(make_one, note):
        def build():
            one = make_one()

            def compute(systems):
                return _per_system(one, systems)
            return Built(compute, output=lambda systems: len(compute(systems)[0]), adapt=lambda args: (args[4],),
                         note=note)
        return build

    def vesin_one():
        vesin = require("vesin", "vesin")
        calculator = vesin.NeighborList(cutoff=CUTOFF, full_list=True, n_threads=torch.get_num_threads())
        return lambda s: calculator.compute(s["positions"], s["cell"], s["pbc"], "ijSd", copy=False)

    def matscipy_one():
        neighbours = require("matscipy.neighbours", "matscipy")

        def one(s):
            if s["pbc"].any():
                return neighbours.neighbour_list("ijSd", positions=s["positions"], cell=s["cell"], pbc=s["pbc"],
                                                 cutoff=CUTOFF)
            low, high = s["positions"].min(0), s["positions"].max(0)  # it needs a non-singular box
            return neighbours.neighbour_list("ijSd", positions=s["positions"], cell=np.diag(high - low + 2 * CUTOFF),
                                             pbc=s["pbc"], cutoff=CUTOFF, cell_origin=low - CUTOFF)
        return one

    def ase_one():
        require("ase", "ase")
        from ase.neighborlist import primitive_neighbor_list
        return lambda s: primitive_neighbor_list("ijSd", s["pbc"], s["cell"], s["positions"], CUTOFF)

    impls = [Implementation("nffk", nffk_built("auto"))]
    if reference and backends.resolve("neighbor_list", "auto", device, nl_op.IMPLEMENTED) != "reference":
        impls.append(Implementation("nffk[reference]", nffk_built("reference")))
    threads = torch.get_num_threads()
    return impls + [
        Implementation("vesin", peer(vesin_one, f"compute('ijSd', copy=False), n_threads={threads}")),
        Implementation("matscipy", peer(matscipy_one, "neighbour_list('ijSd'), single-threaded")),
        Implementation("ase", peer(ase_one, "primitive_neighbor_list('ijSd'), numpy")),
    ]


def cases(configs, mode: str, device, dtype, sweeps: bool = False, reference: bool = False) -> list:
    del dtype, sweeps  # positions are float64 (as read from data); no plotted sweep
    result = []
    for name in configs:
        kind, sizes, description = CONFIGS[name]
        size = sizes[mode]

        def make_inputs(seed, kind=kind, size=size):
            systems = bulk_copper(size, seed) if kind == "bulk" else qm9_molecules(size, seed)
            return (*_as_torch(systems, device), systems)

        first = make_inputs(0)
        positions, cell, pbc, batch, _ = first
        pairs = int(nl_op.neighbor_list(positions, CUTOFF, cell, pbc, batch=batch).senders.shape[0])
        atoms = positions.shape[0]
        result.append(Case(
            op="nlist", config=name, pass_name="build", size=atoms if kind == "bulk" else size,
            size_name="atoms" if kind == "bulk" else "molecules", make_inputs=make_inputs,
            implementations=_implementations(device, reference), flops=None,
            bytes=24 * atoms + BYTES_PER_PAIR * pairs, input_bytes=24 * atoms,
            params={"atoms": atoms, "pairs": pairs}, device=device,
            description=f"{description}, cutoff {CUTOFF:g} Å, float64 positions; {atoms} atoms, {pairs} pairs"))
    return result
