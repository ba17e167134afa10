"""The cpu backend of the tensor product against the reference: every kernel, every derivative order,
both dtypes, shared and per-element weights, poisoned outputs, thread counts and misuse."""
import pytest
import torch

from nffk import _ext, backends
from nffk.nn import FullyConnectedTensorProduct
from nffk.ops.tensor_product import KERNELS, CpuKernels, TensorProductPlan, implemented_backends, tensor_product
from nffk.testing import DIRECT_PLANS, assert_thread_count_independent, poisoned_outputs, random_tensor_product

pytestmark = pytest.mark.skipif(not _ext.loaded(), reason="the compiled extension is not built")

TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}
BATCHES = (0, 1, 3, 16, 17, 40)


def make_plan(config):
    return TensorProductPlan(config.irreps_in1, config.irreps_in2, config.irreps_out, config.instructions,
                             **config.options)


def relative_error(got, expected):
    assert got.shape == expected.shape
    if expected.numel() == 0:
        return 0.0
    assert torch.isfinite(got).all(), "non-finite (unwritten?) output"
    return ((got.double() - expected).abs().max() / expected.abs().max().clamp_min(1e-300)).item()


def random_configs(gen, count, **kwargs):
    """Random uvu/uvw plans; every third one with large multiplicities (several SIMD chunks and tiles)."""
    for k in range(count):
        big = k % 3 == 0
        yield random_tensor_product(gen, modes=("uvu", "uvw"), lmax=3, max_mul=33 if big else 5,
                                    max_paths=3 if big else 6, **kwargs)


def compare_every_kernel(plan, dtype, shared, batch, gen, label):
    """The four cpu kernels (both `weighted_only` settings) against the reference on poisoned outputs."""
    reference, cpu = KERNELS["reference"], KERNELS["cpu"]
    x1, x2, g = (torch.randn(batch, d, dtype=torch.float64, generator=gen)
                 for d in (plan.dim_in1, plan.dim_in2, plan.dim_out))
    w = torch.randn(*(() if shared else (batch,)), plan.weight_numel, dtype=torch.float64, generator=gen)
    # The reference runs in float64 on the same (rounded) inputs: the error is the kernel's alone.
    x1, x2, g, w = (t.to(dtype).double() for t in (x1, x2, g, w))
    low = lambda t: t.to(dtype)  # noqa: E731
    for only in (False, True):
        with poisoned_outputs():
            got = [cpu.forward(plan, low(x1), low(x2), low(w), only),
                   cpu.vjp_x1(plan, low(g), low(x2), low(w), only),
                   cpu.vjp_x2(plan, low(x1), low(g), low(w), only),
                   cpu.vjp_w(plan, low(x1), low(x2), low(g), shared)]
        expected = [reference.forward(plan, x1, x2, w, only), reference.vjp_x1(plan, g, x2, w, only),
                    reference.vjp_x2(plan, x1, g, w, only), reference.vjp_w(plan, x1, x2, g, shared)]
        for name, a, b in zip(("forward", "vjp_x1", "vjp_x2", "vjp_w"), got, expected):
            assert a.dtype == dtype
            assert relative_error(a, b) <= TOLERANCE[dtype], (name, only, batch, label)
        for need in ((True, True, True), (True, True, False), (True, False, True), (False, True, True)):
            with poisoned_outputs():
                fused = cpu.vjps(plan, low(x1), low(x2), low(w), low(g), need, only)
            for name, a, b, wanted in zip(("vjp_x1", "vjp_x2", "vjp_w"), fused, expected[1:], need):
                if not wanted:
                    assert a is None, (name, need)
                    continue
                assert a.dtype == dtype
                assert relative_error(a, b) <= TOLERANCE[dtype], ("vjps", name, need, only, batch, label)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shared", [False, True])
