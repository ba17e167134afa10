"""Triton fused conv against the reference (unfused gather -> tensor product -> index_add)."""
import pytest
import torch

from nffk.ops.conv import ConvGraph, ReferenceKernels, conv, implemented_backends
from nffk.ops.tensor_product import TensorProductPlan
from nffk.testing import random_tensor_product


def make_plan(gen, budget=150, **kwargs):
    """A random plan whose interpreter cost (CG non-zeros x channel pairs) stays within `budget`."""
    while True:
        c = random_tensor_product(gen, **kwargs)
        plan = TensorProductPlan(c.irreps_in1, c.irreps_in2, c.irreps_out, c.instructions, **c.options)
        if sum((p.cg_end - p.cg_begin) * p.mul1 * p.mul2 for p in plan.paths) <= budget:
            return plan


def random_graph(gen, num_nodes, num_edges, device):
    """Edges sorted by receiver; the last node neither sends nor receives (isolated)."""
    receivers = torch.sort(torch.randint(0, num_nodes - 1, (num_edges,), generator=gen)).values
    senders = torch.randint(0, num_nodes - 1, (num_edges,), generator=gen)
    return ConvGraph.build(senders.to(device), receivers.to(device), num_nodes)


def randn(gen, *shape, device):
    return torch.randn(*shape, dtype=torch.float64, generator=gen).to(device)


@pytest.mark.parametrize("modes", [("uvu",), ("uvw", "uvv"), ("uuw", "uuu", "uvuv")])
def test_every_kernel_matches_the_reference(modes, seeded, device, poisoned):
    plan = make_plan(seeded, modes=modes, lmax=2, max_mul=2, max_paths=3)
    graph = random_graph(seeded, 6, 13, device)
    x, sh = randn(seeded, 6, plan.dim_in1, device=device), randn(seeded, 13, plan.dim_in2, device=device)
    g = randn(seeded, 6, plan.dim_out, device=device)
    kernels = poisoned.conv
    for shared in (False, True):
        w = randn(seeded, *(() if shared else (13,)), plan.weight_numel, device=device)
        only = bool(torch.randint(0, 2, (), generator=seeded))
        # block_rows=4: several row tiles, the last one partial.
        for name, args in (("forward", (x, sh, w, graph, only)), ("vjp_x", (g, sh, w, graph, only)),
                           ("vjp_sh", (x, g, w, graph, only)), ("vjp_w", (x, sh, g, graph, shared))):
            got = getattr(kernels, name)(plan, *args, block_rows=4)
            torch.testing.assert_close(got, getattr(ReferenceKernels, name)(plan, *args), atol=1e-10, rtol=1e-10)


def test_double_backward_through_the_autograd_closure(seeded, device):
    plan = make_plan(seeded, modes=["uvu", "uvw"], lmax=2, max_mul=2, max_paths=2)
    assert "triton" in implemented_backends(plan)
    graph = random_graph(seeded, 4, 9, device)
    inputs = (randn(seeded, 4, plan.dim_in1, device=device), randn(seeded, 9, plan.dim_in2, device=device),
              randn(seeded, 9, plan.weight_numel, device=device))

    def grads(backend):
        x, sh, w = (t.clone().requires_grad_() for t in inputs)
        energy = conv(x, sh, w, plan=plan, graph=graph, backend=backend).pow(2).sum()
        (d_sh,) = torch.autograd.grad(energy, sh, create_graph=True)  # forces flow through the edge SH
        d_sh.pow(2).sum().backward()
        return x.grad, sh.grad, w.grad

    for got, expected in zip(grads("triton"), grads("reference")):
        torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)
    # Determinism (no atomics) is checked on the GPU (tests/kernels/test_gpu.py), where it can fail.


def test_empty_graph_and_compile(seeded, device):
    plan = make_plan(seeded, modes=["uvu"], lmax=1, max_mul=2, max_paths=2)
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    x = torch.randn(3, plan.dim_in1, device=device)
    out = conv(x, torch.zeros(0, plan.dim_in2, device=device), torch.zeros(0, plan.weight_numel, device=device),
               empty, empty, 3, plan, backend="triton")
    assert out.shape == (3, plan.dim_out) and torch.all(out == 0)
    graph = random_graph(seeded, 4, 7, device)
    sh, w = torch.randn(7, plan.dim_in2, device=device), torch.randn(7, plan.weight_numel, device=device)
    x = torch.randn(4, plan.dim_in1, device=device)
    compiled = torch.compile(lambda a, b, c: conv(a, b, c, plan=plan, graph=graph, backend="triton"),
                             fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, sh, w), conv(x, sh, w, plan=plan, graph=graph, backend="reference"))
