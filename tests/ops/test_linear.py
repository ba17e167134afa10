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
