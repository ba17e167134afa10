"""GPU benchmarks: nffk's GPU backends (triton, cuda) against e3nn, cuEquivariance and OpenEquivariance.

    python bench/bench_gpu.py               # every GPU case (exits with a message without a GPU)
    python bench/bench_gpu.py --quick       # batch sizes / 10, fewer repeats
    python bench/bench_gpu.py --floors      # the H100 FLOP and byte floors of every case (no GPU needed)
    python bench/bench_gpu.py --cases tp conv sh nl

Cases: the tensor-product configs of bench_tensor_product.py (forward, forward+backward), the
fused conv of a NequIP-like layer (5,000 atoms x 30 neighbours), spherical harmonics
l <= 2, 4, 6, 8 of 200,000 vectors, and the neighbour list of Cu fcc (4,000 and 16,384 atoms,
cutoff 5 A). nffk's "cuda" backend (csrc/cuda) gets a row wherever the extension was built with
CUDA (tensor product, conv, spherical harmonics, neighbour list). Peers appear where installed: e3nn,
cuEquivariance (its CUDA kernels when cuequivariance_ops_torch imports, else it is skipped),
OpenEquivariance, sphericart, vesin.
Every time is the median of several runs with the device synchronised around each (timing.py);
"floor" is max(bytes / HBM bandwidth, FLOPs / FP32 peak) on an H100 SXM (see NOTES.md).
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_tensor_product import CONFIGS as TP_CONFIGS  # noqa: E402
from bench_tensor_product import build as build_tp  # noqa: E402
from timing import median_time  # noqa: E402

import nffk.nn  # noqa: E402
from nffk import backends  # noqa: E402
from nffk.ops.tensor_product import implemented_backends  # noqa: E402

# H100 SXM5 (80 GB): HBM3 bandwidth and FP32 peak without tensor cores (132 SMs x 128 FP32 lanes
# x 2 FLOPs x 1.98 GHz boost). A kernel cannot beat max(bytes / HBM, FLOPs / FP32).
H100_HBM_BYTES_PER_S = 3.35e12
H100_FP32_FLOPS = 67e12

CONV = dict(nodes=5_000, neighbours=30, irreps="32x0e+32x0o+32x1o+32x1e+32x2e+32x2o", sh="0e+1o+2e", lmax=2)
SH = dict(vectors=200_000, lmax=(2, 4, 6, 8))
NL = dict(cells=(10, 16), lattice=3.615, cutoff=5.0)  # Cu fcc: 4 x cells^3 atoms (4,000 and 16,384)


def floor_seconds(flops: float, nbytes: float) -> float:
    return max(nbytes / H100_HBM_BYTES_PER_S, flops / H100_FP32_FLOPS)


# ---------------------------------------------------------------------------------------------
# Floors (from the plans; no GPU needed)
# ---------------------------------------------------------------------------------------------
def tp_floor(plan, batch: int) -> tuple:
    """(FLOPs, bytes) of one of the four kernels (forward or one vjp) on `batch` elements with
    per-element weights: each reads three of (x1, x2, out, w) once and writes the fourth once, and
    does the same CG multiply-adds."""
    return plan.flops_per_element * batch, plan.bytes_per_element(torch.float32, shared_weights=False) * batch


def conv_plan():
    return nffk.nn.ChannelwiseTensorProduct(CONV["irreps"], CONV["sh"], CONV["lmax"]).plan


def conv_floor(plan, nodes: int, edges: int) -> tuple:
    """Fused conv forward: node features read once (the gather of x[senders] hits L2: 5,000 x 576
    floats = 11.5 MB < 50 MB), edge SH and weights read once, node outputs written once."""
    nbytes = 4 * (nodes * (plan.dim_in1 + plan.dim_out) + edges * (plan.dim_in2 + plan.weight_numel))
    return plan.flops_per_element * edges, nbytes


def sh_floor(lmax: int, vectors: int) -> tuple:
    """Read 3 floats, write (lmax+1)^2 per vector; FLOPs counted on the generated Triton code."""
    flops = _generated_flops(tuple(range(lmax + 1)), "forward") + 6  # + the normalisation (x/|x|)
    return flops * vectors, 4 * vectors * (3 + (lmax + 1) ** 2)


def _generated_flops(degrees, kind) -> int:
    kernels = _triton_kernels(interpret_ok=True)
    source = kernels.spherical_harmonics._source(degrees, kind)
    lines = [line.split("=", 1)[1] for line in source.splitlines() if line.strip().startswith("q")]
    return sum(line.count("*") + line.count("+") + line.count(" - ") for line in lines)


def nl_sizes(cells: int) -> tuple:
    """(atoms, pairs) of Cu fcc with `cells`^3 conventional cells, by counting shells exactly."""
    atoms = 4 * cells ** 3
    a, cutoff = NL["lattice"], NL["cutoff"]
    basis = torch.tensor([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]], dtype=torch.float64)
    reach = math.ceil(cutoff / a) + 1
    grid = torch.stack(torch.meshgrid(*[torch.arange(-reach, reach + 1, dtype=torch.float64)] * 3, indexing="ij"),
                       -1).reshape(-1, 1, 3)
    points = (grid + basis).reshape(-1, 3) * a
    distance = points.norm(dim=1)
    per_atom = int(((distance > 0) & (distance < cutoff)).sum())  # every fcc site is equivalent
    return atoms, atoms * per_atom


def nl_floor(cells: int) -> tuple:
    """Bytes: positions read, (sender, receiver, 3 shifts) int64 written per pair; FLOPs: ~27 bins of
    ~cutoff^3 volume tested per atom at 8 FLOPs per candidate (fp64 on the GPU: 67 TFLOP/s too)."""
    atoms, pairs = nl_sizes(cells)
    density = 4 / NL["lattice"] ** 3
    candidates = atoms * 27 * density * NL["cutoff"] ** 3
    return 8 * candidates, 24 * atoms + 40 * pairs


def floors_table() -> list:
    rows = []
    for name, (node, edge, out, mode, batch) in TP_CONFIGS.items():
        plan, _ = build_tp(name)
        flops, nbytes = tp_floor(plan.plan, batch)
        rows.append(("tensor product", f"{name} (E={batch:,})", "each of fwd / vjp_x1 / vjp_x2 / vjp_w", flops,
                     nbytes))
    plan = conv_plan()
    edges = CONV["nodes"] * CONV["neighbours"]
    flops, nbytes = conv_floor(plan, CONV["nodes"], edges)
    rows.append(("fused conv", f"NequIP-like N={CONV['nodes']:,} E={edges:,}", "forward (each vjp alike)", flops,
                 nbytes))
    for lmax in SH["lmax"]:
        flops, nbytes = sh_floor(lmax, SH["vectors"])
        rows.append(("spherical harmonics", f"l<={lmax}, {SH['vectors']:,} vectors", "forward", flops, nbytes))
    for cells in NL["cells"]:
        atoms, pairs = nl_sizes(cells)
        flops, nbytes = nl_floor(cells)
        rows.append(("neighbour list", f"Cu fcc {atoms:,} atoms, {pairs:,} pairs", "count + fill + sort", flops,
                     nbytes))
    return rows


def print_floors():
    print(f"H100 SXM floors: HBM {H100_HBM_BYTES_PER_S / 1e12:.2f} TB/s, FP32 {H100_FP32_FLOPS / 1e12:.0f} TFLOP/s "
          "(no tensor cores); float32 data, per-element/per-edge weights")
    print(f"{'op':20s} {'config':42s} {'kernel':38s} {'GFLOP':>8s} {'MB':>8s} {'FLOP/B':>7s} {'floor us':>9s}  bound")
    for op, config, kernel, flops, nbytes in floors_table():
        bound = "memory" if nbytes / H100_HBM_BYTES_PER_S >= flops / H100_FP32_FLOPS else "compute"
        print(f"{op:20s} {config:42s} {kernel:38s} {flops / 1e9:8.3f} {nbytes / 1e6:8.2f} {flops / nbytes:7.2f} "
              f"{1e6 * floor_seconds(flops, nbytes):9.1f}  {bound}")


# ---------------------------------------------------------------------------------------------
# Peers (each optional: a missing or failing peer is reported, never fatal)
# ---------------------------------------------------------------------------------------------
def _triton_kernels(interpret_ok=False):
    if not torch.cuda.is_available() and interpret_ok:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # only the code generator is used
    return backends.triton_kernels()


def cuequivariance_available() -> str | None:
    """None when cuEquivariance can run with its CUDA kernels, else why not."""
    try:
        import cuequivariance_torch  # noqa: F401
        import cuequivariance_ops_torch  # noqa: F401
    except ImportError as err:
        return f"not installed with its CUDA kernels ({err.name})"
    return None


def cuet_tp(name: str, device):
    import cuequivariance as cue
    import cuequivariance_torch as cuet
    node, edge, out, mode, _ = TP_CONFIGS[name]
    ours, _ = build_tp(name)
    common = dict(layout=cue.mul_ir, shared_weights=False, internal_weights=False, device=device,
                  use_fallback=False)
    if mode == "uvu":
        filter_out = [cue.O3(ir.l, ir.p) for _, ir in ours.irreps_out]
        return cuet.ChannelWiseTensorProduct(cue.Irreps("O3", node), cue.Irreps("O3", edge), filter_out, **common)
    return cuet.FullyConnectedTensorProduct(cue.Irreps("O3", node), cue.Irreps("O3", edge),
                                            cue.Irreps("O3", str(ours.irreps_out)), **common)


def oeq_tp(name: str, device):
    import openequivariance as oeq
    node, edge, out, mode, _ = TP_CONFIGS[name]
    ours, _ = build_tp(name)
    instructions = [(i.i_in1, i.i_in2, i.i_out, i.connection_mode, i.has_weight) for i in ours.instructions]
    problem = oeq.TPProblem(str(ours.irreps_in1), str(ours.irreps_in2), str(ours.irreps_out), instructions,
                            shared_weights=False, internal_weights=False)
    return oeq.TensorProduct(problem, torch_op=True)


# ---------------------------------------------------------------------------------------------
# GPU cases
# ---------------------------------------------------------------------------------------------
def _time(fn, inputs, repeat):
    try:
        return median_time(fn, inputs, warmup=3, repeat=repeat)
    except Exception as err:  # noqa: BLE001 - a peer failing must not stop the table
        return f"error: {type(err).__name__}: {str(err)[:60]}"


def _fwd(module):
    def run(*args):
        with torch.no_grad():
            module(*args)
    return run


def _fwd_bwd(module):
    def run(*args):
        args = [a.detach().requires_grad_() if a.is_floating_point() else a for a in args]
        module(*args).pow(2).sum().backward()
    return run


def tp_cases(quick: bool, repeat: int, device, configs=None):
    """Rows of the tensor-product configs (`configs`: their names; None: all)."""
    for name, (node, edge, out, mode, batch) in TP_CONFIGS.items():
        if configs and name not in configs:
            continue
        batch = batch // 10 if quick else batch
        ours, e3nn_module = build_tp(name, backend="triton")
        impls = {"nffk[triton]": ours.to(device)}
        if "cuda" in implemented_backends(ours.plan) and backends.unavailable_reason("cuda", device) is None:
            try:
                impls["nffk[cuda]"] = build_tp(name, backend="cuda")[0].to(device)
            except Exception as err:  # noqa: BLE001
                impls["nffk[cuda]"] = f"n/a ({err})"
        if e3nn_module is not None:
            impls["e3nn"] = e3nn_module.to(device)
        why = cuequivariance_available()
        try:
            impls["cuEquivariance"] = cuet_tp(name, device) if why is None else f"n/a ({why})"
        except Exception as err:  # noqa: BLE001
            impls["cuEquivariance"] = f"n/a ({type(err).__name__}: {err})"
        try:
            impls["OpenEquivariance"] = oeq_tp(name, device)
        except ImportError:
            impls["OpenEquivariance"] = "n/a (not installed)"
        except Exception as err:  # noqa: BLE001
            impls["OpenEquivariance"] = f"n/a ({type(err).__name__}: {err})"
        flops, nbytes = tp_floor(ours.plan, batch)
        for pass_name, make, kernels in (("forward", _fwd, 1), ("forward+backward", _fwd_bwd, 4)):
            row = {"case": f"tp {name}", "size": f"E={batch:,}", "pass": pass_name,
                   "floor": kernels * floor_seconds(flops, nbytes)}
            for label, module in impls.items():
                if isinstance(module, str):
                    row[label] = module
                    continue
                numel = getattr(module, "weight_numel", ours.weight_numel)
                inputs = [(torch.randn(batch, ours.plan.dim_in1, device=device),
                           torch.randn(batch, ours.plan.dim_in2, device=device),
                           torch.randn(batch, numel, device=device)) for _ in range(2)]
                row[label] = _time(make(module), inputs, repeat)
            yield row


def conv_cases(quick: bool, repeat: int, device):
    from nffk.ops.conv import ConvGraph, conv
    nodes = CONV["nodes"] // (10 if quick else 1)
    edges = nodes * CONV["neighbours"]
    module = nffk.nn.ChannelwiseTensorProduct(CONV["irreps"], CONV["sh"], CONV["lmax"])
    plan = module.plan
    gen = torch.Generator().manual_seed(0)
    receivers = torch.arange(nodes).repeat_interleave(CONV["neighbours"]).to(device)
    senders = torch.randint(0, nodes, (edges,), generator=gen).to(device)
    graph = ConvGraph.build(senders, receivers, nodes)
    inputs = [(torch.randn(nodes, plan.dim_in1, device=device), torch.randn(edges, plan.dim_in2, device=device),
               torch.randn(edges, plan.weight_numel, device=device)) for _ in range(2)]
    impls = {
        "nffk[triton] fused": lambda x, sh, w: conv(x, sh, w, plan=plan, graph=graph, backend="triton"),
        "nffk[reference] unfused": lambda x, sh, w: conv(x, sh, w, plan=plan, graph=graph, backend="reference"),
    }
    why = backends.unavailable_reason("cuda", device)
    impls["nffk[cuda] fused"] = ((lambda x, sh, w: conv(x, sh, w, plan=plan, graph=graph, backend="cuda"))
                                 if why is None else f"n/a ({why})")
    try:
        import e3nn.o3
        instructions = [(i.i_in1, i.i_in2, i.i_out, i.connection_mode, i.has_weight) for i in module.instructions]
        e3nn_tp = e3nn.o3.TensorProduct(CONV["irreps"], CONV["sh"], str(plan.irreps_out), instructions,
                                        shared_weights=False, internal_weights=False).to(device)
        impls["e3nn (gather, TP, index_add)"] = lambda x, sh, w: torch.zeros(
            nodes, plan.dim_out, device=device).index_add(0, receivers, e3nn_tp(x[senders], sh, w))
    except ImportError:
        impls["e3nn (gather, TP, index_add)"] = "n/a (not installed)"
    why = cuequivariance_available()
    if why is None:
        try:
            import cuequivariance as cue
            import cuequivariance_torch as cuet
            filter_out = [cue.O3(ir.l, ir.p) for _, ir in plan.irreps_out]
            cuet_tp = cuet.ChannelWiseTensorProduct(cue.Irreps("O3", CONV["irreps"]), cue.Irreps("O3", CONV["sh"]),
                                                    filter_out, layout=cue.mul_ir, shared_weights=False,
                                                    internal_weights=False, device=device, use_fallback=False)
            impls["cuEquivariance (indexed)"] = lambda x, sh, w: cuet_tp(
                x, sh, w, indices_1=senders, indices_out=receivers, size_out=nodes)
        except Exception as err:  # noqa: BLE001
            impls["cuEquivariance (indexed)"] = f"n/a ({type(err).__name__}: {err})"
    else:
        impls["cuEquivariance (indexed)"] = f"n/a ({why})"
    flops, nbytes = conv_floor(plan, nodes, edges)
    for pass_name, make, kernels in (("forward", _fwd, 1), ("forward+backward", _fwd_bwd, 4)):
        row = {"case": "conv NequIP-like", "size": f"N={nodes:,} E={edges:,}", "pass": pass_name,
               "floor": kernels * floor_seconds(flops, nbytes)}
        for label, fn in impls.items():
            row[label] = fn if isinstance(fn, str) else _time(make(fn), inputs, repeat)
        yield row


def sh_cases(quick: bool, repeat: int, device):
    from nffk.o3.spherical_harmonics import _scaled_coefficients
    from nffk.ops.spherical_harmonics import spherical_harmonics
    kernels = backends.triton_kernels().spherical_harmonics
    vectors = SH["vectors"] // (10 if quick else 1)
    for lmax in SH["lmax"]:
        degrees = tuple(range(lmax + 1))
        coefficients = kernels.coefficient_tensor(*_scaled_coefficients(lmax, "component"), device, torch.float32)
        inputs = [(torch.randn(vectors, 3, device=device),) for _ in range(2)]
        impls = {"nffk[triton]": lambda x: kernels.forward(torch.nn.functional.normalize(x, dim=-1), degrees,
                                                           coefficients)}
        why = backends.unavailable_reason("cuda", device)
        impls["nffk[cuda]"] = ((lambda x: spherical_harmonics(list(degrees), x, True, "component", backend="cuda"))
                               if why is None else f"n/a ({why})")
        try:
            import e3nn.o3
            impls["e3nn"] = lambda x: e3nn.o3.spherical_harmonics(list(degrees), x, True, "component")
        except ImportError:
            impls["e3nn"] = "n/a (not installed)"
        why = cuequivariance_available()
        try:
            import cuequivariance_torch as cuet
            impls["cuEquivariance"] = cuet.SphericalHarmonics(list(degrees), normalize=True, device=device,
                                                              use_fallback=False) if why is None else f"n/a ({why})"
        except Exception as err:  # noqa: BLE001
            impls["cuEquivariance"] = f"n/a ({type(err).__name__}: {err})"
        try:
            import sphericart.torch
            calculator = sphericart.torch.SphericalHarmonics(lmax)
            impls["sphericart"] = lambda x: calculator.compute(x)
        except Exception as err:  # noqa: BLE001
            impls["sphericart"] = f"n/a ({type(err).__name__})"
        flops, nbytes = sh_floor(lmax, vectors)
        row = {"case": f"sh l<={lmax}", "size": f"{vectors:,} vectors", "pass": "forward",
               "floor": floor_seconds(flops, nbytes)}
        for label, fn in impls.items():
            row[label] = fn if isinstance(fn, str) else _time(_fwd(fn), inputs, repeat)
        yield row


def fcc(cells: int, device):
    a = NL["lattice"]
    basis = torch.tensor([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]], dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(*[torch.arange(cells, dtype=torch.float64)] * 3, indexing="ij"), -1)
    positions = ((grid.reshape(-1, 1, 3) + basis).reshape(-1, 3) * a)
    positions += 0.05 * torch.randn(positions.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cell = torch.eye(3, dtype=torch.float64) * a * cells
    # One dtype for both: vesin-torch refuses float32 positions with a float64 cell.
    return positions.float().to(device), cell.float().to(device)


def nl_cases(quick: bool, repeat: int, device):
    from nffk.ops.neighbor_list import neighbor_list
    for cells in NL["cells"][:1] if quick else NL["cells"]:
        positions, cell = fcc(cells, device)
        impls = {"nffk[triton]": lambda p, c: neighbor_list(p, NL["cutoff"], c, backend="triton")}
        why = backends.unavailable_reason("cuda", device)
        impls["nffk[cuda]"] = ((lambda p, c: neighbor_list(p, NL["cutoff"], c, backend="cuda"))
                               if why is None else f"n/a ({why})")
        cpu_positions, cpu_cell = positions.cpu(), cell.cpu()
        impls["nffk[cpu] (CPU, for scale)"] = (
            (lambda p, c: neighbor_list(cpu_positions, NL["cutoff"], cpu_cell, backend="cpu"))
            if backends.unavailable_reason("cpu", torch.device("cpu")) is None else "n/a (no extension)")
        try:
            import vesin.torch
            calculator = vesin.torch.NeighborList(cutoff=NL["cutoff"], full_list=True)
            impls["vesin-torch"] = lambda p, c: calculator.compute(p, c, periodic=True, quantities="ijS")
        except Exception as err:  # noqa: BLE001
            impls["vesin-torch"] = f"n/a ({type(err).__name__})"
        flops, nbytes = nl_floor(cells)
        row = {"case": "neighbour list Cu fcc", "size": f"{positions.shape[0]:,} atoms", "pass": "build",
               "floor": floor_seconds(flops, nbytes)}
        for label, fn in impls.items():
            row[label] = fn if isinstance(fn, str) else _time(fn, [(positions, cell)], repeat)
        yield row


CASES = {"tp": tp_cases, "conv": conv_cases, "sh": sh_cases, "nl": nl_cases}


def print_header():
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | float32 | times in ms, "
          "(xR) = R times nffk's first column, floor = H100 floor (NOTES.md)", flush=True)


def print_row(row):
    """One table row, flushed: a run cut short by a time limit keeps the rows it measured."""
    labels = [k for k in row if k not in ("case", "size", "pass", "floor")]
    first = row[labels[0]]
    cells = []
    for label in labels:
        value = row[label]
        if isinstance(value, str):
            cells.append(f"{label}: {value}")
            continue
        ratio = f" (x{value / first:.2f})" if isinstance(first, float) and label != labels[0] else ""
        cells.append(f"{label}: {1e3 * value:.3f}{ratio}")
    fraction = f"{100 * row['floor'] / first:.0f}% of floor" if isinstance(first, float) else ""
    print(f"{row['case']:24s} {row['size']:22s} {row['pass']:17s} floor {1e3 * row['floor']:.3f} | "
          + " | ".join(cells) + f" | {fraction}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--floors", action="store_true", help="print the H100 floors of every case and exit")
    parser.add_argument("--quick", action="store_true", help="sizes / 10 and fewer repeats")
    parser.add_argument("--cases", nargs="*", choices=list(CASES), default=list(CASES))
    parser.add_argument("--tp-configs", nargs="*", choices=list(TP_CONFIGS), default=None,
                        help="the tensor-product configs to time (default: all)")
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    if args.floors:
        print_floors()
        return 0
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here; nothing to time. `python bench/bench_gpu.py --floors` prints the "
              "H100 floors without one.")
        return 0
    device = torch.device("cuda")
    print_header()
    cases = dict(CASES, tp=functools.partial(tp_cases, configs=args.tp_configs))
    for name in args.cases:
        for row in cases[name](args.quick, 3 if args.quick else args.repeat, device):
            print_row(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
