"""The cpu backend of spherical harmonics against the reference: values, first and second
derivatives for every degree up to 12 (and beyond), all normalisations, poles, zero and tiny vectors."""
import pytest
import torch

from nffk import _ext, backends, o3
from nffk.nn import SphericalHarmonics
from nffk.ops.spherical_harmonics import gradient_table, spherical_harmonics
from nffk.testing import assert_thread_count_independent, poisoned_outputs

pytestmark = pytest.mark.skipif(not _ext.loaded(), reason="the compiled extension is not built")

TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}


def vectors(n, dtype, gen, special=True):
    """Lengths over several decades, plus poles, axes, the zero vector and one inside eps."""
    x = torch.randn(n, 3, dtype=torch.float64, generator=gen) * torch.exp(2 * torch.randn(n, 1, dtype=torch.float64,
                                                                                            generator=gen))
    if special:
        x = torch.cat([x, torch.tensor([[0, 1, 0], [0, -1, 0], [0, 0, 2], [-3, 0, 0], [0, 0, 0], [1e-13, 0, 0]],
                                       dtype=torch.float64)])
    return x.to(dtype)


def relative(got, expected):
    """Per row, relative to the largest value of the row (unnormalised inputs scale as |x|^l)."""
    scale = expected.abs().amax(dim=-1, keepdim=True).clamp_min(1e-300)
    return ((got - expected).abs() / scale).max().item()


def summand_scales(ls, x, normalize, normalization, g, h):
    """Per row, the size of the terms the first derivatives add up: sum_t |g_t| |dY_t/dx| for the vjp
    and sum_a |dY/dx_a| |h_a| for its derivative with respect to g (their condition numbers are these
    over the results: a float32 sum of terms of both signs loses digits to cancellation)."""
    def y(v):
        return o3.spherical_harmonics(ls, v, normalize, normalization)

    jacobian = torch.func.vmap(torch.func.jacrev(y))(x.double()).abs()  # [N, T, 3]
    vjp = (g.double().abs()[:, :, None] * jacobian).sum(1).amax(-1, keepdim=True)
    jvp = (jacobian * h.double().abs()[:, None, :]).sum(2).amax(-1, keepdim=True)
    return vjp, jvp


