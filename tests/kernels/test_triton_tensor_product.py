"""Triton tensor-product kernels against the reference: every connection mode, every kernel,
masked tails, shared and per-element weights, derivatives through the autograd closure."""
import pytest
import torch

from nffk.ops.tensor_product import MODES, ReferenceKernels, TensorProductPlan, implemented_backends, tensor_product
from nffk.testing import random_tensor_product


def make_plan(gen, **kwargs):
    c = random_tensor_product(gen, **kwargs)
    return TensorProductPlan(c.irreps_in1, c.irreps_in2, c.irreps_out, c.instructions, **c.options)


def randn(gen, *shape, dtype=torch.float64, device="cpu"):
    return torch.randn(*shape, dtype=dtype, generator=gen).to(device)


def assert_close(got, expected, dtype=torch.float64):
    assert got.shape == expected.shape and got.dtype == expected.dtype
    tol = dict(atol=1e-10, rtol=1e-10) if dtype == torch.float64 else dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got, expected, **tol)


@pytest.mark.parametrize("mode", MODES)
def test_every_kernel_matches_the_reference(mode, seeded, device, poisoned):
    plan = make_plan(seeded, modes=[mode], lmax=2, max_mul=3, max_paths=3)
    batch = int(torch.randint(3, 9, (), generator=seeded))  # never a multiple of the row block
    x1, x2 = randn(seeded, batch, plan.dim_in1, device=device), randn(seeded, batch, plan.dim_in2, device=device)
    g = randn(seeded, batch, plan.dim_out, device=device)
    kernels = poisoned.tensor_product
    for shared in (False, True):
        w = randn(seeded, *(() if shared else (batch,)), plan.weight_numel, device=device)
        only = bool(torch.randint(0, 2, (), generator=seeded))
        for name, args in (("forward", (x1, x2, w, only)), ("vjp_x1", (g, x2, w, only)),
                           ("vjp_x2", (x1, g, w, only))):
            assert_close(getattr(kernels, name)(plan, *args), getattr(ReferenceKernels, name)(plan, *args))
        assert_close(kernels.vjp_w(plan, x1, x2, g, shared), ReferenceKernels.vjp_w(plan, x1, x2, g, shared))


def test_row_tiles_and_channel_tails_with_small_blocks(seeded, device, poisoned):
    # Several row tiles, the last one partial; multiplicities that are not powers of two.
    plan = TensorProductPlan("3x0e+3x1o", "1x0e+1x1o", "3x0e+3x1o+3x1e",
                             [(0, 0, 0, "uvu", True), (1, 1, 0, "uvu", True), (1, 1, 2, "uvu", True),
                              (0, 1, 1, "uvu", True), (1, 0, 1, "uvu", False)])
    x1, x2 = randn(seeded, 11, plan.dim_in1, device=device), randn(seeded, 11, plan.dim_in2, device=device)
    g, w = randn(seeded, 11, plan.dim_out, device=device), randn(seeded, 11, plan.weight_numel, device=device)
    kernels = poisoned.tensor_product
    assert_close(kernels.contract(plan, "out", x1, x2, w, False, 11, block_rows=4),
                 ReferenceKernels.forward(plan, x1, x2, w, False))
    assert_close(kernels.contract(plan, "x1", x2, g, w, False, 11, block_rows=4),
                 ReferenceKernels.vjp_x1(plan, g, x2, w, False))
    for shared in (False, True):
        assert_close(kernels.contract_weights(plan, x1, x2, g, shared, 11, block_rows=4),
                     ReferenceKernels.vjp_w(plan, x1, x2, g, shared))


def test_float32_and_half_inputs(seeded, device):
    plan = make_plan(seeded, modes=["uvu", "uvw"], lmax=2, max_mul=3, max_paths=2)
    x1, x2 = randn(seeded, 5, plan.dim_in1, device=device), randn(seeded, 5, plan.dim_in2, device=device)
    w = randn(seeded, 5, plan.weight_numel, device=device)
    expected = ReferenceKernels.forward(plan, x1, x2, w, False)
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 5e-2)):
        got = tensor_product(x1.to(dtype), x2.to(dtype), w.to(dtype), plan, backend="triton")
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), expected, atol=tol * expected.abs().max().item(), rtol=tol)


def test_unwritten_blocks_and_empty_batch(device, poisoned):
    # Output block 1 (2x1o) has no path: it must come out as zeros, not as the NaN poison.
    plan = TensorProductPlan("2x0e", "0e", "2x0e+2x1o", [(0, 0, 0, "uvu", True)])
    x1, x2, w = torch.ones(3, 2, device=device), torch.ones(3, 1, device=device), torch.ones(3, 2, device=device)
    out = tensor_product(x1, x2, w, plan, backend="triton")
    assert torch.all(out[:, 2:] == 0) and torch.all(torch.isfinite(out))
    empty = tensor_product(x1[:0], x2[:0], w[:0], plan, backend="triton")
    assert empty.shape == (0, plan.dim_out)


def test_double_backward_through_the_autograd_closure(seeded, device):
    """Force training: gradient w.r.t. x2 with create_graph, a loss on it, backward to x1, x2 and w."""
    plan = make_plan(seeded, modes=["uvu", "uvw", "uvv"], lmax=2, max_mul=2, max_paths=3)
    inputs = [randn(seeded, 4, d, device=device) for d in (plan.dim_in1, plan.dim_in2)]
    inputs.append(randn(seeded, 4, plan.weight_numel, device=device))

    def grads(backend):
        x1, x2, w = (t.clone().requires_grad_() for t in inputs)
        energy = tensor_product(x1, x2, w, plan, backend=backend).pow(2).sum()
        (force,) = torch.autograd.grad(energy, x2, create_graph=True)
        force.pow(2).sum().backward()
        return x1.grad, x2.grad, w.grad

    for got, expected in zip(grads("triton"), grads("reference")):
        assert_close(got, expected)


def test_registered_and_compiles(seeded, device):
    plan = make_plan(seeded, modes=["uvu"], lmax=1, max_mul=2, max_paths=2)
    assert "triton" in implemented_backends(plan)
    x1, x2 = randn(seeded, 3, plan.dim_in1, device=device), randn(seeded, 3, plan.dim_in2, device=device)
    w = randn(seeded, 3, plan.weight_numel, device=device)
    torch.library.opcheck(torch.ops.nffk.tp_forward.default, (x1, x2, w, plan.id, "triton", False),
                          test_utils=("test_schema", "test_faketensor"))
    compiled = torch.compile(lambda a, b, c: tensor_product(a, b, c, plan, backend="triton"), fullgraph=True,
                             backend="aot_eager")
    assert_close(compiled(x1, x2, w), ReferenceKernels.forward(plan, x1, x2, w, False))