def test_every_kernel_matches_the_reference(dtype, shared, seeded):
    for config in random_configs(seeded, 12):
        plan = make_plan(config)
        batch = BATCHES[int(torch.randint(len(BATCHES) - (2 if plan.dim_in1 > 100 else 0), (), generator=seeded))]
        compare_every_kernel(plan, dtype, shared, batch, seeded, config)



@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shared", [False, True])
def test_direct_kernels_match_the_reference(dtype, shared, seeded):
    for irreps1, irreps2, irreps_out, instructions in DIRECT_PLANS:
        plan = TensorProductPlan(irreps1, irreps2, irreps_out, instructions)
        for batch in (1, 17, 40):
            compare_every_kernel(plan, dtype, shared, batch, seeded, (irreps1, irreps2, irreps_out))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shared", [False, True])
def test_uvw_only_plans_match_the_reference(dtype, shared, seeded):
    # Plans whose paths are all uvw run each tile element by element, paths in the order of their
    # weights (Program::by_element, tp_tiles.h): several x2 channels, outputs summing paths,
    # unused outputs, tiles cut short.
    for k in range(8):
        config = random_tensor_product(seeded, modes=("uvw",), lmax=3, max_mul=33 if k % 2 else 6, max_paths=6)
        plan = make_plan(config)
        for batch in (1, 17, 40):
            compare_every_kernel(plan, dtype, shared, batch, seeded, config)
    # Every allowed path (FullyConnectedTensorProduct): scalar paths of one x2 channel run
    # both gradients in one pass over W (uvw_backward_d1) for up to 64 output channels, in groups of
    # 16 input channels (17 and 48: a group cut short, three whole ones); 70 output channels do not.
    for irreps1, irreps2, irreps_out in (("48x0e+48x0o+10x1o+10x1e", "0e+1o+2e", "48x0e+48x0o+10x1o+10x1e"),
                                         ("17x0e+3x1o", "0e+1o", "70x0e+5x1o+64x0o"),
                                         ("33x0e+2x0e", "1x0e+2x0e", "20x0e")):
        plan = FullyConnectedTensorProduct(irreps1, irreps2, irreps_out).plan
        for batch in (1, 17, 40):
            compare_every_kernel(plan, dtype, shared, batch, seeded, irreps_out)


