"""The CUDA kernels' thread functions (csrc/cuda/*_threads.cuh, the code every CUDA thread runs)
executed on the CPU, thread by thread, against the reference: forward, the three vjps of the
tensor product and the fused conv (gaps, unweighted paths, weighted_only, shared and per-edge
weights, uvu and uvw), spherical harmonics with first and second derivatives, and the
neighbour-list search inside the cell list's torch binning and sorting.

Needs nvcc (it builds tests/kernels/cuda_emulation.cu as a host library) but no GPU. Launch
configuration, streams and the torch bindings are covered by `pytest -m gpu` (test_gpu.py)."""
import ctypes
import math
import os
import shutil
import subprocess

import pytest
import torch

from nffk import o3
from nffk.ops.conv import ConvGraph
from nffk.ops.conv import ReferenceKernels as ConvReference
from nffk.ops.spherical_harmonics import NORMALIZATIONS, _tables
from nffk.ops.tensor_product import CUDA_LAYOUT, ReferenceKernels, TensorProductPlan, cuda_program

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NVCC = os.environ.get("NVCC") or shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="needs nvcc to build the host emulation of the CUDA kernels")


@pytest.fixture(scope="module")
def emulation(tmp_path_factory):
    library = tmp_path_factory.mktemp("cuda_emulation") / "emulation.so"
    built = subprocess.run([NVCC, "-shared", "-Xcompiler", "-fPIC", "-std=c++17", "-O1",
                            "-I", os.path.join(ROOT, "csrc", "include"), "-I", os.path.join(ROOT, "csrc", "cuda"),
                            "-o", str(library), os.path.join(ROOT, "tests", "kernels", "cuda_emulation.cu")],
                           capture_output=True, text=True)
    if built.returncode != 0:
        pytest.fail(f"nvcc could not build the host emulation:\n{built.stderr[-4000:]}")
    return ctypes.CDLL(str(library))


def pointer(t):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def nan(*shape):
    return torch.full(shape, float("nan"), dtype=torch.float64)


def run_tp(lib, plan, kernel, a, b, w, shared, weighted_only, rows, out, edges=(None,) * 5, chunk=1):
    program, layout, cg_value, coefficients = cuda_program(plan, "cpu", torch.float64)
    layout = torch.tensor(layout, dtype=torch.int64)
    status = lib.nffk_emulate_tp(kernel, pointer(program), pointer(layout), pointer(cg_value), pointer(coefficients),
                                 pointer(a), pointer(b), pointer(w), int(shared), int(weighted_only),
                                 *(pointer(e) for e in edges), ctypes.c_int64(rows), ctypes.c_int64(chunk),
                                 pointer(out))
    assert status == 0
    return out


def weight_grad(lib, plan, x1, x2, g, shared, edges_count, edges=(None,) * 5):
    """The launcher's two-stage shared-weight gradient: chunks of edges, then a sum over chunks."""
    chunk = 3 if shared else 1
    partial = nan(math.ceil(edges_count / chunk), plan.weight_numel)
    run_tp(lib, plan, 3, x1, x2, g, shared, False, edges_count, partial, edges, chunk)
    return partial.sum(0) if shared else partial


def plans():
    # Gaps in every row (3x0o of out, 2e of x2 are touched by no path), an unweighted uvu path,
    # uvw paths, several paths into one output block, l up to 3 and a large-d (l = 4) plan.
    mixed = TensorProductPlan("4x0e+3x1o+2x2e", "2x0e+1x1o+1x2e+1x3o+1x1e", "4x0e+5x1o+3x0o+2x2e+2x3o+3x1e", [
        (0, 0, 0, "uvu", True), (1, 1, 0, "uvw", True), (0, 1, 1, "uvw", True), (1, 0, 1, "uvw", True),
        (2, 1, 1, "uvw", True), (1, 1, 5, "uvu", False), (2, 1, 4, "uvu", True), (1, 2, 4, "uvw", True),
        (2, 0, 3, "uvu", False), (1, 3, 3, "uvw", True)])
    channelwise = TensorProductPlan("5x0e+3x1o+2x4e", "1x0e+1x1o+1x2e", "5x0e+3x0e+3x1o+3x2e+2x4e+2x3o", [
        (0, 0, 0, "uvu", True), (1, 1, 1, "uvu", True), (1, 0, 2, "uvu", True), (1, 1, 3, "uvu", True),
        (2, 0, 4, "uvu", True), (2, 2, 4, "uvu", True), (2, 1, 5, "uvu", True)])
    return {"mixed": mixed, "channelwise-l4": channelwise}


