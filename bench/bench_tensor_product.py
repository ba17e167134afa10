"""Tensor products: nffk (each backend) against e3nn and cuequivariance-torch, forward /
forward+backward / double backward (the force-training pattern), plus the memory floor.

    python bench/bench_tensor_product.py                 # reduced batch sizes, quick
    python bench/bench_tensor_product.py --full          # the sizes of the issue (E = 10,000 / 2,000)
    python bench/bench_tensor_product.py --full --configs nequip --rounds 5

Times are medians over rounds in which all contenders alternate (the machine may be shared: only
ratios within one run are meaningful). "floor" is the memory floor of the forward pass: the time
of a large copy moving the bytes the forward must move (inputs read once, output written once).
On Linux, `THP_MEM_ALLOC_ENABLE=1` (read by torch at start-up) makes torch's large allocations use
huge pages, which removes most page-fault time from every contender alike.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import copy_floor, interleaved_medians  # noqa: E402

import nffk.nn  # noqa: E402
from nffk.o3 import Irreps  # noqa: E402


def sh_irreps(lmax: int) -> str:
    return "+".join(f"{l}{'eo'[l % 2]}" for l in range(lmax + 1))


# name -> (node irreps, edge irreps, output irreps or lmax, connection, full batch size)
CONFIGS = {
    "nequip": ("64x0o+64x0e+64x1o+64x1e+64x2o+64x2e", "0e+1o+2e", 2, "uvu", 10_000),
    "mace-medium": ("128x0e+128x1o", "0e+1o+2e+3o", 2, "uvu", 10_000),
    "high-order": ("32x0e+32x1o+32x2e+32x3o+32x4e+32x5o+32x6e", sh_irreps(6), 6, "uvu", 2_000),
    "fully-connected": ("48x0e+48x0o+10x1o+10x1e", "0e+1o+2e", "48x0e+48x0o+10x1o+10x1e", "uvw", 10_000),
}
PEERS = ("e3nn", "cuequivariance")


def build(name: str, backend: str = "auto"):
    """(nffk module, e3nn module or None) with the same weights layout, per-edge weights."""
    node, edge, out, mode, _ = CONFIGS[name]
    if mode == "uvu":
        ours = nffk.nn.ChannelwiseTensorProduct(node, edge, out, backend=backend)
    else:
        ours = nffk.nn.FullyConnectedTensorProduct(node, edge, out, shared_weights=False, backend=backend)
    try:
        import e3nn.o3
    except ImportError:
        return ours, None
    instructions = [(i.i_in1, i.i_in2, i.i_out, i.connection_mode, i.has_weight) for i in ours.instructions]
    theirs = e3nn.o3.TensorProduct(node, edge, ours.irreps_out, instructions, shared_weights=False,
                                   internal_weights=False)
    return ours, theirs


def build_cuequivariance(name: str):
    """The same product in cuequivariance-torch (mul_ir layout, per-edge weights) and the method it
    runs with, or (None, reason). Its CUDA methods fall back to its pure-torch one ("naive") on CPU."""
    try:
        import cuequivariance as cue
        import cuequivariance_torch as cuet
    except ImportError as err:
        return None, f"not installed ({err})"
    node, edge, out, mode, _ = CONFIGS[name]
    node, edge = cue.Irreps("O3", node), cue.Irreps("O3", edge)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if mode == "uvu":
            wanted = [cue.O3(l, p) for l in range(out + 1) for p in (1, -1)]
            module = cuet.ChannelWiseTensorProduct(node, edge, wanted, layout=cue.mul_ir, shared_weights=False,
                                                   internal_weights=False)
        else:
            module = cuet.FullyConnectedTensorProduct(node, edge, cue.Irreps("O3", out), layout=cue.mul_ir,
                                                      shared_weights=False, internal_weights=False)
    return module, "naive (torch fallback: cuequivariance_ops_torch is CUDA-only)"


class _Peer(torch.nn.Module):
    """Gives every contender the (x1, x2, weight) call and the attributes make_inputs reads."""

    def __init__(self, module, irreps_in1, irreps_in2, weight_numel):
        super().__init__()
        self.module, self.weight_numel = module, weight_numel
        self.irreps_in1, self.irreps_in2 = irreps_in1, irreps_in2

    def forward(self, x1, x2, w):
        return self.module(x1, x2, w)


def make_inputs(module, batch: int, sets: int = 2, dtype=torch.float32):
    irreps1, irreps2 = Irreps(str(module.irreps_in1)), Irreps(str(module.irreps_in2))
    return [(torch.randn(batch, irreps1.dim, dtype=dtype), torch.randn(batch, irreps2.dim, dtype=dtype),
             torch.randn(batch, module.weight_numel, dtype=dtype)) for _ in range(sets)]


def forward(module):
    def run(x1, x2, w):
        with torch.no_grad():
            module(x1, x2, w)
    return run


def forward_backward(module):
    def run(x1, x2, w):
        x1 = x1.detach().requires_grad_()
        w = w.detach().requires_grad_()
        module(x1, x2, w).pow(2).sum().backward()
    return run


def double_backward(module):
    """The force-training pattern: gradient w.r.t. an input with create_graph, a loss on it, backward."""
    def run(x1, x2, w):
        x2 = x2.detach().requires_grad_()
        w = w.detach().requires_grad_()
        energy = module(x1, x2, w).pow(2).sum()
        (force,) = torch.autograd.grad(energy, x2, create_graph=True)
        force.pow(2).sum().backward()
    return run


PASSES = {"forward": forward, "forward+backward": forward_backward, "double backward": double_backward}


def contenders(name: str, backends=("auto",), peers=PEERS) -> tuple:
    """({label: module}, {label: note}) for one config."""
    modules, notes = {}, {}
    for backend in backends:
        ours, theirs = build(name, backend)
        modules[f"nffk[{backend}]"] = ours
    if "e3nn" in peers and theirs is not None:
        modules["e3nn"] = theirs
    if "cuequivariance" in peers:
        module, note = build_cuequivariance(name)
        notes["cuequivariance"] = note
        if module is not None:
            if module.weight_numel != ours.weight_numel:
                notes["cuequivariance"] += f" (weights {module.weight_numel} vs {ours.weight_numel})"
            modules["cuequivariance"] = _Peer(module, ours.irreps_in1, ours.irreps_in2, module.weight_numel)
    return modules, notes


def run(configs=None, full: bool = False, backends=("auto",), peers=PEERS, rounds: int = 3,
        passes=tuple(PASSES)) -> list:
    """One row per (config, pass): seconds per contender, the forward's memory floor, threads."""
    rows = []
    for name in configs or CONFIGS:
        batch = CONFIGS[name][4] if full else CONFIGS[name][4] // 10
        modules, notes = contenders(name, backends, peers)
        ours = modules[f"nffk[{backends[0]}]"]
        plan = ours.plan
        moved = plan.bytes_per_element(torch.float32, shared_weights=False) * batch
        for pass_name in passes:
            fns = {label: PASSES[pass_name](module) for label, module in modules.items()}
            if pass_name == "forward":
                fns["floor"] = copy_floor(moved)
            sets = {label: make_inputs(module, batch) for label, module in modules.items()}
            # Contenders take their own inputs (cuequivariance may have another weight count).
            wrapped = {label: (lambda f, s: (lambda k: f(*s[k])))(fn, sets.get(label, sets[next(iter(sets))]))
                       for label, fn in fns.items()}
            times = interleaved_medians(wrapped, [(0,), (1,)], rounds=rounds)
            rows.append({"config": name, "batch": batch, "pass": pass_name, "threads": torch.get_num_threads(),
                         "bytes": moved if pass_name == "forward" else None, "times": times, "notes": notes})
    return rows


