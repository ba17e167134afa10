"""Message passing on a neighbour-list graph: out[i] = sum over edges j -> i of TP(x[j], Y[e], w[e]).

nffk's `ops.conv` (fused where a backend fuses it) against the unfused pattern of e3nn-based
models (gather x at senders, e3nn TensorProduct, index_add into receivers) and the same with
cuequivariance-torch's tensor product. The graph is built once (random atoms in a periodic box,
cutoff 3.5 Å, about 18 neighbours per atom); node features, edge attributes and weights are
rotated. Work per pass counts trilinear kernels as for tensor products; each reads three of
(x [nodes], Y [edges], w [edges], out [nodes]) and writes the fourth, plus the edge indices."""
from __future__ import annotations

import importlib

import numpy as np
import torch

import nffk.nn
from nffk import backends
from nffk.bench.cases._common import cached, element_size, randn, require, seeded
from nffk.bench.cases.tensor_product import KERNELS, LOSS_PASSES, PASSES, cuequivariance_module
from nffk.bench.registry import Built, Case, Implementation
from nffk.ops import ConvGraph

conv_op = importlib.import_module("nffk.ops.conv")
nl_op = importlib.import_module("nffk.ops.neighbor_list")

CUTOFF, DENSITY = 3.5, 0.1  # Å, atoms / Å^3
# name -> (node irreps, edge irreps, output lmax, full number of atoms)
CONFIGS = {
    "nequip": ("32x0e+32x1o+32x2e", "0e+1o+2e", 2, 4_000),
    "mace": ("128x0e+128x1o", "0e+1o+2e+3o", 2, 2_000),
    # issue 6's NequIP-like layer (both parities; the whole layer with forces: bench/bench_conv_layer.py)
    "nequip-both-parities": ("32x0e+32x0o+32x1o+32x1e+32x2e+32x2o", "0e+1o+2e", 2, 5_000),
    "tiny": ("4x0e+4x1o", "0e+1o", 1, 800),  # smoke tests
}
DEFAULTS = {"quick": ["nequip"], "default": ["nequip", "mace"], "full": ["nequip", "mace", "nequip-both-parities"]}
DIVISOR = {"quick": 40, "default": 4, "full": 1}


def random_graph(atoms: int, seed: int = 0) -> ConvGraph:
    """Edges of random atoms in a periodic box (receiver-sorted, as nffk.ops.neighbor_list gives them)."""
    length = (atoms / DENSITY) ** (1 / 3)
    positions = torch.tensor(np.random.default_rng(seed).uniform(0, length, (atoms, 3)))
    pairs = nl_op.neighbor_list(positions, CUTOFF, cell=torch.eye(3, dtype=torch.float64) * length)
    return ConvGraph.build(pairs.senders, pairs.receivers, atoms)


def _unfused(tp, graph: ConvGraph, num_nodes: int, dim_out: int):
    """The e3nn-model pattern: per-edge messages materialised, then summed into receivers."""
    def conv(x, sh, w):
        messages = tp(x[graph.senders], sh, w)
        return messages.new_zeros(num_nodes, dim_out).index_add_(0, graph.receivers, messages)
    return conv


def _implementations(name, pass_name, graph, device, dtype, reference) -> list:
    node, edge, lmax, _ = CONFIGS[name]
    make_pass = PASSES[pass_name]
    num_nodes = graph.num_nodes

    def ours():
        return cached(("conv", name, "nffk", device, dtype),
                      lambda: nffk.nn.ChannelwiseTensorProduct(node, edge, lmax).to(device=device, dtype=dtype))

    def nffk_built(backend):
        def build():
            plan = ours().plan
            chosen = backends.resolve("conv", backend, device, conv_op.implemented_backends(plan))

            def conv(x, sh, w):
                return conv_op.conv(x, sh, w, plan=plan, graph=graph, backend=backend)
            return Built(make_pass(conv), output=PASSES["forward"](conv), note=f"backend={chosen}")
        return build

    def e3nn_built():
        require("e3nn", "e3nn")
        from nffk.bench.cases.tensor_product import build_e3nn_from
        tp = cached(("conv", name, "e3nn", device, dtype),
                    lambda: build_e3nn_from(node, edge, ours()).to(device=device, dtype=dtype))
        conv = _unfused(tp, graph, num_nodes, ours().plan.dim_out)
        return Built(make_pass(conv), output=PASSES["forward"](conv), note="gather + TensorProduct + index_add")

    def cue_built():
        tp, method = cached(("conv", name, "cuequivariance", device, dtype),
                            lambda: cuequivariance_module(node, edge, "uvu", ours(), device))
        conv = _unfused(tp.to(dtype=dtype), graph, num_nodes, ours().plan.dim_out)
        return Built(make_pass(conv), note=f"gather + ChannelWiseTensorProduct (method={method}) + index_add; "
                                           "output layout differs, not compared")

    impls = [Implementation("nffk", nffk_built("auto"))]
    auto = backends.resolve("conv", "auto", device, conv_op.implemented_backends(ours().plan))
    if reference and auto != "reference":
        impls.append(Implementation("nffk[reference]", nffk_built("reference")))
    return impls + [Implementation("e3nn", e3nn_built), Implementation("cuequivariance", cue_built)]


def cases(configs, mode: str, device, dtype, sweeps: bool = False, reference: bool = False) -> list:
    del sweeps
    result = []
    for name in configs:
        node, edge, lmax, full_atoms = CONFIGS[name]
        atoms = max(16, full_atoms // DIVISOR[mode])
        graph = random_graph(atoms)
        graph = type(graph)(*(t.to(device) for t in graph))
        edges = graph.senders.shape[0]
        plan = cached(("conv", name, "nffk", device, dtype),
                      lambda: nffk.nn.ChannelwiseTensorProduct(node, edge, lmax).to(device=device, dtype=dtype)).plan
        size = element_size(dtype)
        dims = ((atoms, plan.dim_in1), (edges, plan.dim_in2), (edges, plan.weight_numel))

        def make_inputs(seed, dims=dims):
            g = seeded(seed, device)
            return tuple(randn(shape, g, device, dtype) for shape in dims)

        per_kernel = (atoms * (plan.dim_in1 + plan.dim_out) + edges * (plan.dim_in2 + plan.weight_numel)) * size \
            + 16 * edges
        for pass_name in LOSS_PASSES:  # the layer's output is per node: its loss is cheap next to the conv
            k = KERNELS[pass_name]
            result.append(Case(
                op="conv", config=name, pass_name=pass_name, size=atoms, size_name="atoms", make_inputs=make_inputs,
                implementations=_implementations(name, pass_name, graph, device, dtype, reference),
                flops=k * plan.flops_per_element * edges, bytes=k * per_kernel,
                input_bytes=sum(a * b for a, b in dims) * size, params={"edges": edges}, device=device,
                rtol=1e-4 if dtype == torch.float32 else 1e-10,
                description=f"{node} x {edge} -> {plan.irreps_out.simplify()} (uvu, per-edge weights); "
                            f"{atoms} atoms, {edges} edges"))
    return result
