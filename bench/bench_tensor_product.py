"""Tensor products: nffk (each backend) against e3nn, forward / forward+backward / double backward.

    python bench/bench_tensor_product.py            # reduced batch sizes, quick
    python bench/bench_tensor_product.py --full     # the sizes of the issue (E = 10,000 / 2,000)
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import median_time  # noqa: E402

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


def run(configs=None, full: bool = False, backends=("reference", "auto"), repeat: int = 5) -> list:
    rows = []
    for name in configs or CONFIGS:
        batch = CONFIGS[name][4] if full else CONFIGS[name][4] // 10
        implementations = {}
        for backend in backends:
            ours, theirs = build(name, backend)
            implementations[f"nffk[{backend}]"] = ours
        if theirs is not None:
            implementations["e3nn"] = theirs
        inputs = make_inputs(ours, batch)
        for pass_name, make in PASSES.items():
            row = {"config": name, "batch": batch, "pass": pass_name}
            for label, module in implementations.items():
                row[label] = median_time(make(module), inputs, repeat=repeat)
            rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="use the full batch sizes")
    parser.add_argument("--configs", nargs="*", choices=list(CONFIGS), help="subset of configs")
    parser.add_argument("--backends", nargs="*", default=["reference", "auto"])
    args = parser.parse_args()
    rows = run(args.configs, args.full, tuple(args.backends))
    labels = [k for k in rows[0] if k not in ("config", "batch", "pass")]
    print(f"threads={torch.get_num_threads()}  float32  times in ms (ratio = e3nn / nffk)")
    print(f"{'config':16s} {'batch':>6s} {'pass':17s} " + " ".join(f"{l:>14s}" for l in labels))
    for row in rows:
        cells = " ".join(f"{1e3 * row[l]:14.2f}" for l in labels)
        ratios = "  ".join(f"{l}: x{row['e3nn'] / row[l]:.2f}" for l in labels if l != "e3nn" and "e3nn" in row)
        print(f"{row['config']:16s} {row['batch']:6d} {row['pass']:17s} {cells}   {ratios}")


if __name__ == "__main__":
    main()