def print_rows(rows):
    ours = next(k for k in rows[0]["times"] if k.startswith("nffk"))
    print(f"threads={rows[0]['threads']}  float32  times in ms; ratio = peer / {ours}; "
          f"floor = copy of the forward's bytes (forward only)")
    for row in rows:
        t = row["times"]
        cells = "  ".join(f"{label} {1e3 * value:9.2f}" for label, value in t.items())
        ratios = "  ".join(f"{label} x{value / t[ours]:.1f}" for label, value in t.items()
                           if label != ours and label != "floor")
        floor = f"  nffk/floor {t[ours] / t['floor']:.2f}" if "floor" in t else ""
        print(f"{row['config']:16s} {row['batch']:6d} {row['pass']:17s} {cells}   {ratios}{floor}")
    for name, note in rows[0]["notes"].items():
        print(f"{name}: {note}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="use the full batch sizes")
    parser.add_argument("--configs", nargs="*", choices=list(CONFIGS), help="subset of configs")
    parser.add_argument("--backends", nargs="*", default=["auto"])
    parser.add_argument("--peers", nargs="*", default=list(PEERS), choices=list(PEERS))
    parser.add_argument("--passes", nargs="*", default=list(PASSES), choices=list(PASSES))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}")
    rows = run(args.configs, args.full, tuple(args.backends), tuple(args.peers), args.rounds, tuple(args.passes))
    print_rows(rows)


if __name__ == "__main__":
    main()