def values_and_derivatives(ls, x, normalize, normalization, backend, g, h):
    """Y, the vjp (forces) and the vjp's derivatives with respect to x and g (force training)."""
    x = x.clone().requires_grad_()
    g = g.clone().requires_grad_()
    with poisoned_outputs():
        if backend == "reference":
            y = o3.spherical_harmonics(ls, x, normalize, normalization)
        else:
            y = spherical_harmonics(ls, x, normalize, normalization, backend=backend)
        if not y.requires_grad:  # the reference of l = 0 only: constant
            return y, torch.zeros_like(x), torch.zeros_like(x), torch.zeros_like(g)
        (grad_x,) = torch.autograd.grad(y, x, g, create_graph=True)
        second_x, second_g = torch.autograd.grad(grad_x, (x, g), h, allow_unused=True)
    # Unused (None): the vjp does not depend on x (degree 1 without normalisation)
    second_x = torch.zeros_like(x) if second_x is None else second_x
    return y.detach(), grad_x.detach(), second_x, second_g


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("normalization", ["integral", "component", "norm"])
def test_every_degree_up_to_12_values_and_two_derivatives(dtype, normalization, seeded):
    vectors_in = x = vectors(40, dtype, seeded)
    tol = TOLERANCE[dtype]
    # Without normalisation Y_l grows as |x|^l: lengths up to 3 keep float32 far from overflow at l = 12.
    short = x * (3 / x.norm(dim=-1, keepdim=True).clamp_min(3))
    for lmax in range(1, 13):
        for normalize in (True, False):
            x = vectors_in if normalize else short
            ls = list(range(lmax + 1))
            g = torch.randn(x.shape[0], (lmax + 1) ** 2, dtype=dtype, generator=seeded)
            h = torch.randn(x.shape[0], 3, dtype=dtype, generator=seeded)
            ours = values_and_derivatives(ls, x, normalize, normalization, "cpu", g, h)
            # The reference in float64 on the same inputs: the error is the kernel's alone.
            ref = values_and_derivatives(ls, x.double(), normalize, normalization, "reference", g.double(), h.double())
            # At exactly zero the reference's second derivative is NaN (torch's norm double backward);
            # the kernel gives the finite value of the eps ball (the normalisation is x / eps there).
            finite = torch.isfinite(ref[2]).all(dim=-1)
            assert normalize or finite.all()
            assert torch.isfinite(ours[2]).all()
            for name, a, b, keep in zip(("values", "vjp", "d vjp/dx", "d vjp/dg"), ours, ref,
                                        (None, None, finite, None)):
                if keep is not None:
                    a, b = a[keep], b[keep]
                assert a.dtype == dtype
                # The second derivative with respect to x grows as 1/|x|^2 near the origin: compare
                # it relative to its largest entry.
                if name in ("vjp", "d vjp/dg"):
                    scale = summand_scales(ls, x, normalize, normalization, g, h)[name != "vjp"]
                    error = ((a.double() - b).abs() / scale.clamp_min(1e-300)).max().item()
                elif name == "d vjp/dx":
                    error = ((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()
                else:
                    error = relative(a.double(), b)
                assert error <= tol * (10 if name == "d vjp/dx" else 1), (lmax, normalize, name, error)


def test_degrees_beyond_e3nn_and_irregular_lists(seeded):
    x = vectors(30, torch.float64, seeded)
    for ls in ([16], [3, 1, 3], [0, 0], [2, 14, 5], "1x1o+2x2e", list(range(18))):
        degrees = o3.Irreps(ls) if isinstance(ls, str) else ls
        width = sum(2 * ir.l + 1 for mul, ir in degrees for _ in range(mul)) if isinstance(ls, str) else \
            sum(2 * l + 1 for l in ls)
        g = torch.randn(x.shape[0], width, dtype=torch.float64, generator=seeded)
        h = torch.randn(x.shape[0], 3, dtype=torch.float64, generator=seeded)
        for normalize in (True, False):
            x_in = x if normalize else x / x.norm(dim=-1, keepdim=True).clamp_min(1e-3)  # keep |x|^l tame
            ours = values_and_derivatives(ls, x_in, normalize, "component", "cpu", g, h)
            ref = values_and_derivatives(ls, x_in, normalize, "component", "reference", g, h)
            assert relative(ours[0], ref[0]) <= 1e-11, ls
            if ref[1].abs().max() > 0:  # l = 0 only: no dependence on x
                for a, b in zip(ours[1:], ref[1:]):
                    keep = torch.isfinite(b).all(dim=-1) if b.shape[-1] == 3 else slice(None)
                    assert ((a[keep] - b[keep]).abs().max() / b[keep].abs().max()).item() <= 1e-10, ls


def test_gradient_table_is_the_derivative_of_the_reference(seeded):
    lmax = 8
    source, coefficient = gradient_table(lmax)
    x = torch.randn(20, 3, dtype=torch.float64, generator=seeded, requires_grad=True)
    y = o3.spherical_harmonics(list(range(lmax + 1)), x, False, "component")
    for t in range(1, (lmax + 1) ** 2):
        (expected,) = torch.autograd.grad(y[:, t].sum(), x, retain_graph=True)
        rebuilt = torch.zeros_like(expected)
        for axis in range(3):
            for term in range(2):
                if source[t, axis, term] >= 0:
                    rebuilt[:, axis] += coefficient[t, axis, term] * y[:, source[t, axis, term]].detach()
        torch.testing.assert_close(rebuilt, expected, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("normalize", [True, False])
def test_gradcheck_gradgradcheck_and_third_derivatives(normalize, seeded):
    x = vectors(5, torch.float64, seeded, special=False).requires_grad_()
    fn = lambda v: spherical_harmonics([0, 1, 2, 3], v, normalize, "norm", backend="cpu")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))
    # Third derivatives differentiate the reference's second derivatives.
    g = torch.randn(5, 16, dtype=torch.float64, generator=seeded)
    forces = lambda v: torch.autograd.grad(fn(v), v, g, create_graph=True)[0]  # noqa: E731
    assert torch.autograd.gradgradcheck(forces, (x,))


def test_batch_shapes_empty_input_module_and_thread_count(seeded):
    x = torch.randn(4, 5, 3, generator=seeded)
    ours = spherical_harmonics("0e+1o+2e", x, True, backend="cpu")
    assert ours.shape == (4, 5, 9)
    torch.testing.assert_close(ours, o3.spherical_harmonics("0e+1o+2e", x, True), atol=1e-6, rtol=1e-5)
    assert spherical_harmonics(3, torch.zeros(0, 3), True, backend="cpu").shape == (0, 7)
    module = SphericalHarmonics(4, normalize=True, backend="cpu")
    torch.testing.assert_close(module(x), o3.spherical_harmonics(list(range(5)), x, True), atol=1e-6, rtol=1e-5)
    # Points are independent: bitwise the same for any thread count.
    many = torch.randn(1000, 3, generator=seeded, requires_grad=True)

    def values_and_derivatives():
        y = spherical_harmonics(6, many, True, backend="cpu")
        (grad,) = torch.autograd.grad(y.pow(2).sum(), many, create_graph=True)
        (second,) = torch.autograd.grad(grad.pow(2).sum(), many)
        return y, grad, second
    assert_thread_count_independent(values_and_derivatives)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_outputs_take_the_streaming_path(dtype, seeded):
    # Outputs of 16 MiB and more are written with non-temporal stores: cover that path, a partial
    # last block, an irregular degree list (gathered columns) and every normalisation.
    n = (16 << 20) // (81 * dtype.itemsize) + 13
    x = vectors(n, dtype, seeded)
    with poisoned_outputs():
        for ls, normalization in ((list(range(9)), "component"), (list(range(9)), "norm"),
                                  ([8, 0, 3, 5, 7, 2, 1, 4, 6], "integral")):
            ours = spherical_harmonics(ls, x, True, normalization, backend="cpu")
            expected = o3.spherical_harmonics(ls, x.double(), True, normalization)
            assert relative(ours.double(), expected) < 10 * TOLERANCE[dtype], (ls, normalization)


@pytest.mark.parametrize("lmax", [0, 1, 2, 3])
def test_float32_register_kernel_of_low_degrees(lmax, seeded):
    # Float32 values of degrees 0..3 have their own kernel (one register tile per block, rsqrt and
    # a Newton step for 1/|x|): every normalisation, with and without normalising, partial blocks,
    # no autograd (the direct call), and outputs large enough for the non-temporal stores.
    ls = list(range(lmax + 1))
    for n in (1, 15, 16, 47):
        x = vectors(n, torch.float32, seeded)
        for normalize in (True, False):
            x_in = x if normalize else x / x.norm(dim=-1, keepdim=True).clamp_min(1)
            for normalization in ("integral", "component", "norm"):
                with poisoned_outputs():
                    ours = spherical_harmonics(ls, x_in, normalize, normalization, backend="cpu")
                expected = o3.spherical_harmonics(ls, x_in.double(), normalize, normalization)
                assert relative(ours.double(), expected) <= TOLERANCE[torch.float32], (n, normalize, normalization)
    many = torch.randn(3001, 3, generator=seeded)
    assert_thread_count_independent(lambda: spherical_harmonics(ls, many, True, "component", backend="cpu"))
    if lmax < 2:
        return  # (16 MiB is millions of vectors at these degrees)
    large = vectors((16 << 20) // (4 * (lmax + 1) ** 2) + 13, torch.float32, seeded)
    with poisoned_outputs():
        ours = spherical_harmonics(ls, large, True, "component", backend="cpu")
    expected = o3.spherical_harmonics(ls, large.double(), True, "component")
    assert relative(ours.double(), expected) <= TOLERANCE[torch.float32]


def test_no_grad_direct_call_matches_the_custom_op_and_transforms_still_work(seeded):
    # Without autograd the forward calls the kernel directly; under vmap, torch.compile or with
    # autograd recording it goes through the custom op. All give the same values.
    x = torch.randn(37, 3, generator=seeded)
    ls = [0, 1, 2, 3]
    direct = spherical_harmonics(ls, x, True, "component", backend="cpu")
    through_op = spherical_harmonics(ls, x.clone().requires_grad_(), True, "component", backend="cpu").detach()
    assert torch.equal(direct, through_op)
    batched = torch.func.vmap(lambda v: spherical_harmonics(ls, v, True, "component", backend="cpu"))(x.view(1, 37, 3))
    assert torch.equal(batched[0], direct)
    compiled = torch.compile(lambda v: spherical_harmonics(ls, v, True, "component", backend="cpu"), fullgraph=True)
    with torch.no_grad():
        assert torch.equal(compiled(x), direct)


def test_misuse():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"shape \[\.\.\., 3\]"):
        spherical_harmonics(2, torch.randn(4, 2), True, backend="cpu")
    with pytest.raises(ValueError, match="floating point"):
        spherical_harmonics(2, torch.ones(4, 3, dtype=torch.int64), True, backend="cpu")
    with pytest.raises(ValueError, match="normalization"):
        spherical_harmonics(2, x, True, "unit", backend="cpu")
    with pytest.raises(backends.BackendUnavailable, match="float16"):
        spherical_harmonics(2, x.half(), True, backend="cpu")
    assert spherical_harmonics(2, x.half(), True).dtype == torch.float16  # auto: the reference
    assert spherical_harmonics(2, x.t().contiguous().t(), True, backend="cpu").shape == (4, 5)  # non-contiguous
    with pytest.raises(RuntimeError, match="must be"):
        torch.ops.nffk.sh_vjp(x, torch.randn(4, 4), [2], True, 0)  # gradient of the wrong width