@pytest.mark.parametrize("name", ["mixed", "channelwise-l4"])
def test_tensor_product_threads_against_reference(emulation, name, seeded):
    plan = plans()[name]
    batch = 7
    x1, x2, g = (torch.randn(batch, d, dtype=torch.float64, generator=seeded)
                 for d in (plan.dim_in1, plan.dim_in2, plan.dim_out))
    for shared in (True, False):
        w = torch.randn(*(() if shared else (batch,)), plan.weight_numel, dtype=torch.float64, generator=seeded)
        for only in (False, True):
            cases = [(0, (x1, x2), ReferenceKernels.forward(plan, x1, x2, w, only), plan.dim_out),
                     (1, (g, x2), ReferenceKernels.vjp_x1(plan, g, x2, w, only), plan.dim_in1),
                     (2, (x1, g), ReferenceKernels.vjp_x2(plan, x1, g, w, only), plan.dim_in2)]
            for kernel, (a, b), expected, width in cases:
                got = run_tp(emulation, plan, kernel, a, b, w, shared, only, batch, nan(batch, width))
                torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-10, msg=f"{kernel=} {shared=} {only=}")
        expected = ReferenceKernels.vjp_w(plan, x1, x2, g, shared)
        torch.testing.assert_close(weight_grad(emulation, plan, x1, x2, g, shared, batch), expected,
                                   atol=1e-12, rtol=1e-10)


def test_cuda_program_tables_cover_every_output_once():
    """Every element of each produced row belongs to exactly one (segment, channel) slot, so the
    kernels write every output element once (no gaps, no two threads on one element)."""
    for plan in plans().values():
        program, layout, _, _ = cuda_program(plan, "cpu", torch.float64)
        at = dict(zip(CUDA_LAYOUT, layout))
        for role, dim in (("out", plan.dim_out), ("x1", plan.dim_in1), ("x2", plan.dim_in2)):
            covered = torch.zeros(dim, dtype=torch.int64)
            slots = program[at[f"{role}_slots"]:][:2 * at[f"{role}_num_slots"]].view(-1, 2)
            for segment, channel in slots.tolist():
                offset, mul, d = program[at[f"{role}_segments"] + 5 * segment:][:3].tolist()
                assert 0 <= channel < mul
                covered[offset + channel * d:offset + (channel + 1) * d] += 1
            assert torch.all(covered == 1), role


