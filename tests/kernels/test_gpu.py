"""On a GPU (`pytest -m gpu`): every GPU backend against the reference at realistic sizes, no host
synchronisation on the hot path, CUDA-graph capture of a training step, torch.compile, determinism."""
import pytest
import torch

import nffk.nn
from nffk import backends
from nffk.ops.conv import ConvGraph, conv
from nffk.ops.conv import implemented_backends as conv_backends
from nffk.ops.neighbor_list import neighbor_list
from nffk.ops.tensor_product import ReferenceKernels, implemented_backends, tensor_product

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda")

# (node irreps, edge irreps, output lmax or irreps, mode, batch): the benchmark configs, batch sizes / 2.
CONFIGS = {
    "nequip": ("64x0o+64x0e+64x1o+64x1e+64x2o+64x2e", "0e+1o+2e", 2, "uvu", 5_000),
    "mace-medium": ("128x0e+128x1o", "0e+1o+2e+3o", 2, "uvu", 5_000),
    "high-order": ("32x0e+32x1o+32x2e+32x3o+32x4e+32x5o+32x6e", "0e+1o+2e+3o+4e+5o+6e", 6, "uvu", 500),
    "fully-connected": ("48x0e+48x0o+10x1o+10x1e", "0e+1o+2e", "48x0e+48x0o+10x1o+10x1e", "uvw", 5_000),
}


def gpu_backends(implemented):
    return [b for b in implemented if b not in ("reference", "cpu") and backends.unavailable_reason(b, CUDA) is None]


def module(name):
    node, edge, out, mode, _ = CONFIGS[name]
    if mode == "uvu":
        return nffk.nn.ChannelwiseTensorProduct(node, edge, out)
    return nffk.nn.FullyConnectedTensorProduct(node, edge, out, shared_weights=False)


def relative_error(got, expected):
    return ((got - expected).norm() / expected.norm().clamp(min=1e-30)).item()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_tensor_product_backends_vs_reference(name):
    plan = module(name).plan
    batch = CONFIGS[name][4]
    gen = torch.Generator(device=CUDA).manual_seed(0)
    x1, x2 = (torch.randn(batch, d, device=CUDA, generator=gen) for d in (plan.dim_in1, plan.dim_in2))
    g = torch.randn(batch, plan.dim_out, device=CUDA, generator=gen)
    for shared in (False, True):
        w = torch.randn(*(() if shared else (batch,)), plan.weight_numel, device=CUDA, generator=gen)
        expected = {"forward": ReferenceKernels.forward(plan, x1, x2, w, False),
                    "vjp_x1": ReferenceKernels.vjp_x1(plan, g, x2, w, False),
                    "vjp_x2": ReferenceKernels.vjp_x2(plan, x1, g, w, False),
                    "vjp_w": ReferenceKernels.vjp_w(plan, x1, x2, g, shared)}
        for backend in gpu_backends(implemented_backends(plan)):
            ops = torch.ops.nffk
            got = {"forward": ops.tp_forward(x1, x2, w, plan.id, backend, False),
                   "vjp_x1": ops.tp_vjp_x1(g, x2, w, plan.id, backend, False),
                   "vjp_x2": ops.tp_vjp_x2(x1, g, w, plan.id, backend, False),
                   "vjp_w": ops.tp_vjp_w(x1, x2, g, plan.id, backend, shared)}
            for kernel, value in got.items():
                assert relative_error(value, expected[kernel]) < 1e-5, (name, backend, kernel, shared)


def nequip_graph(nodes=5_000, neighbours=30):
    gen = torch.Generator(device=CUDA).manual_seed(1)
    receivers = torch.arange(nodes, device=CUDA).repeat_interleave(neighbours)
    senders = torch.randint(0, nodes, (nodes * neighbours,), device=CUDA, generator=gen)
    return ConvGraph.build(senders, receivers, nodes)


def conv_inputs(plan, graph, requires_grad=False):
    gen = torch.Generator(device=CUDA).manual_seed(2)
    nodes, edges = graph.num_nodes, graph.senders.shape[0]
    return [torch.randn(*shape, device=CUDA, generator=gen).requires_grad_(requires_grad)
            for shape in ((nodes, plan.dim_in1), (edges, plan.dim_in2), (edges, plan.weight_numel))]


def conv_training_step(plan, graph, backend, x, sh, w):
    """Energy, then its gradient w.r.t. the edge SH with create_graph (forces), then a loss on both."""
    energy = conv(x, sh, w, plan=plan, graph=graph, backend=backend).pow(2).sum()
    (d_sh,) = torch.autograd.grad(energy, sh, create_graph=True)
    return energy + d_sh.pow(2).sum()


def test_conv_backends_vs_reference_and_deterministic():
    plan = nffk.nn.ChannelwiseTensorProduct("32x0e+32x0o+32x1o+32x1e+32x2e+32x2o", "0e+1o+2e", 2).plan
    graph = nequip_graph()

    def grads(backend):
        x, sh, w = conv_inputs(plan, graph, requires_grad=True)
        loss = conv_training_step(plan, graph, backend, x, sh, w)
        loss.backward()
        return loss.detach(), x.grad, sh.grad, w.grad

    expected = grads("reference")
    for backend in gpu_backends(conv_backends(plan)):
        first = grads(backend)
        for a, b in zip(first, expected):
            assert relative_error(a, b) < 1e-5, backend
        for a, b in zip(first, grads(backend)):
            assert torch.equal(a, b), f"{backend} is not deterministic"


