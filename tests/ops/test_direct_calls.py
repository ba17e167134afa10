"""Forwards that autograd does not record call their kernel without the custom op (whose dispatch
costs ~30 us a call; `nffk.ops._autograd.direct_call_is_safe`): the same values as through the
op, while vmap, torch.compile, dispatch modes and recorded autograd still go through it."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from nffk.ops._autograd import direct_call_is_safe
from nffk.ops.conv import ConvGraph, conv
from nffk.ops.linear import LinearPlan, linear
from nffk.ops.tensor_product import TensorProductPlan, tensor_product


class Passthrough(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_direct_calls_only_outside_autograd_and_transforms():
    x = torch.randn(3, 4)
    leaf = x.clone().requires_grad_()
    assert direct_call_is_safe(x, x)
    assert not direct_call_is_safe(x, leaf)
    with torch.no_grad():
        assert direct_call_is_safe(x, leaf)
    seen = []
    torch.func.vmap(lambda v: seen.append(direct_call_is_safe(v)) or v)(x)
    assert seen == [False]
    with Passthrough():
        assert not direct_call_is_safe(x)
    compiled = torch.compile(lambda v: v + 1 if direct_call_is_safe(v) else v - 1, fullgraph=True)
    assert torch.equal(compiled(x), x - 1)


def _tensor_product(gen):
    plan = TensorProductPlan("4x0e+4x1o", "0e+1o", "4x0e+4x1o+4x1e",
                             [(0, 0, 0, "uvu", True), (0, 1, 1, "uvu", True), (1, 1, 0, "uvu", True),
                              (1, 1, 2, "uvu", True), (1, 0, 1, "uvu", True)])
    inputs = (torch.randn(6, plan.dim_in1, generator=gen), torch.randn(6, plan.dim_in2, generator=gen),
              torch.randn(6, plan.weight_numel, generator=gen))
    return (lambda a, b, c: tensor_product(a, b, c, plan)), inputs


def _linear(gen):
    plan = LinearPlan("3x0e+2x1o", "2x0e+4x1o")
    inputs = (torch.randn(6, plan.dim_in, generator=gen), torch.randn(plan.weight_numel, generator=gen))
    return (lambda a, b: linear(a, b, plan)), inputs


def _conv(gen):
    plan = TensorProductPlan("4x0e+4x1o", "0e+1o", "4x0e+4x1o", [(0, 0, 0, "uvu", True), (0, 1, 1, "uvu", True),
                                                                  (1, 1, 0, "uvu", True), (1, 0, 1, "uvu", True)])
    receivers = torch.tensor([0, 0, 1, 2, 2, 2, 4])
    senders = torch.tensor([1, 3, 0, 0, 1, 4, 2])
    graph = ConvGraph.build(senders, receivers, 5)
    inputs = (torch.randn(5, plan.dim_in1, generator=gen), torch.randn(7, plan.dim_in2, generator=gen),
              torch.randn(7, plan.weight_numel, generator=gen))
    return (lambda a, b, c: conv(a, b, c, plan=plan, graph=graph)), inputs


@pytest.mark.parametrize("make", [_tensor_product, _linear, _conv], ids=["tensor_product", "linear", "conv"])
def test_direct_forward_equals_the_custom_op(make, seeded):
    fn, inputs = make(seeded)
    direct = fn(*inputs)
    recorded = fn(*(t.clone().requires_grad_() for t in inputs))
    assert recorded.grad_fn is not None  # through the op, which autograd records
    assert torch.equal(direct, recorded.detach())
    with Passthrough():
        assert torch.equal(fn(*inputs), direct)
    with torch.no_grad():
        assert torch.equal(torch.compile(fn, fullgraph=True)(*inputs), direct)