STREAMED_BYTES = 1 << 20  # outputs from this size on are streamed (kStreamTensorProductBytes, tp_tiles.h)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_streamed_weight_gradients_match_the_reference(dtype, seeded):
    # Per-element weight gradients of 1 MiB and more are staged per path and written by streaming
    # stores (csrc/cpu/streaming.h): uvw rows of 11 and 48 channels (masked lanes, rows at every
    # alignment), a direct uvu block, a uvu path with two x2 channels, an unweighted path.
    instructions = [(0, 0, 0, "uvw", True), (0, 2, 1, "uvw", True), (1, 0, 1, "uvw", True), (1, 2, 0, "uvw", True),
                    (2, 1, 2, "uvu", True), (2, 2, 3, "uvu", True), (2, 0, 2, "uvu", True), (1, 1, 1, "uvu", False)]
    plan = TensorProductPlan("48x0e+11x1o+16x1e", "2x0e+1e+1o", "48x0e+11x1o+16x1e+16x1o", instructions)
    size = torch.empty((), dtype=dtype).element_size()
    batch = STREAMED_BYTES // (plan.weight_numel * size) + 17
    assert batch * plan.weight_numel * size >= STREAMED_BYTES
    compare_every_kernel(plan, dtype, False, batch, seeded, "streamed")
    # The uvw paths alone: a program run element by element, its weight gradients streamed too.
    plan = TensorProductPlan("48x0e+11x1o+16x1e", "2x0e+1e+1o", "48x0e+11x1o", instructions[:4])
    batch = STREAMED_BYTES // (plan.weight_numel * size) + 17
    compare_every_kernel(plan, dtype, False, batch, seeded, "streamed uvw")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_streamed_forward_and_x1_gradient_match_the_reference(dtype, seeded):
    # Outputs of 1 MiB and more. Forward: direct blocks of up to 7 components by streaming stores
    # of whole vectors, of 9 to 13 components staged in L1 and streamed, general blocks as usual.
    # vjp_x1: each row assembled in L1, then streamed (rows of any alignment, gaps zeroed).
    size = torch.empty((), dtype=dtype).element_size()
    cpu, reference = KERNELS["cpu"], KERNELS["reference"]
    for irreps1, irreps2, irreps_out, instructions in (DIRECT_PLANS[0], DIRECT_PLANS[1], DIRECT_PLANS[2]):
        plan = TensorProductPlan(irreps1, irreps2, irreps_out, instructions)
        for kernel, dim in (("forward", plan.dim_out), ("vjp_x1", plan.dim_in1)):
            batch = STREAMED_BYTES // (dim * size) + 17
            a, x2, w = (torch.randn(batch, d, dtype=dtype, generator=seeded)
                        for d in (plan.dim_in1 if kernel == "forward" else plan.dim_out, plan.dim_in2,
                                  plan.weight_numel))
            with poisoned_outputs():
                got = getattr(cpu, kernel)(plan, a, x2, w, False)
            expected = getattr(reference, kernel)(plan, a.double(), x2.double(), w.double(), False)
            assert relative_error(got, expected) <= TOLERANCE[dtype], (kernel, irreps_out)
            if kernel == "vjp_x1":  # the one pass streams the same x1 gradient (vjp_x2's output is small)
                x1 = torch.randn(batch, plan.dim_in1, dtype=dtype, generator=seeded)
                with poisoned_outputs():
                    got = cpu.vjps(plan, x1, x2, w, a, (True, True, False), False)
                expected = (reference.vjp_x1(plan, a.double(), x2.double(), w.double(), False),
                            reference.vjp_x2(plan, x1.double(), a.double(), w.double(), False))
                for name, one, ref in zip(("x1", "x2"), got, expected):
                    assert relative_error(one, ref) <= TOLERANCE[dtype], ("vjps", name, irreps_out)


def test_backward_and_force_pattern_through_the_public_op(seeded):
    """Autograd through tensor_product(..., backend="cpu"): gradients of every input, and the
    force-training pattern (gradient w.r.t. x2 with create_graph, a loss on it, backward)."""
    for config in random_configs(seeded, 6):
        check_force_pattern(make_plan(config), seeded, config)


def test_direct_kernels_through_the_force_pattern(seeded):
    for irreps1, irreps2, irreps_out, instructions in DIRECT_PLANS:
        check_force_pattern(TensorProductPlan(irreps1, irreps2, irreps_out, instructions), seeded, irreps_out)


def test_a_backward_without_a_graph_computes_its_gradients_in_one_pass(seeded, monkeypatch):
    """Two or more gradients of a forward, not recorded: one tp_vjp call (CpuKernels.vjps) with the
    reference's values, for per-element and shared weights; one gradient or a recorded backward
    (create_graph) take the separate ops, which autograd can differentiate again."""
    calls = []
    one_pass = CpuKernels.vjps
    monkeypatch.setattr(CpuKernels, "vjps", staticmethod(lambda *args: calls.append(args[5]) or one_pass(*args)))
    plan = TensorProductPlan(*DIRECT_PLANS[0][:3], DIRECT_PLANS[0][3])
    x1, x2, w, g = (torch.randn(19, d, dtype=torch.float64, generator=seeded)
                    for d in (plan.dim_in1, plan.dim_in2, plan.weight_numel, plan.dim_out))

    def gradients(backend, wanted, weights=w, create_graph=False):
        inputs = [t.clone().requires_grad_(need) for t, need in zip((x1, x2, weights), wanted)]
        out = tensor_product(*inputs, plan, backend=backend)
        asked = [t for t in inputs if t.requires_grad]
        return torch.autograd.grad(out, asked, g, create_graph=create_graph)

    for weights in (w, w[0]):
        for wanted in ((True, True, True), (False, True, True), (True, False, True), (True, True, False)):
            with poisoned_outputs():
                got = gradients("cpu", wanted, weights)
            assert calls == [wanted]
            calls.clear()
            for a, b in zip(got, gradients("reference", wanted, weights)):
                assert relative_error(a, b) <= 1e-12, (wanted, weights.shape)
    gradients("cpu", (True, False, False))
    recorded = gradients("cpu", (True, True, True), create_graph=True)
    assert calls == []
    assert all(t.grad_fn is not None for t in recorded)
    # The force pattern's second backward: the derivative of vjp_x2 (the force) wants vjp_x1 and
    # vjp_w together; then the forward's own backward wants all three (values: check_force_pattern).
    x1r, x2r, wr = (t.clone().requires_grad_() for t in (x1, x2, w))
    energy = tensor_product(x1r, x2r, wr, plan, backend="cpu").pow(2).sum()
    (force,) = torch.autograd.grad(energy, x2r, create_graph=True)
    force.pow(2).sum().backward()
    assert sorted(calls) == [(True, False, True), (True, True, True)]


