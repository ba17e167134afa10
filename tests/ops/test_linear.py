import e3nn.o3
import pytest
import torch

from nffk.ops.linear import LinearPlan, linear
from nffk.testing import random_irreps


def matching_pair(gen):
    """Random input irreps and an output with some irreps in common (and some not)."""
    irreps_in = random_irreps(gen, lmax=2, max_mul=5)
    irreps_out = random_irreps(gen, lmax=2, max_mul=5) + e3nn.o3.Irreps([(3, ir) for _, ir in irreps_in][:2])
    return irreps_in, e3nn.o3.Irreps(str(irreps_out))


@pytest.mark.parametrize("normalization", ["element", "path"])
def test_matches_e3nn(normalization, seeded):
    for _ in range(8):
        irreps_in, irreps_out = matching_pair(seeded)
        theirs = e3nn.o3.Linear(irreps_in, irreps_out, path_normalization=normalization)
        plan = LinearPlan(str(irreps_in), str(irreps_out), path_normalization=normalization)
        assert plan.weight_numel == theirs.weight_numel
        x = torch.randn(6, irreps_in.dim, generator=seeded)
        expected = theirs(x)
        got = linear(x, theirs.weight.detach(), plan, backend="reference")
        assert (got - expected).abs().max() <= 1e-6 * expected.abs().max().clamp_min(1e-30)


@pytest.mark.parametrize("shared", [True, False])
def test_gradcheck_and_gradgradcheck(shared, seeded):
    irreps_in, irreps_out = matching_pair(seeded)
    plan = LinearPlan(str(irreps_in), str(irreps_out))
    x = torch.randn(3, plan.dim_in, dtype=torch.float64, generator=seeded, requires_grad=True)
    w = torch.randn(*(() if shared else (3,)), plan.weight_numel, dtype=torch.float64, generator=seeded,
                    requires_grad=True)
    fn = lambda a, b: linear(a, b, plan, backend="reference")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w))
    assert torch.autograd.gradgradcheck(fn, (x, w))


def test_opcheck_and_compile(seeded):
    plan = LinearPlan("3x0e+2x1o", "2x0e+4x1o")
    x = torch.randn(4, plan.dim_in, generator=seeded, requires_grad=True)
    w = torch.randn(plan.weight_numel, generator=seeded, requires_grad=True)
    g = torch.randn(4, plan.dim_out, generator=seeded, requires_grad=True)
    torch.library.opcheck(torch.ops.nffk.linear_forward.default, (x, w, plan.id, "reference"))
    torch.library.opcheck(torch.ops.nffk.linear_vjp_x.default, (g, w, plan.id, "reference"))
    torch.library.opcheck(torch.ops.nffk.linear_vjp_w.default, (x, g, plan.id, "reference", True))
    compiled = torch.compile(lambda a, b: linear(a, b, plan), fullgraph=True)
    torch.testing.assert_close(compiled(x, w), linear(x, w, plan, backend="reference"))


def test_bad_input():
    with pytest.raises(ValueError, match="irreps_in"):
        LinearPlan("2x1p", "1x0e")
    with pytest.raises(ValueError, match="same irrep"):
        LinearPlan("2x1o", "1x1e", instructions=[(0, 0)])
    with pytest.raises(ValueError, match="not an index"):
        LinearPlan("2x1o", "1x1o", instructions=[(0, 1)])
    plan = LinearPlan("2x1o", "1x1o")
    with pytest.raises(ValueError, match=r"x must be a floating tensor of shape \[\.\.\., 6\]"):
        linear(torch.zeros(3, 5), torch.zeros(2), plan)
    with pytest.raises(ValueError, match="weight must have shape"):
        linear(torch.zeros(3, 6), torch.zeros(3), plan)


def test_force_pattern_skips_the_weight_gradient_nobody_reads(seeded, monkeypatch):
    # Forces (autograd.grad of the energy w.r.t. the features) need no gradient of the weights,
    # which require grad for the loss's backward: that first backward must not run vjp_w.
    from collections import Counter

    from nffk.ops.linear import KERNELS
    calls, reference = Counter(), KERNELS["reference"]
    for name in ("forward", "vjp_x", "vjp_w"):
        original = getattr(reference, name)
        monkeypatch.setattr(reference, name, staticmethod(
            lambda *args, _name=name, _original=original: (calls.update([_name]), _original(*args))[1]))
    irreps_in, irreps_out = matching_pair(seeded)
    plan = LinearPlan(str(irreps_in), str(irreps_out))
    x = torch.randn(4, plan.dim_in, dtype=torch.float64, generator=seeded, requires_grad=True)
    w = torch.randn(plan.weight_numel, dtype=torch.float64, generator=seeded, requires_grad=True)
    energy = linear(x.sin(), w, plan, backend="reference").pow(2).sum()
    (force,) = torch.autograd.grad(energy, x, create_graph=True)
    assert calls == {"forward": 1, "vjp_x": 1}
    force.pow(2).sum().backward()
    assert calls["vjp_w"] >= 1
    # the same gradients as when that first backward also produced the weight gradient
    x2, w2 = x.detach().requires_grad_(), w.detach().requires_grad_()
    energy = linear(x2.sin(), w2, plan, backend="reference").pow(2).sum()
    force2 = torch.autograd.grad(energy, [x2, w2], create_graph=True)[0]
    force2.pow(2).sum().backward()
    torch.testing.assert_close(w.grad, w2.grad)
    torch.testing.assert_close(x.grad, x2.grad)
