"""FLOP accounting: nffk ops report plan.flops_per_element x elements; the per-batch FLOP model is exact."""
import torch

from nffk.data import collate
from nffk.models import build_model
from nffk.nn import ChannelwiseTensorProduct, Linear
from nffk.ops import conv
from nffk.ops.flops import count_flops
from nffk.testing import TOY_ELEMENTS, toy_structures
from nffk.train.compute import FlopModel


def test_ops_count_their_plan_flops(seeded):
    tp = ChannelwiseTensorProduct("4x0e+3x1o", "0e+1o+2e", "0e+1o+2e")
    x = torch.randn(10, tp.irreps_in1.dim, generator=seeded, requires_grad=True)
    y = torch.randn(10, tp.irreps_in2.dim, generator=seeded)
    w = torch.randn(10, tp.weight_numel, generator=seeded, requires_grad=True)
    assert count_flops(tp, x, y, w) == 10 * tp.plan.flops_per_element
    # backward: one vjp per differentiable input, each counted like the forward
    assert count_flops(lambda: tp(x, y, w).sum().backward()) == 3 * 10 * tp.plan.flops_per_element

    senders = torch.tensor([0, 2, 1, 3, 0, 1, 2])
    receivers = torch.tensor([0, 0, 1, 1, 2, 3, 3])
    nodes = torch.randn(4, tp.irreps_in1.dim, generator=seeded)
    edge_sh = torch.randn(7, tp.irreps_in2.dim, generator=seeded)
    edge_w = torch.randn(7, tp.weight_numel, generator=seeded)
    assert count_flops(conv, nodes, edge_sh, edge_w, senders, receivers, 4, tp.plan) == 7 * tp.plan.flops_per_element

    linear = Linear("5x0e+2x1o", "3x0e+4x1o")
    assert count_flops(linear, torch.randn(6, linear.irreps_in.dim)) == 6 * linear.plan.flops_per_element
    dense = torch.randn(6, 5)
    assert count_flops(torch.mm, dense, torch.randn(5, 7)) == 2 * 6 * 5 * 7


def test_flop_model_predicts_every_batch_exactly():
    structures = toy_structures(12, seed=0)
    for arch, lmax, forces in (("MPNN", None, "direct"), ("Equivariant", 1, "conservative")):
        model = build_model(arch, 4, lmax, elements=TOY_ELEMENTS, cutoff=3.0, forces=forces)
        flop_model = FlopModel.measure(model, structures[:6], cutoff=3.0)
        assert flop_model.check_error < 1e-9
        for part, cutoff in ((structures[6:], 3.0), (structures[2:5], 2.0)):
            batch = collate(part, cutoff)
            counted = count_flops(model, batch)
            predicted = flop_model.forward_flops(batch.positions.shape[0], batch.senders.shape[0], len(part))
            assert abs(predicted - counted) <= 1e-9 * counted
        assert flop_model.per_atom > 0 and flop_model.per_edge > 0