def check_force_pattern(plan, seeded, config):
    """Energy, force, and every input gradient of the force-training pattern, cpu against reference."""
    shared = bool(torch.randint(2, (), generator=seeded))
    inputs = [torch.randn(7, d, dtype=torch.float64, generator=seeded) for d in (plan.dim_in1, plan.dim_in2)]
    inputs.append(torch.randn(*(() if shared else (7,)), plan.weight_numel, dtype=torch.float64, generator=seeded))
    results = {}
    for backend in ("reference", "cpu"):
        x1, x2, w = (t.clone().requires_grad_() for t in inputs)
        with poisoned_outputs():
            energy = tensor_product(x1, x2, w, plan, backend=backend).pow(2).sum()
            (force,) = torch.autograd.grad(energy, x2, create_graph=True)
            loss = force.pow(2).sum() + energy
            loss.backward()
        results[backend] = [energy.detach(), force.detach(), x1.grad, x2.grad, w.grad]
    for a, b in zip(results["cpu"], results["reference"]):
        assert relative_error(a, b) <= 1e-11, config


@pytest.mark.parametrize("shared", [False, True])
def test_gradcheck_and_gradgradcheck(shared, seeded):
    for config in random_configs(seeded, 3):
        config = random_tensor_product(seeded, modes=("uvu", "uvw"), lmax=2, max_mul=2, max_paths=3)
        plan = make_plan(config)
        inputs = [torch.randn(3, d, dtype=torch.float64, generator=seeded, requires_grad=True)
                  for d in (plan.dim_in1, plan.dim_in2)]
        inputs.append(torch.randn(*(() if shared else (3,)), plan.weight_numel, dtype=torch.float64,
                                  generator=seeded, requires_grad=True))
        fn = lambda a, b, c: tensor_product(a, b, c, plan, backend="cpu")  # noqa: E731
        assert torch.autograd.gradcheck(fn, inputs), config
        assert torch.autograd.gradgradcheck(fn, inputs), config


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_results_do_not_depend_on_the_thread_count(dtype, seeded):
    """Bitwise: elements are independent and shared-weight gradients are summed over fixed element
    blocks in a fixed order."""
    config = random_tensor_product(seeded, modes=("uvu", "uvw"), lmax=3, max_mul=24, max_paths=5)
    # A random plan (general tiles) and one whose blocks are all direct and weighted (the one pass
    # then contracts each block once for vjp_x1 and vjp_w: direct::vjp_x1_w).
    for plan in (make_plan(config), TensorProductPlan(*DIRECT_PLANS[2])):
        batch = 300
        x1, x2, g = (torch.randn(batch, d, dtype=dtype, generator=seeded) for d in (plan.dim_in1, plan.dim_in2,
                                                                                    plan.dim_out))
        w = torch.randn(batch, plan.weight_numel, dtype=dtype, generator=seeded)
        cpu = KERNELS["cpu"]
        assert_thread_count_independent(lambda: [
            cpu.forward(plan, x1, x2, w, False), cpu.vjp_x1(plan, g, x2, w, False),
            cpu.vjp_x2(plan, x1, g, w[0], False), cpu.vjp_w(plan, x1, x2, g, False), cpu.vjp_w(plan, x1, x2, g, True),
            cpu.vjps(plan, x1, x2, w, g, (True, True, True), False),
            cpu.vjps(plan, x1, x2, w[0], g, (True, True, True), True)])
        # The one pass runs the same tiles (and, for shared weights, the same blocks) as the three
        # kernels, except that direct blocks share vjp_x1's and vjp_w's contraction: the same bits
        # for vjp_x2, the same values for the others.
        for weights in (w, w[0]):
            separate = (cpu.vjp_x1(plan, g, x2, weights, False), cpu.vjp_x2(plan, x1, g, weights, False),
                        cpu.vjp_w(plan, x1, x2, g, weights.dim() == 1))
            one_pass = cpu.vjps(plan, x1, x2, weights, g, (True, True, True), False)
            assert torch.equal(one_pass[1], separate[1])
            for a, b in zip(one_pass, separate):
                assert relative_error(a, b) <= TOLERANCE[dtype]