def test_conv_threads_against_reference(emulation, seeded):
    plan = plans()["mixed"]
    nodes, edges = 9, 30
    senders = torch.randint(0, nodes, (edges,), generator=seeded)
    receivers = torch.sort(torch.randint(0, nodes - 2, (edges,), generator=seeded)).values  # 2 nodes receive nothing
    graph = ConvGraph.build(senders, receivers, nodes)
    x = torch.randn(nodes, plan.dim_in1, dtype=torch.float64, generator=seeded)
    sh = torch.randn(edges, plan.dim_in2, dtype=torch.float64, generator=seeded)
    g = torch.randn(nodes, plan.dim_out, dtype=torch.float64, generator=seeded)
    reference = ConvReference
    # EdgeRows of each conv launcher (csrc/cuda/conv.cu): ptr, order, x1, x2, out.
    forward_rows = (graph.receiver_ptr, None, graph.senders, None, None)
    vjp_x_rows = (graph.sender_ptr, graph.sender_order, None, None, graph.receivers)
    per_edge_rows = (None, None, graph.senders, None, graph.receivers)
    for shared in (True, False):
        w = torch.randn(*(() if shared else (edges,)), plan.weight_numel, dtype=torch.float64, generator=seeded)
        for only in (False, True):
            got = run_tp(emulation, plan, 0, x, sh, w, shared, only, nodes, nan(nodes, plan.dim_out), forward_rows)
            torch.testing.assert_close(got, reference.forward(plan, x, sh, w, graph, only), atol=1e-12, rtol=1e-10)
            got = run_tp(emulation, plan, 1, g, sh, w, shared, only, nodes, nan(nodes, plan.dim_in1), vjp_x_rows)
            torch.testing.assert_close(got, reference.vjp_x(plan, g, sh, w, graph, only), atol=1e-12, rtol=1e-10)
            got = run_tp(emulation, plan, 2, x, g, w, shared, only, edges, nan(edges, plan.dim_in2), per_edge_rows)
            torch.testing.assert_close(got, reference.vjp_sh(plan, x, g, w, graph, only), atol=1e-12, rtol=1e-10)
        got = weight_grad(emulation, plan, x, sh, g, shared, edges, per_edge_rows)
        torch.testing.assert_close(got, reference.vjp_w(plan, x, sh, g, graph, shared), atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("ls,normalize,normalization", [([0, 1, 2, 3], True, "integral"), ([5, 2], False, "norm"),
                                                        ([10, 0], True, "component")])
def test_spherical_harmonics_threads_against_autograd_of_the_reference(emulation, ls, normalize, normalization,
                                                                        seeded):
    points, dim = 11, sum(2 * l + 1 for l in ls)
    x = torch.randn(points, 3, dtype=torch.float64, generator=seeded)
    x[0] *= 1e-3  # short vectors are fine; only the zero vector's second derivative is singular
    grad = torch.randn(points, dim, dtype=torch.float64, generator=seeded)
    h = torch.randn(points, 3, dtype=torch.float64, generator=seeded)
    a, b, src, coef = _tables(max(ls))
    degrees = torch.tensor(ls, dtype=torch.int64)
    index = NORMALIZATIONS.index(normalization)

    def emulate(kernel, out, out2=None):
        status = emulation.nffk_emulate_sh(kernel, pointer(degrees), ctypes.c_int64(len(ls)), ctypes.c_int64(index),
                                           int(normalize), pointer(x), pointer(grad), pointer(h), pointer(a),
                                           pointer(b), pointer(src), pointer(coef), ctypes.c_int64(points),
                                           pointer(out), pointer(out2))
        assert status == 0
        return out

    xr = x.clone().requires_grad_()
    gr = grad.clone().requires_grad_()
    y = o3.spherical_harmonics(ls, xr, normalize, normalization)
    (vjp,) = torch.autograd.grad(y, xr, gr, create_graph=True)
    second_x, second_grad = torch.autograd.grad(vjp, (xr, gr), h)
    scale = dict(atol=1e-10 * max(1.0, y.abs().max().item()), rtol=1e-9)
    torch.testing.assert_close(emulate(0, nan(points, dim)), y.detach(), **scale)
    torch.testing.assert_close(emulate(1, nan(points, 3)), vjp.detach(), **scale)
    got_x, got_grad = nan(points, 3), nan(points, dim)
    emulate(2, got_x, got_grad)
    torch.testing.assert_close(got_grad, second_grad, **scale)
    torch.testing.assert_close(got_x, second_x, atol=1e-8 * max(1.0, second_x.abs().max().item()), rtol=1e-8)


def test_neighbor_list_search_thread_against_reference(emulation, seeded):
    """The "cuda" backend's pipeline on the CPU: kernels/neighbor_list.py bins and sorts, the CUDA
    thread function searches; same sorted pairs, shifts and ptr as the reference."""
    from nffk import backends
    from nffk.ops.neighbor_list import _validate, binning_cells, neighbor_list

    def search(tensors, counts, offsets, senders, images, fill, cutoff_sq, image_bias, image_width,
               self_interaction):
        status = emulation.nffk_emulate_nl_search(
            *(pointer(t) for t in tensors), ctypes.c_double(cutoff_sq), ctypes.c_int64(image_bias),
            ctypes.c_int64(image_width), int(self_interaction), ctypes.c_int64(counts.shape[0]),
            pointer(offsets) if fill else None, pointer(counts), pointer(senders), pointer(images))
        assert status == 0

    f64 = dict(dtype=torch.float64)
    triclinic = torch.tensor([[4.0, 0.0, 0.0], [1.0, 3.5, 0.0], [0.5, 0.3, 1.2]], **f64)  # thinner than the cutoff
    positions = torch.rand(16, 3, generator=seeded, **f64) * 4
    batch = torch.tensor([0] * 6 + [1] * 4 + [2] * 6)
    cases = [dict(positions=positions[:9], cutoff=2.6, cell=torch.eye(3, **f64) * 4),
             dict(positions=positions[:6] - 3, cutoff=2.9, cell=triclinic, pbc=[True, False, True]),
             dict(positions=positions[:5], cutoff=2.2, cell=triclinic, self_interaction=True),
             dict(positions=positions, cutoff=1.7),
             dict(positions=positions, cutoff=2.0, batch=batch, cell=torch.stack([torch.eye(3, **f64) * 4, triclinic,
                                                                                  torch.eye(3, **f64) * 2.5]))]
    for case in cases:
        case = dict(case)
        self_interaction = case.pop("self_interaction", False)
        systems = _validate(case["positions"], case["cutoff"], case.get("cell"), case.get("pbc"), case.get("batch"))
        got = backends.triton_kernels().neighbor_list.neighbor_list(
            systems.positions, systems.ptr, binning_cells(systems.cell, systems.pbc), systems.pbc, systems.cutoff,
            self_interaction, False, False, search=search)
        expected = neighbor_list(**case, self_interaction=self_interaction, backend="reference")
        assert got[0].numel() > 0
        for name, a, b in zip(expected._fields[:4], got[:4], expected[:4]):
            assert torch.equal(a, b), name
