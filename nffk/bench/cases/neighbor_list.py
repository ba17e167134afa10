"""Neighbour lists: nffk against vesin, matscipy and ase, full lists (both directions) with
periodic shifts, the form message passing needs.

Peers get their native inputs (numpy arrays, ase.Atoms), converted outside the timed call;
a batch of molecules is one nffk call and a loop over the systems for the peers (how they are
used). The check compares the number of pairs. Bytes: positions read once and every pair
written once in the most compact form any of them returns (int32 indices and shifts)."""
from __future__ import annotations

import importlib

import numpy as np
import torch

from nffk import backends
from nffk.bench.cases._common import element_size, require
from nffk.bench.registry import Built, Case, Implementation

nl_op = importlib.import_module("nffk.ops.neighbor_list")  # the module (nffk.ops exports the function)

CUTOFF = 5.0  # Å
DENSITY = 0.1  # atoms / Å^3, about liquid water's
# name -> (kind, full size, description); sizes are atoms (periodic) or molecules of 18 atoms (open)
CONFIGS = {
    "bulk-periodic": ("periodic", 16_000, "random atoms in a periodic cubic box at 0.1 atoms/Å^3, cutoff 5 Å"),
    "molecules": ("molecules", 512, "a batch of 18-atom molecules (3 Å radius), open boundaries, cutoff 5 Å"),
    "tiny": ("periodic", 5_000, "smoke test: a small periodic box"),
}
DEFAULTS = {"quick": ["bulk-periodic", "molecules"], "default": ["bulk-periodic", "molecules"],
            "full": ["bulk-periodic", "molecules"]}
DIVISOR = {"quick": 16, "default": 4, "full": 1}
ATOMS_PER_MOLECULE = 18
# The least any of these libraries writes per pair: two int32 indices and three int32 shifts.
BYTES_PER_PAIR = 20


def _structure(kind: str, size: int, seed: int, dtype):
    """(positions [N, 3], cell [3, 3] or None, batch or None, per-system list of (positions, cell, pbc))."""
    rng = np.random.default_rng(seed)
    if kind == "periodic":
        length = (size / DENSITY) ** (1 / 3)
        positions = rng.uniform(0, length, (size, 3))
        cell = np.eye(3) * length
        return (torch.tensor(positions, dtype=dtype), torch.tensor(cell, dtype=dtype), None,
                [(positions, cell, True)])
    systems, all_positions = [], []
    for _ in range(size):
        direction = rng.normal(size=(ATOMS_PER_MOLECULE, 3))
        radius = 3.0 * rng.uniform(0, 1, (ATOMS_PER_MOLECULE, 1)) ** (1 / 3)
        molecule = direction / np.linalg.norm(direction, axis=1, keepdims=True) * radius
        all_positions.append(molecule)
        systems.append((molecule, np.zeros((3, 3)), False))
    batch = torch.arange(size).repeat_interleave(ATOMS_PER_MOLECULE)
    return torch.tensor(np.concatenate(all_positions), dtype=dtype), None, batch, systems


def _enclosing(positions, cell, periodic):
    """matscipy and ase want a cell even for open systems: one that encloses the atoms."""
    if periodic:
        return positions, cell
    low = positions.min(axis=0) - CUTOFF
    return positions - low, np.diag(positions.max(axis=0) - low + CUTOFF)


def _implementations(device, reference: bool) -> list:
    def nffk_built(backend):
        def build():
            chosen = backends.resolve("neighbor_list", backend, device, nl_op.IMPLEMENTED)

            def compute(positions, cell, batch, systems):
                return nl_op.neighbor_list(positions, CUTOFF, cell=cell, batch=batch, backend=backend)
            return Built(compute, output=lambda *args: int(compute(*args).senders.shape[0]),
                         note=f"backend={chosen}")
        return build

    def vesin_built():
        vesin = require("vesin", "vesin")
        calculator = vesin.NeighborList(cutoff=CUTOFF, full_list=True)

        def compute(systems):
            return [calculator.compute(points=p, box=c, periodic=pbc, quantities="ijS", copy=False)
                    for p, c, pbc in systems]
        return Built(compute, output=lambda systems: sum(len(i) for i, _, _ in compute(systems)),
                     adapt=lambda args: (args[3],), note="NeighborList.compute(copy=False), full list")

    def matscipy_built():
        neighbours = require("matscipy.neighbours", "matscipy")
        prepared = {}

        def adapt(args):
            if id(args) not in prepared:
                prepared[id(args)] = ([(*_enclosing(p, c, pbc), [pbc] * 3) for p, c, pbc in args[3]],)
            return prepared[id(args)]

        def compute(systems):
            return [neighbours.neighbour_list("ijS", positions=p, cell=c, pbc=pbc, cutoff=CUTOFF)
                    for p, c, pbc in systems]
        return Built(compute, output=lambda systems: sum(len(i) for i, _, _ in compute(systems)), adapt=adapt,
                     note="neighbour_list('ijS')")

    def ase_built():
        require("ase", "ase")
        import ase
        from ase.neighborlist import neighbor_list
        prepared = {}

        def adapt(args):
            if id(args) not in prepared:
                atoms = []
                for p, c, pbc in args[3]:
                    p, c = _enclosing(p, c, pbc)
                    atoms.append(ase.Atoms(positions=p, cell=c, pbc=pbc))
                prepared[id(args)] = (atoms,)
            return prepared[id(args)]

        def compute(atoms_list):
            return [neighbor_list("ijS", atoms, CUTOFF) for atoms in atoms_list]
        return Built(compute, output=lambda atoms_list: sum(len(i) for i, _, _ in compute(atoms_list)),
                     adapt=adapt, note="ase.neighborlist.neighbor_list('ijS')")

    impls = [Implementation("nffk", nffk_built("auto"))]
    if reference and backends.resolve("neighbor_list", "auto", device, nl_op.IMPLEMENTED) != "reference":
        impls.append(Implementation("nffk[reference]", nffk_built("reference")))
    return impls + [Implementation("vesin", vesin_built), Implementation("matscipy", matscipy_built),
                    Implementation("ase", ase_built)]


def cases(configs, mode: str, device, dtype, sweeps: bool = False, reference: bool = False) -> list:
    del sweeps  # no plotted sweep for neighbour lists
    result = []
    for name in configs:
        kind, full, description = CONFIGS[name]
        size = max(1, full // DIVISOR[mode]) if name != "tiny" else max(50, full // DIVISOR[mode] // 10)

        def make_inputs(seed, kind=kind, size=size):
            positions, cell, batch, systems = _structure(kind, size, seed, dtype)
            return positions.to(device), None if cell is None else cell.to(device), \
                None if batch is None else batch.to(device), systems

        positions, cell, batch, _ = make_inputs(0)
        pairs = nl_op.neighbor_list(positions, CUTOFF, cell=cell, batch=batch).senders.shape[0]
        atoms = positions.shape[0]
        result.append(Case(
            op="nlist", config=name, pass_name="build", size=size,
            size_name="atoms" if kind == "periodic" else "molecules", make_inputs=make_inputs,
            implementations=_implementations(device, reference), flops=None,
            bytes=3 * atoms * element_size(dtype) + BYTES_PER_PAIR * pairs, input_bytes=3 * atoms * element_size(dtype),
            params={"atoms": atoms, "pairs": pairs}, device=device,
            description=f"{description}; {atoms} atoms, {pairs} pairs"))
    return result
