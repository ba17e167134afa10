"""The message-passing op against an explicit per-edge loop, its derivatives and its errors."""
import pytest
import torch

from nffk.ops.conv import ConvGraph, conv
from nffk.ops.tensor_product import TensorProductPlan, tensor_product
from nffk.testing import random_tensor_product


def random_graph(gen, num_nodes, num_edges):
    receivers = torch.sort(torch.randint(0, num_nodes, (num_edges,), generator=gen)).values
    senders = torch.randint(0, num_nodes, (num_edges,), generator=gen)
    return senders, receivers


def make_plan(gen, **kwargs):
    c = random_tensor_product(gen, **kwargs)
    return TensorProductPlan(c.irreps_in1, c.irreps_in2, c.irreps_out, c.instructions, **c.options)


def test_matches_an_explicit_loop_over_edges(seeded):
    for shared in (False, True):
        plan = make_plan(seeded)
        senders, receivers = random_graph(seeded, 7, 30)
        x = torch.randn(7, plan.dim_in1, dtype=torch.float64, generator=seeded)
        sh = torch.randn(30, plan.dim_in2, dtype=torch.float64, generator=seeded)
        w = torch.randn(*(() if shared else (30,)), plan.weight_numel, dtype=torch.float64, generator=seeded)
        expected = torch.zeros(7, plan.dim_out, dtype=torch.float64)
        for e in range(30):
            expected[receivers[e]] += tensor_product(x[senders[e]], sh[e], w if shared else w[e], plan,
                                                     backend="reference")
        got = conv(x, sh, w, senders, receivers, 7, plan, backend="reference")
        torch.testing.assert_close(got, expected)


def test_isolated_nodes_and_empty_graphs(seeded):
    plan = make_plan(seeded)
    x = torch.randn(4, plan.dim_in1, generator=seeded)
    empty = torch.zeros(0, dtype=torch.int64)
    out = conv(x, torch.zeros(0, plan.dim_in2), torch.zeros(0, plan.weight_numel), empty, empty, 4, plan)
    assert out.shape == (4, plan.dim_out) and torch.all(out == 0)


@pytest.mark.parametrize("shared", [False, True])
def test_gradcheck_and_gradgradcheck(shared, seeded):
    plan = make_plan(seeded, lmax=2, max_mul=2, max_paths=3)
    senders, receivers = random_graph(seeded, 4, 9)
    graph = ConvGraph.build(senders, receivers, 4)
    x = torch.randn(4, plan.dim_in1, dtype=torch.float64, generator=seeded, requires_grad=True)
    sh = torch.randn(9, plan.dim_in2, dtype=torch.float64, generator=seeded, requires_grad=True)
    w = torch.randn(*(() if shared else (9,)), plan.weight_numel, dtype=torch.float64, generator=seeded,
                    requires_grad=True)
    fn = lambda a, b, c: conv(a, b, c, plan=plan, graph=graph, backend="reference")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, sh, w))
    assert torch.autograd.gradgradcheck(fn, (x, sh, w))


def test_opcheck_and_compile(seeded):
    plan = make_plan(seeded, modes=["uvu"])
    senders, receivers = random_graph(seeded, 5, 12)
    graph = ConvGraph.build(senders, receivers, 5)
    x = torch.randn(5, plan.dim_in1, generator=seeded, requires_grad=True)
    sh = torch.randn(12, plan.dim_in2, generator=seeded, requires_grad=True)
    w = torch.randn(12, plan.weight_numel, generator=seeded, requires_grad=True)
    g = torch.randn(5, plan.dim_out, generator=seeded, requires_grad=True)
    ops = torch.ops.nffk
    torch.library.opcheck(ops.conv_forward.default, (x, sh, w, *graph, plan.id, "reference", False))
    torch.library.opcheck(ops.conv_vjp_x.default, (g, sh, w, *graph, plan.id, "reference", False))
    torch.library.opcheck(ops.conv_vjp_sh.default, (x, g, w, *graph, plan.id, "reference", True))
    torch.library.opcheck(ops.conv_vjp_w.default, (x, sh, g, *graph, plan.id, "reference", False))
    compiled = torch.compile(lambda a, b, c: conv(a, b, c, plan=plan, graph=graph), fullgraph=True)
    torch.testing.assert_close(compiled(x, sh, w), conv(x, sh, w, plan=plan, graph=graph, backend="reference"))


def test_bad_input(seeded):
    plan = TensorProductPlan("2x0e", "0e", "2x0e", [(0, 0, 0, "uvu", True)])
    x, sh, w = torch.zeros(3, 2), torch.zeros(2, 1), torch.zeros(2, 2)
    with pytest.raises(ValueError, match=r"edge indices must lie in \[0, num_nodes=3\)"):
        conv(x, sh, w, torch.tensor([0, 3]), torch.tensor([0, 1]), 3, plan)
    with pytest.raises(ValueError, match="sorted by receiver"):
        conv(x, sh, w, torch.tensor([0, 1]), torch.tensor([2, 1]), 3, plan)
    with pytest.raises(ValueError, match="node_features must have shape"):
        conv(torch.zeros(3, 5), sh, w, torch.tensor([0, 1]), torch.tensor([1, 2]), 3, plan)
    with pytest.raises(ValueError, match="edge_weights must have shape"):
        conv(x, sh, torch.zeros(3, 2), torch.tensor([0, 1]), torch.tensor([1, 2]), 3, plan)
    with pytest.raises(ValueError, match="int64"):
        conv(x, sh, w, torch.tensor([0.0, 1.0]), torch.tensor([1, 2]), 3, plan)