def test_poisoning_hook_poisons():
    """The test hook itself: inside poisoned_outputs() kernel buffers start as NaN."""
    from nffk.ops import _outputs

    like = torch.zeros(1)
    with poisoned_outputs():
        assert torch.isnan(_outputs.new((3, 2), like)).all()
    assert _outputs.new((0,), like).numel() == 0


def test_auto_picks_cpu_for_cpu_tensors_and_supported_plans():
    plan = TensorProductPlan("2x0e+2x1o", "0e+1o", "2x0e+2x1o", [(0, 0, 0, "uvu", True), (1, 0, 1, "uvw", True)])
    assert backends.resolve("tensor_product", "auto", torch.device("cpu"),
                            implemented_backends(plan, torch.float32)) == "cpu"
    # Modes the cpu backend does not implement and dtypes it does not compute in go to the reference.
    uvv = TensorProductPlan("2x0e", "3x0e", "3x0e", [(0, 0, 0, "uvv", True)])
    assert "cpu" not in implemented_backends(uvv)
    assert "cpu" not in implemented_backends(plan, torch.float16)
    out = tensor_product(torch.randn(2, 2, dtype=torch.float16), torch.randn(2, 3, dtype=torch.float16),
                         torch.randn(uvv.weight_numel, dtype=torch.float16), uvv)
    assert out.dtype == torch.float16


