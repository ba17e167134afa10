"""The fused cpu backend of ops.conv against the unfused reference (gather -> tensor product ->
index_add): every kernel, forward, backward and double backward, both dtypes, shared and per-edge
weights, awkward graphs (isolated atoms, hubs with hundreds of neighbours, empty graphs), poisoned
outputs, bitwise independence of the thread count, and misuse."""
import pytest
import torch

from nffk import _ext, backends
from nffk.ops.conv import KERNELS, ConvGraph, CpuKernels, conv, implemented_backends
from nffk.ops.tensor_product import TensorProductPlan, tensor_product
from nffk.testing import DIRECT_PLANS, assert_thread_count_independent, poisoned_outputs, random_tensor_product

pytestmark = pytest.mark.skipif(not _ext.loaded(), reason="the compiled extension is not built")

TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}


def make_plan(config):
    return TensorProductPlan(config.irreps_in1, config.irreps_in2, config.irreps_out, config.instructions,
                             **config.options)


def random_configs(gen, count, **kwargs):
    """Random uvu/uvw plans; every third one with large multiplicities (several SIMD chunks)."""
    for k in range(count):
        big = k % 3 == 0
        yield random_tensor_product(gen, modes=("uvu", "uvw"), lmax=2 if big else 3, max_mul=33 if big else 5,
                                    max_paths=3 if big else 6, **kwargs)


def random_graph(gen, kind, num_nodes=None):
    """(senders, receivers, num_nodes), sorted by receiver. Kinds: 'random' (some isolated atoms),
    'hub' (one atom receives and one sends hundreds of edges), 'empty' (no edges), 'no_nodes'."""
    if kind == "no_nodes":
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), 0
    n = num_nodes or int(torch.randint(5, 20, (), generator=gen))
    if kind == "empty":
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), n
    e = int(torch.randint(0, 4 * n, (), generator=gen))
    # Only the first n - 2 nodes send or receive: the last two are isolated.
    senders = torch.randint(0, n - 2, (e,), generator=gen)
    receivers = torch.randint(0, n - 2, (e,), generator=gen)
    if kind == "hub":
        senders = torch.cat([senders, torch.randint(0, n - 2, (300,), generator=gen), torch.full((250,), 1)])
        receivers = torch.cat([receivers, torch.full((300,), 0), torch.randint(0, n - 2, (250,), generator=gen)])
    order = torch.sort(receivers, stable=True).indices
    return senders[order], receivers[order], n


def relative_error(got, expected):
    assert got.shape == expected.shape
    if expected.numel() == 0:
        return 0.0
    assert torch.isfinite(got).all(), "non-finite (unwritten?) output"
    return ((got.double() - expected).abs().max() / expected.abs().max().clamp_min(1e-300)).item()