def require(backend):
    why = backends.unavailable_reason(backend, CUDA)
    if why is not None:
        pytest.skip(f"backend {backend!r} is unavailable: {why}")


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_no_host_synchronisation_and_cuda_graph_capture(backend):
    require(backend)
    plan = nffk.nn.ChannelwiseTensorProduct("16x0e+16x1o+16x2e", "0e+1o+2e", 2).plan
    graph = nequip_graph(nodes=500, neighbours=20)
    x, sh, w = conv_inputs(plan, graph, requires_grad=True)

    def step():
        x.grad = sh.grad = w.grad = None
        conv_training_step(plan, graph, backend, x, sh, w).backward()
        return x.grad, sh.grad, w.grad

    eager = [t.clone() for t in step()]  # warm-up: compiles kernels and builds the plan tables
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    captured = torch.cuda.CUDAGraph()
    x.grad = sh.grad = w.grad = None
    with torch.cuda.graph(captured):
        conv_training_step(plan, graph, backend, x, sh, w).backward()
    captured.replay()
    torch.cuda.synchronize()
    for got, expected in zip((x.grad, sh.grad, w.grad), eager):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_torch_compile_with_inductor(backend):
    require(backend)
    plan = module("nequip").plan
    x1 = torch.randn(300, plan.dim_in1, device=CUDA)
    x2 = torch.randn(300, plan.dim_in2, device=CUDA)
    w = torch.randn(300, plan.weight_numel, device=CUDA)
    compiled = torch.compile(lambda a, b, c: tensor_product(a, b, c, plan, backend=backend).sin(), fullgraph=True)
    expected = tensor_product(x1, x2, w, plan, backend="reference").sin()
    assert relative_error(compiled(x1, x2, w), expected) < 1e-5


def test_spherical_harmonics_kernels_at_200k_vectors():
    from nffk.o3 import spherical_harmonics
    from nffk.o3.spherical_harmonics import _scaled_coefficients
    kernels = backends.triton_kernels().spherical_harmonics
    x = torch.randn(200_000, 3, device=CUDA, dtype=torch.float64)
    g = torch.randn(200_000, 81, device=CUDA, dtype=torch.float64)
    degrees = tuple(range(9))
    coefficients = kernels.coefficient_tensor(*_scaled_coefficients(8, "integral"), CUDA, torch.float64)
    xr = x.clone().requires_grad_()
    y = spherical_harmonics(list(degrees), xr, False, "integral")
    (vjp,) = torch.autograd.grad(y, xr, g)
    assert relative_error(kernels.forward(x, degrees, coefficients), y.detach()) < 1e-12
    assert relative_error(kernels.vjp(x, g, degrees, coefficients), vjp) < 1e-12
    y32 = kernels.forward(x.float(), degrees, coefficients.float())
    assert relative_error(y32.double(), y.detach()) < 1e-5


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_spherical_harmonics_op_backends_with_second_derivatives(backend, dtype):
    """nffk.ops.spherical_harmonics on the GPU: values, forces (vjp) and force-training second
    derivatives against the reference, 200k vectors, normalised, lmax 8."""
    from nffk.ops.spherical_harmonics import spherical_harmonics as op
    require(backend)
    gen = torch.Generator(device=CUDA).manual_seed(3)
    x = torch.randn(200_000, 3, device=CUDA, dtype=torch.float64, generator=gen)
    g = torch.randn(200_000, 81, device=CUDA, dtype=torch.float64, generator=gen)
    h = torch.randn(200_000, 3, device=CUDA, dtype=torch.float64, generator=gen)
    results = {}
    for name in ("reference", backend):
        xr = (x if name == "reference" else x.to(dtype)).clone().requires_grad_()
        gr = (g if name == "reference" else g.to(dtype)).clone().requires_grad_()
        y = op(list(range(9)), xr, True, "integral", backend=name)
        (vjp,) = torch.autograd.grad(y, xr, gr, create_graph=True)
        second = torch.autograd.grad(vjp, (xr, gr), h.to(xr.dtype))
        results[name] = [t.detach().double() for t in (y, vjp, *second)]
    tolerance = 1e-10 if dtype == torch.float64 else 1e-4
    for got, expected in zip(results[backend], results["reference"]):
        assert relative_error(got, expected) < tolerance, backend


@pytest.mark.parametrize("cells", [10, 16])
def test_neighbor_list_cu_fcc(cells):
    a = 3.615
    basis = torch.tensor([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]], dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(*[torch.arange(cells, dtype=torch.float64)] * 3, indexing="ij"), -1)
    positions = (grid.reshape(-1, 1, 3) + basis).reshape(-1, 3) * a
    positions += 0.05 * torch.randn(positions.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cell = torch.eye(3, dtype=torch.float64) * a * cells
    for backend in gpu_backends(("triton", "cuda")):
        try:
            got = neighbor_list(positions.to(CUDA), 5.0, cell.to(CUDA), backend=backend)
        except backends.BackendUnavailable:
            continue
        reference_backend = "cpu" if backends.unavailable_reason("cpu", torch.device("cpu")) is None else "reference"
        expected = neighbor_list(positions, 5.0, cell, backend=reference_backend)
        for name, a_, b_ in zip(got._fields[:4], got[:4], expected[:4]):
            assert torch.equal(a_.cpu(), b_), (backend, name)