class TestMisuse:
    plan = TensorProductPlan("3x0e+2x1o", "0e+1o", "3x0e+2x1o+2x1e",
                             [(0, 0, 0, "uvu", True), (1, 0, 1, "uvu", True), (1, 1, 2, "uvw", True)])

    def inputs(self, batch=4, dtype=torch.float32):
        return (torch.randn(batch, self.plan.dim_in1, dtype=dtype), torch.randn(batch, self.plan.dim_in2, dtype=dtype),
                torch.randn(batch, self.plan.weight_numel, dtype=dtype))

    def test_non_contiguous_inputs_are_handled(self):
        _, _, w = self.inputs(6)
        x1 = torch.randn(6, 2 * self.plan.dim_in1)[:, ::2]  # strided views
        x2 = torch.randn(self.plan.dim_in2, 6).t()
        assert not x1.is_contiguous() and not x2.is_contiguous()
        expected = tensor_product(x1.contiguous(), x2.contiguous(), w, self.plan, backend="reference")
        assert relative_error(tensor_product(x1, x2, w, self.plan, backend="cpu"), expected.double()) <= 1e-5
        # Gradients reaching the kernels non-contiguous (the expanded ones of .sum()) are handled too.
        grads = []
        for backend in ("cpu", "reference"):
            leaf = x1.detach().clone().requires_grad_()
            tensor_product(leaf, x2, w, self.plan, backend=backend).sum().backward()
            grads.append(leaf.grad)
        assert relative_error(grads[0], grads[1].double()) <= 1e-5

    def test_wrong_dtypes_and_shapes_are_value_errors(self):
        x1, x2, w = self.inputs()
        with pytest.raises(ValueError, match="one dtype"):
            tensor_product(x1, x2.double(), w, self.plan, backend="cpu")
        with pytest.raises(ValueError, match="weight must match"):
            tensor_product(x1, x2, w.double(), self.plan, backend="cpu")
        with pytest.raises(ValueError, match="x1 must have shape"):
            tensor_product(x1[:, 1:], x2, w, self.plan, backend="cpu")
        with pytest.raises(ValueError, match="weight must have shape"):
            tensor_product(x1, x2, w[:, 1:], self.plan, backend="cpu")

    def test_unsupported_dtype_or_mode_asked_by_name_says_why(self):
        x1, x2, w = self.inputs(dtype=torch.float16)
        with pytest.raises(backends.BackendUnavailable, match="float32, float64, got torch.float16"):
            tensor_product(x1, x2, w, self.plan, backend="cpu")
        uvv = TensorProductPlan("2x0e", "3x0e", "3x0e", [(0, 0, 0, "uvv", True)])
        with pytest.raises(backends.BackendUnavailable, match="no 'cpu' implementation"):
            tensor_product(torch.randn(2, 2), torch.randn(2, 3), torch.randn(6), uvv, backend="cpu")

    def test_tables_changed_in_place_are_read_again(self):
        # The cpu backend keeps the programs it built from recent tables: a table edited in place
        # between two calls must give the edited product, and an edit that breaks it must still
        # be rejected.
        x1, x2, w = self.inputs()
        tables = self.plan.kernel_tables("cpu", torch.float32)
        args = [tables[k].clone() for k in ("paths", "coefficients", "cg_index", "cg_value")]
        op = torch.ops.nffk_C.tp_forward
        first, second = torch.empty(4, self.plan.dim_out), torch.empty(4, self.plan.dim_out)
        op(x1, x2, w, *args, False, first)
        args[1].mul_(2)  # every path's coefficient
        op(x1, x2, w, *args, False, second)
        assert first.abs().max() > 0
        torch.testing.assert_close(second, 2 * first)
        args[2][0, 0] = 99
        with pytest.raises(RuntimeError, match="out of range"):
            op(x1, x2, w, *args, False, second)

    def test_the_compiled_ops_reject_what_would_read_out_of_bounds(self):
        x1, x2, w = self.inputs()
        tables = self.plan.kernel_tables("cpu", torch.float32)
        args = [tables["paths"], tables["coefficients"], tables["cg_index"], tables["cg_value"]]
        out = torch.empty(4, self.plan.dim_out)
        op = torch.ops.nffk_C.tp_forward
        op(x1, x2, w, *args, False, out)  # well-formed call
        with pytest.raises(RuntimeError, match="dtype"):
            op(x1.double(), x2, w, *args, False, out)
        with pytest.raises(RuntimeError, match="contiguous"):
            op(torch.randn(self.plan.dim_in1, 4).t(), x2, w, *args, False, out)
        with pytest.raises(RuntimeError, match="reaches past"):
            op(x1[:, :-1].contiguous(), x2, w, *args, False, out)
        with pytest.raises(RuntimeError, match="rows for a batch"):
            op(x1, x2, w[:3].contiguous(), *args, False, out)
        bad_index = tables["cg_index"].clone()
        bad_index[0, 0] = 99
        with pytest.raises(RuntimeError, match="out of range"):
            op(x1, x2, w, args[0], args[1], bad_index, args[3], False, out)
        bad_paths = tables["paths"].clone()
        bad_paths[0, 0] = 2  # uvv
        with pytest.raises(RuntimeError, match="does not implement"):
            op(x1, x2, w, bad_paths, *args[1:], False, out)
