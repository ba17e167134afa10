"""The cpu backend of the equivariant Linear against the reference: kernels, derivatives, threads, misuse."""
import pytest
import torch

from nffk import _ext, backends
from nffk.o3 import Irreps
from nffk.ops.linear import KERNELS, LinearPlan, linear
from nffk.testing import assert_thread_count_independent, poisoned_outputs, random_irreps

pytestmark = pytest.mark.skipif(not _ext.loaded(), reason="the compiled extension is not built")


def random_plan(gen, max_mul=40):
    """Random irreps in and out with some irreps in common, repeated irreps and multiplicities above
    one SIMD vector (several channel chunks)."""
    irreps_in = random_irreps(gen, lmax=3, max_mul=max_mul)
    extra = [(int(torch.randint(1, max_mul + 1, (), generator=gen)), ir) for _, ir in irreps_in][:2]
    irreps_out = Irreps(str(random_irreps(gen, lmax=3, max_mul=max_mul) + Irreps(extra)))
    return LinearPlan(str(irreps_in), str(irreps_out))


def relative_error(got, expected):
    assert got.shape == expected.shape
    if expected.numel() == 0:
        return 0.0
    assert torch.isfinite(got).all(), "non-finite (unwritten?) output"
    return ((got.double() - expected).abs().max() / expected.abs().max().clamp_min(1e-300)).item()


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("shared", [True, False])
def test_every_kernel_matches_the_reference(dtype, tol, shared, seeded):
    reference, cpu = KERNELS["reference"], KERNELS["cpu"]
    for _ in range(15):
        plan = random_plan(seeded)
        batch = int(torch.randint(0, 40, (), generator=seeded))
        x = torch.randn(batch, plan.dim_in, generator=seeded, dtype=torch.float64).to(dtype).double()
        g = torch.randn(batch, plan.dim_out, generator=seeded, dtype=torch.float64).to(dtype).double()
        w = torch.randn(*(() if shared else (batch,)), plan.weight_numel, generator=seeded,
                        dtype=torch.float64).to(dtype).double()
        with poisoned_outputs():
            got = [cpu.forward(plan, x.to(dtype), w.to(dtype)), cpu.vjp_x(plan, g.to(dtype), w.to(dtype)),
                   cpu.vjp_w(plan, x.to(dtype), g.to(dtype), shared)]
        expected = [reference.forward(plan, x, w), reference.vjp_x(plan, g, w), reference.vjp_w(plan, x, g, shared)]
        for name, a, b in zip(("forward", "vjp_x", "vjp_w"), got, expected):
            assert a.dtype == dtype
            assert relative_error(a, b) <= tol, (name, batch, plan)


@pytest.mark.parametrize("shared", [True, False])
def test_gradcheck_gradgradcheck_and_thread_count(shared, seeded):
    plan = random_plan(seeded, max_mul=3)
    x = torch.randn(4, plan.dim_in, dtype=torch.float64, generator=seeded, requires_grad=True)
    w = torch.randn(*(() if shared else (4,)), plan.weight_numel, dtype=torch.float64, generator=seeded,
                    requires_grad=True)
    fn = lambda a, b: linear(a, b, plan, backend="cpu")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w))
    assert torch.autograd.gradgradcheck(fn, (x, w))
    big = random_plan(seeded)
    x = torch.randn(500, big.dim_in, generator=seeded)
    g = torch.randn(500, big.dim_out, generator=seeded)
    w = torch.randn(*(() if shared else (500,)), big.weight_numel, generator=seeded)
    cpu = KERNELS["cpu"]
    assert_thread_count_independent(
        lambda: [cpu.forward(big, x, w), cpu.vjp_x(big, g, w), cpu.vjp_w(big, x, g, shared)])


def test_auto_picks_cpu_and_misuse_is_reported():
    plan = LinearPlan("4x0e+3x1o", "2x0e+5x1o")
    x, w = torch.randn(6, plan.dim_in), torch.randn(plan.weight_numel)
    assert backends.resolve("linear", "auto", x.device, ("reference", "cpu")) == "cpu"
    torch.testing.assert_close(linear(x.t().contiguous().t(), w, plan, backend="cpu"),
                               linear(x, w, plan, backend="reference"))
    with pytest.raises(ValueError, match="weight must match"):
        linear(x, w.double(), plan, backend="cpu")
    with pytest.raises(backends.BackendUnavailable, match="float16"):
        linear(x.half(), w.half(), plan, backend="cpu")
    assert linear(x.half(), w.half(), plan).dtype == torch.float16  # auto: the reference
    tables = plan.kernel_tables("cpu", torch.float32)
    with pytest.raises(RuntimeError, match="reaches past"):
        torch.ops.nffk_C.linear_forward(x[:, :-1].contiguous(), w, tables["paths"], tables["coefficients"],
                                        torch.empty(6, plan.dim_out))
    with pytest.raises(RuntimeError, match="dtype"):
        torch.ops.nffk_C.linear_forward(x.double(), w, tables["paths"], tables["coefficients"],
                                        torch.empty(6, plan.dim_out))