def compare_every_kernel(plan, kind, dtype, shared, gen, label):
    """The four cpu kernels against the reference on a random graph of `kind`."""
    reference, cpu = KERNELS["reference"], KERNELS["cpu"]
    senders, receivers, n = random_graph(gen, kind)
    graph = ConvGraph.build(senders, receivers, n)
    e = senders.numel()
    x, g = (torch.randn(n, d, dtype=torch.float64, generator=gen) for d in (plan.dim_in1, plan.dim_out))
    sh = torch.randn(e, plan.dim_in2, dtype=torch.float64, generator=gen)
    w = torch.randn(*(() if shared else (e,)), plan.weight_numel, dtype=torch.float64, generator=gen)
    # The reference runs in float64 on the same (rounded) inputs: the error is the kernel's alone.
    x, g, sh, w = (t.to(dtype).double() for t in (x, g, sh, w))
    low = lambda t: t.to(dtype)  # noqa: E731
    for only in (False, True):
        with poisoned_outputs():
            got = [cpu.forward(plan, low(x), low(sh), low(w), graph, only),
                   cpu.vjp_x(plan, low(g), low(sh), low(w), graph, only),
                   cpu.vjp_sh(plan, low(x), low(g), low(w), graph, only),
                   cpu.vjp_w(plan, low(x), low(sh), low(g), graph, shared)]
        expected = [reference.forward(plan, x, sh, w, graph, only), reference.vjp_x(plan, g, sh, w, graph, only),
                    reference.vjp_sh(plan, x, g, w, graph, only), reference.vjp_w(plan, x, sh, g, graph, shared)]
        for name, a, b in zip(("forward", "vjp_x", "vjp_sh", "vjp_w"), got, expected):
            assert a.dtype == dtype
            assert relative_error(a, b) <= TOLERANCE[dtype], (name, only, kind, label)
        if not shared:  # vjp_x and vjp_w in one pass (per-edge weights only)
            with poisoned_outputs():
                fused = cpu.vjp_x_w(plan, low(g), low(sh), low(w), low(x), graph, only)
            for name, a, b in zip(("vjp_x", "vjp_w"), fused, (expected[1], expected[3])):
                assert a.dtype == dtype
                assert relative_error(a, b) <= TOLERANCE[dtype], ("vjp_x_w", name, only, kind, label)
    if n:  # isolated atoms neither receive messages nor get gradients from edges
        assert torch.all(got[0][-2:] == 0) and torch.all(got[1][-2:] == 0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shared", [False, True])
def test_every_kernel_matches_the_reference(dtype, shared, seeded):
    kinds = ("random", "hub", "random", "empty", "random", "no_nodes")
    for k, config in enumerate(random_configs(seeded, 6)):
        compare_every_kernel(make_plan(config), kinds[k], dtype, shared, seeded, config)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shared", [False, True])
def test_direct_kernels_match_the_reference(dtype, shared, seeded):
    # Blocks the direct kernels take, reading the receivers' gradients in the conv's channel-major
    # layout (vjp_x, vjp_sh, vjp_w).
    for irreps1, irreps2, irreps_out, instructions in DIRECT_PLANS:
        plan = TensorProductPlan(irreps1, irreps2, irreps_out, instructions)
        for kind in ("random", "hub"):
            compare_every_kernel(plan, kind, dtype, shared, seeded, (irreps1, irreps2, irreps_out))


def unfused(x, sh, w, plan, graph):
    """gather -> tensor product -> index_add: the conv without the conv op's autograd (an
    independent check of which gradients the conv backward computes and skips)."""
    messages = tensor_product(x[graph.senders], sh, w, plan, backend="reference")
    return messages.new_zeros(x.shape[0], plan.dim_out).index_add(0, graph.receivers, messages)


def test_backward_and_force_pattern_through_the_public_op(seeded):
    """Autograd through conv(..., backend="cpu"): gradients of every input, and the force-training
    pattern (gradient w.r.t. the edge attributes with create_graph, a loss on it, backward)."""
    for k, config in enumerate(random_configs(seeded, 4)):
        plan = make_plan(config)
        senders, receivers, n = random_graph(seeded, "hub" if k == 1 else "random")
        graph = ConvGraph.build(senders, receivers, n)
        shared = k % 2 == 1
        e = senders.numel()
        inputs = [torch.randn(n, plan.dim_in1, dtype=torch.float64, generator=seeded),
                  torch.randn(e, plan.dim_in2, dtype=torch.float64, generator=seeded),
                  torch.randn(*(() if shared else (e,)), plan.weight_numel, dtype=torch.float64, generator=seeded)]
        results = {}
        for backend in ("unfused", "reference", "cpu"):
            x, sh, w = (t.clone().requires_grad_() for t in inputs)
            with poisoned_outputs():
                if backend == "unfused":
                    energy = unfused(x, sh, w, plan, graph).pow(2).sum()
                else:
                    energy = conv(x, sh, w, plan=plan, graph=graph, backend=backend).pow(2).sum()
                (force,) = torch.autograd.grad(energy, sh, create_graph=True)
                loss = force.pow(2).sum() + energy
                loss.backward()
            results[backend] = [energy.detach(), force.detach(), x.grad, sh.grad, w.grad]
        for other in ("reference", "unfused"):
            for a, b in zip(results["cpu"], results[other]):
                assert relative_error(a, b) <= 1e-11, (other, config)


@pytest.mark.parametrize("shared", [False, True])
def test_gradcheck_and_gradgradcheck(shared, seeded):
    for kind in ("random", "hub"):
        plan = make_plan(random_tensor_product(seeded, modes=("uvu", "uvw"), lmax=2, max_mul=2, max_paths=3))
        senders, receivers, n = random_graph(seeded, kind, num_nodes=6)
        if kind == "hub":  # keep gradcheck's numerical Jacobian small: a hub of 40 edges
            senders, receivers = senders[-40:], receivers[-40:]
            order = torch.sort(receivers, stable=True).indices
            senders, receivers = senders[order], receivers[order]
        graph = ConvGraph.build(senders, receivers, n)
        e = senders.numel()
        inputs = [torch.randn(n, plan.dim_in1, dtype=torch.float64, generator=seeded, requires_grad=True),
                  torch.randn(e, plan.dim_in2, dtype=torch.float64, generator=seeded, requires_grad=True),
                  torch.randn(*(() if shared else (e,)), plan.weight_numel, dtype=torch.float64, generator=seeded,
                              requires_grad=True)]
        fn = lambda a, b, c: conv(a, b, c, plan=plan, graph=graph, backend="cpu")  # noqa: E731
        assert torch.autograd.gradcheck(fn, inputs)
        assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_results_do_not_depend_on_the_thread_count(dtype, seeded):
    """Bitwise, across runs and thread counts: every output row (receiver, sender, edge) is owned by
    one task and summed in edge order; shared weight gradients over fixed edge blocks in order."""
    # A random plan, and one of direct all-weighted blocks (vjp_x_w's shared contraction).
    for plan in (make_plan(random_tensor_product(seeded, modes=("uvu", "uvw"), lmax=2, max_mul=24, max_paths=5)),
                 TensorProductPlan(*DIRECT_PLANS[2])):
        senders, receivers, n = random_graph(seeded, "hub", num_nodes=200)
        graph = ConvGraph.build(senders, receivers, n)
        e = senders.numel()
        x, g = (torch.randn(n, d, dtype=dtype, generator=seeded) for d in (plan.dim_in1, plan.dim_out))
        sh = torch.randn(e, plan.dim_in2, dtype=dtype, generator=seeded)
        w = torch.randn(e, plan.weight_numel, dtype=dtype, generator=seeded)
        cpu = KERNELS["cpu"]
        assert_thread_count_independent(lambda: [
            cpu.forward(plan, x, sh, w, graph, False), cpu.vjp_x(plan, g, sh, w, graph, False),
            cpu.vjp_sh(plan, x, g, w[0], graph, False), cpu.vjp_w(plan, x, sh, g, graph, False),
            cpu.vjp_w(plan, x, sh, g, graph, True), *cpu.vjp_x_w(plan, g, sh, w, x, graph, False)],
            thread_counts=(1, 2, 3, 3))


def test_a_backward_without_a_graph_computes_vjp_x_and_vjp_w_in_one_pass(seeded, monkeypatch):
    """loss.backward() through the conv, and the force pattern's second backward (through vjp_sh),
    want the node and per-edge weight gradients of one g: one conv_vjp_x_w call (CpuKernels.vjp_x_w)
    instead of two kernels. Not with shared weights. Under create_graph with only sh wanted, neither
    gradient is computed."""
    calls = []
    one_pass = CpuKernels.vjp_x_w
    monkeypatch.setattr(CpuKernels, "vjp_x_w", staticmethod(lambda *args: calls.append(1) or one_pass(*args)))
    plan = TensorProductPlan(*DIRECT_PLANS[2])
    senders, receivers, n = random_graph(seeded, "random", num_nodes=30)
    graph = ConvGraph.build(senders, receivers, n)
    e = senders.numel()
    for shared in (False, True):
        inputs = [torch.randn(n, plan.dim_in1, dtype=torch.float64, generator=seeded),
                  torch.randn(e, plan.dim_in2, dtype=torch.float64, generator=seeded),
                  torch.randn(*(() if shared else (e,)), plan.weight_numel, dtype=torch.float64, generator=seeded)]
        grads = {}
        for backend in ("cpu", "reference"):
            x, sh, w = (t.clone().requires_grad_() for t in inputs)
            calls.clear()
            out = conv(x, sh, w, plan=plan, graph=graph, backend=backend)
            (first,) = torch.autograd.grad(out.pow(2).sum(), sh, create_graph=True)
            assert not calls  # recorded: separate differentiable ops
            (first.pow(2).sum() + out.pow(2).sum()).backward()
            # the energy term's backward and the force term's (through vjp_sh) each: one pass
            assert len(calls) == (0 if shared or backend == "reference" else 2), (shared, backend)
            grads[backend] = (x.grad, sh.grad, w.grad)
        for a, b in zip(grads["cpu"], grads["reference"]):
            assert relative_error(a, b) <= 1e-11, shared


def test_the_force_pattern_records_vjp_x_and_vjp_w_as_one_differentiable_op(seeded, monkeypatch):
    """In a model's force computation the first backward wants the node, edge-attribute and per-edge
    weight gradients with create_graph (the weights depend on the positions): vjp_x and vjp_w run as
    one recorded op (nffk::conv_vjp_x_w), whose backward the second backward takes. Gradients equal
    the reference backend's, which records the two ops."""
    calls = []
    one_pass = CpuKernels.vjp_x_w
    monkeypatch.setattr(CpuKernels, "vjp_x_w", staticmethod(lambda *args: calls.append(1) or one_pass(*args)))
    for plan in (TensorProductPlan(*DIRECT_PLANS[0]), TensorProductPlan(*DIRECT_PLANS[2])):
        senders, receivers, n = random_graph(seeded, "random", num_nodes=30)
        graph = ConvGraph.build(senders, receivers, n)
        e = senders.numel()
        inputs = [torch.randn(n, plan.dim_in1, dtype=torch.float64, generator=seeded),
                  torch.randn(e, plan.dim_in2, dtype=torch.float64, generator=seeded),
                  torch.randn(e, plan.weight_numel, dtype=torch.float64, generator=seeded)]
        results = {}
        for backend in ("cpu", "reference"):
            x, sh, w = (t.clone().requires_grad_() for t in inputs)
            calls.clear()
            with poisoned_outputs():
                energy = conv(x, sh, w, plan=plan, graph=graph, backend=backend).pow(2).sum()
                first = torch.autograd.grad(energy, (x, sh, w), create_graph=True)
                assert len(calls) == (1 if backend == "cpu" else 0)
                (sum(f.pow(2).sum() for f in first) + energy).backward()
            results[backend] = [energy.detach(), *(f.detach() for f in first), x.grad, sh.grad, w.grad]
        for a, b in zip(results["cpu"], results["reference"]):
            assert relative_error(a, b) <= 1e-11


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_vjp_x_summed_over_several_slabs(dtype, seeded):
    """vjp_x adds each edge into its sender's row of a per-slab partial sum (slabs of ~4k edges,
    csrc/cpu/conv.cpp): with 30k edges several slabs meet in most rows. Against the reference, and
    bitwise across thread counts."""
    plan = make_plan(random_tensor_product(seeded, modes=("uvu", "uvw"), lmax=1, max_mul=4, max_paths=3))
    n, e = 400, 30_000
    receivers = torch.sort(torch.randint(0, n - 1, (e,), generator=seeded)).values  # node n-1: isolated
    senders = torch.randint(0, n - 1, (e,), generator=seeded)
    graph = ConvGraph.build(senders, receivers, n)
    g = torch.randn(n, plan.dim_out, dtype=torch.float64, generator=seeded).to(dtype)
    sh = torch.randn(e, plan.dim_in2, dtype=torch.float64, generator=seeded).to(dtype)
    w = torch.randn(e, plan.weight_numel, dtype=torch.float64, generator=seeded).to(dtype)
    cpu, reference = KERNELS["cpu"], KERNELS["reference"]
    with poisoned_outputs():
        got = cpu.vjp_x(plan, g, sh, w, graph, False)
    expected = reference.vjp_x(plan, g.double(), sh.double(), w.double(), graph, False)
    assert relative_error(got, expected) <= TOLERANCE[dtype]
    assert torch.all(got[-1] == 0)
    assert_thread_count_independent(lambda: [cpu.vjp_x(plan, g, sh, w, graph, False)], thread_counts=(1, 2, 3))


def test_auto_picks_cpu_for_cpu_tensors_and_supported_plans():
    plan = TensorProductPlan("2x0e+2x1o", "0e+1o", "2x0e+2x1o", [(0, 0, 0, "uvu", True), (1, 1, 0, "uvu", True)])
    assert backends.resolve("conv", "auto", torch.device("cpu"), implemented_backends(plan, torch.float32)) == "cpu"
    uvv = TensorProductPlan("2x0e", "3x0e", "3x0e", [(0, 0, 0, "uvv", True)])
    assert "cpu" not in implemented_backends(uvv)
    assert "cpu" not in implemented_backends(plan, torch.float16)


class TestMisuse:
    plan = TensorProductPlan("3x0e+2x1o", "0e+1o", "3x0e+2x1o+2x1e",
                             [(0, 0, 0, "uvu", True), (1, 0, 1, "uvu", True), (1, 1, 2, "uvw", True)])

    def graph(self):
        return ConvGraph.build(torch.tensor([1, 2, 0, 3]), torch.tensor([0, 0, 2, 3]), 4)

    def test_unsupported_dtype_or_mode_asked_by_name_says_why(self):
        graph = self.graph()
        x, sh = torch.randn(4, self.plan.dim_in1, dtype=torch.float16), torch.randn(4, 4, dtype=torch.float16)
        w = torch.randn(4, self.plan.weight_numel, dtype=torch.float16)
        with pytest.raises(backends.BackendUnavailable, match="float32, float64, got torch.float16"):
            conv(x, sh, w, plan=self.plan, graph=graph, backend="cpu")
        uvv = TensorProductPlan("2x0e", "3x0e", "3x0e", [(0, 0, 0, "uvv", True)])
        with pytest.raises(backends.BackendUnavailable, match="no 'cpu' implementation"):
            conv(torch.randn(4, 2), torch.randn(4, 3), torch.randn(6), plan=uvv, graph=graph, backend="cpu")

    def test_out_of_range_indices_are_value_errors_before_any_kernel(self):
        x, sh, w = torch.randn(4, self.plan.dim_in1), torch.randn(2, 4), torch.randn(2, self.plan.weight_numel)
        with pytest.raises(ValueError, match=r"edge indices must lie in \[0, num_nodes=4\)"):
            conv(x, sh, w, torch.tensor([0, 4]), torch.tensor([0, 1]), 4, self.plan, backend="cpu")
        with pytest.raises(ValueError, match=r"edge indices must lie"):
            conv(x, sh, w, torch.tensor([0, 1]), torch.tensor([-1, 1]), 4, self.plan, backend="cpu")

    def test_the_compiled_ops_reject_graphs_that_would_read_out_of_bounds(self):
        """Hand-made graph tensors (bypassing ConvGraph.build) are checked by the kernels themselves."""
        graph = self.graph()
        x, sh = torch.randn(4, self.plan.dim_in1), torch.randn(4, 4)
        w = torch.randn(4, self.plan.weight_numel)
        tables = self.plan.kernel_tables("cpu", torch.float32)
        args = [tables["paths"], tables["coefficients"], tables["cg_index"], tables["cg_value"], False]
        op = torch.ops.nffk_C.conv_forward
        out = torch.empty(4, self.plan.dim_out)
        op(x, sh, w, *graph, *args, out)  # well-formed call
        bad = {
            "senders": (graph._replace(senders=torch.tensor([1, 2, 0, 9])), "sender_order and sender_ptr"),
            "receivers": (graph._replace(receivers=torch.tensor([0, 1, 2, 3])), "receivers do not match"),
            "receiver_ptr": (graph._replace(receiver_ptr=torch.tensor([0, 2, 2, 3, 5])), "CSR pointer"),
            "sender_order": (graph._replace(sender_order=torch.tensor([2, 0, 1, 7])), "sender_order"),
            "short ptr": (graph._replace(sender_ptr=torch.tensor([0, 1, 2, 3])), "num_nodes \\+ 1"),
            "int32": (graph._replace(senders=graph.senders.int()), "int64"),
        }
        for name, (broken, message) in bad.items():
            for kernel, inputs, shape in ((op, (x, sh, w), (4, self.plan.dim_out)),
                                          (torch.ops.nffk_C.conv_vjp_x, (out, sh, w), (4, self.plan.dim_in1))):
                with pytest.raises(RuntimeError, match=message):
                    kernel(*inputs, *broken, *args, torch.empty(shape))
        with pytest.raises(RuntimeError, match="x must be"):
            op(x[:3], sh, w, *graph, *args, torch.empty(3, self.plan.dim_out))
        with pytest.raises(RuntimeError, match="one row per edge|rows for"):
            op(x, sh, w[:3], *graph, *args, out)
        # vjp_x and vjp_w in one pass: per-edge weights only, outputs of the inputs' shapes, and the
        # graph checked as for the others.
        one_pass = torch.ops.nffk_C.conv_vjp_x_w
        gx, gw = torch.empty(4, self.plan.dim_in1), torch.empty_like(w)
        one_pass(out, sh, w, x, *graph, *args, gx, gw)  # well-formed call
        with pytest.raises(RuntimeError, match="one row of weights per edge"):
            one_pass(out, sh, w[0], x, *graph, *args, gx, gw[0])
        with pytest.raises(RuntimeError, match="gw must have w's shape"):
            one_pass(out, sh, w, x, *graph, *args, gx, gw[:3])
        with pytest.raises(RuntimeError, match="sender_order and sender_ptr"):
            one_pass(out, sh, w, x, *bad["senders"][0], *args, gx, gw)


def test_opcheck_of_the_cpu_ops(seeded):
    """The custom ops' fake kernels, schemas and autograd registration agree with the cpu kernels."""
    plan = make_plan(random_tensor_product(seeded, modes=("uvu", "uvw"), lmax=2, max_mul=3, max_paths=4))
    senders, receivers, n = random_graph(seeded, "random", num_nodes=7)
    graph = ConvGraph.build(senders, receivers, n)
    e = senders.numel()
    x = torch.randn(n, plan.dim_in1, generator=seeded, requires_grad=True)
    sh = torch.randn(e, plan.dim_in2, generator=seeded, requires_grad=True)
    w = torch.randn(e, plan.weight_numel, generator=seeded, requires_grad=True)
    g = torch.randn(n, plan.dim_out, generator=seeded, requires_grad=True)
    ops = torch.ops.nffk
    torch.library.opcheck(ops.conv_forward.default, (x, sh, w, *graph, plan.id, "cpu", False))
    torch.library.opcheck(ops.conv_vjp_x.default, (g, sh, w, *graph, plan.id, "cpu", False))
    torch.library.opcheck(ops.conv_vjp_sh.default, (x, g, w, *graph, plan.id, "cpu", True))
    torch.library.opcheck(ops.conv_vjp_w.default, (x, sh, g, *graph, plan.id, "cpu", True))
    torch.library.opcheck(ops.conv_vjp_x_w.default, (x, sh, w, g, *graph, plan.id, "cpu", False))
