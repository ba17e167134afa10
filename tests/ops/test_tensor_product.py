"""The tensor-product op itself: plan contents, derivatives of every order, custom-op checks, errors."""
import math

import e3nn.o3
import pytest
import torch

from nffk.ops.tensor_product import MODES, TensorProductPlan, tensor_product
from nffk.testing import random_tensor_product


def make_plan(config):
    return TensorProductPlan(config.irreps_in1, config.irreps_in2, config.irreps_out, config.instructions,
                             **config.options)


def random_inputs(plan, batch, shared, gen, dtype=torch.float64, requires_grad=False):
    x1 = torch.randn(batch, plan.dim_in1, dtype=dtype, generator=gen, requires_grad=requires_grad)
    x2 = torch.randn(batch, plan.dim_in2, dtype=dtype, generator=gen, requires_grad=requires_grad)
    w = torch.randn(*(() if shared else (batch,)), plan.weight_numel, dtype=dtype, generator=gen,
                    requires_grad=requires_grad)
    return x1, x2, w


def test_plan_cg_nonzeros_are_exactly_the_dense_cg(seeded):
    config = random_tensor_product(seeded, lmax=4)
    plan = make_plan(config)
    for path in plan.paths:
        dense = e3nn.o3.wigner_3j(path.l1, path.l2, path.l3, dtype=torch.float64)
        rebuilt = torch.zeros_like(dense)
        index = plan.cg_index[path.cg_begin:path.cg_end]
        rebuilt[index[:, 0], index[:, 1], index[:, 2]] = plan.cg_value[path.cg_begin:path.cg_end]
        torch.testing.assert_close(rebuilt, dense, atol=1e-14, rtol=0)
        assert path.cg_end - path.cg_begin == int((dense.abs() > 1e-14).sum())


def test_weight_layout_and_counts(seeded):
    config = random_tensor_product(seeded)
    plan = make_plan(config)
    expected_numel = sum(math.prod(i.path_shape) for i in plan.instructions if i.has_weight)
    assert plan.weight_numel == expected_numel
    offsets = [p.weight_offset for p in plan.paths if p.has_weight]
    assert offsets == sorted(offsets) and (not offsets or offsets[0] == 0)
    assert plan.bytes_per_element(torch.float32, shared_weights=False) == 4 * (
        plan.dim_in1 + plan.dim_in2 + plan.dim_out + plan.weight_numel)
    assert plan.flops_per_element > 0


def test_flops_of_a_channelwise_path_by_hand():
    # 4x1o x 1x1o -> 4x1e (uvu, weighted): 6 CG non-zeros (Levi-Civita), 4 channel pairs, 3 outputs.
    plan = TensorProductPlan("4x1o", "1x1o", "4x1e", [(0, 0, 0, "uvu", True)])
    assert plan.cg_value.numel() == 6
    assert plan.flops_per_element == 4 * (3 * 6 + 2 * 3)


@pytest.mark.parametrize("shared", [True, False])
def test_gradcheck_and_gradgradcheck(shared, seeded):
    for _ in range(3):
        config = random_tensor_product(seeded, lmax=2, max_mul=2, max_paths=3)
        plan = make_plan(config)
        inputs = random_inputs(plan, 2, shared, seeded, requires_grad=True)
        fn = lambda a, b, c: tensor_product(a, b, c, plan, backend="reference")  # noqa: E731
        assert torch.autograd.gradcheck(fn, inputs), config
        assert torch.autograd.gradgradcheck(fn, inputs), config


def test_third_derivative_of_weightless_paths(seeded):
    # Beyond double backward: the vjp_w branch must ignore paths that do not depend on the weights.
    plan = TensorProductPlan("2x1o+1x0e", "1x1o", "2x1e+1x1o", [(0, 0, 0, "uvu", False), (1, 0, 1, "uvu", True)])
    inputs = random_inputs(plan, 2, False, seeded, requires_grad=True)
    fn = lambda a, b, c: tensor_product(a, b, c, plan, backend="reference")  # noqa: E731
    assert torch.autograd.gradgradcheck(lambda *x: torch.autograd.grad(fn(*x).pow(2).sum(), x, create_graph=True),
                                        inputs)


@pytest.mark.parametrize("mode", MODES)
def test_opcheck_every_kernel(mode, seeded):
    config = random_tensor_product(seeded, modes=[mode], max_paths=3)
    plan = make_plan(config)
    for shared in (True, False):
        x1, x2, w = random_inputs(plan, 4, shared, seeded, dtype=torch.float32, requires_grad=True)
        g = torch.randn(4, plan.dim_out, generator=seeded, requires_grad=True)
        ops = torch.ops.nffk
        torch.library.opcheck(ops.tp_forward.default, (x1, x2, w, plan.id, "reference", False))
        torch.library.opcheck(ops.tp_vjp_x1.default, (g, x2, w, plan.id, "reference", False))
        torch.library.opcheck(ops.tp_vjp_x2.default, (x1, g, w, plan.id, "reference", True))
        torch.library.opcheck(ops.tp_vjp_w.default, (x1, x2, g, plan.id, "reference", shared))


def test_torch_compile_fullgraph_forward_and_force_like_backward(seeded):
    config = random_tensor_product(seeded, modes=["uvu", "uvw"])
    plan = make_plan(config)
    x1, x2, w = random_inputs(plan, 5, False, seeded, dtype=torch.float32)

    def energy_and_grad(a, b, c):
        a = a.requires_grad_()
        energy = tensor_product(a, b, c, plan, backend="reference").pow(2).sum()
        return energy, torch.autograd.grad(energy, a, create_graph=True)[0]

    compiled = torch.compile(lambda a, b, c: tensor_product(a, b, c, plan), fullgraph=True)
    torch.testing.assert_close(compiled(x1, x2, w), tensor_product(x1, x2, w, plan, backend="reference"))
    compiled_grad = torch.compile(energy_and_grad)
    got, expected = compiled_grad(x1.clone(), x2, w), energy_and_grad(x1.clone(), x2, w)
    torch.testing.assert_close(got[1], expected[1])


def test_batch_dimensions_broadcast(seeded):
    plan = TensorProductPlan("2x0e+1x1o", "0e+1o", "2x0e+2x1o+1x1e", [(0, 0, 0, "uvu", True), (0, 1, 1, "uvu", True),
                                                                     (1, 1, 2, "uvu", True)])
    x1 = torch.randn(3, 1, plan.dim_in1, generator=seeded)
    x2 = torch.randn(1, 4, plan.dim_in2, generator=seeded)
    w = torch.randn(plan.weight_numel, generator=seeded)
    out = tensor_product(x1, x2, w, plan, backend="reference")
    assert out.shape == (3, 4, plan.dim_out)
    looped = tensor_product(x1.expand(3, 4, -1).reshape(12, -1), x2.expand(3, 4, -1).reshape(12, -1), w, plan,
                            backend="reference")
    torch.testing.assert_close(out.reshape(12, -1), looped)


def test_empty_batch_and_no_instruction_outputs():
    plan = TensorProductPlan("2x0e", "0e", "2x0e+3x1o", [(0, 0, 0, "uvu", True)])
    x1, x2, w = torch.zeros(0, 2), torch.zeros(0, 1), torch.zeros(0, plan.weight_numel)
    assert tensor_product(x1, x2, w, plan, backend="reference").shape == (0, 11)
    out = tensor_product(torch.ones(2, 2), torch.ones(2, 1), torch.ones(2, 2), plan, backend="reference")
    assert torch.all(out[:, 2:] == 0)


class TestBadInput:
    def test_malformed_irreps_name_the_argument(self):
        for bad in ("3x1q", "x1e", "1x-2e", "banana"):
            with pytest.raises(ValueError, match="irreps_in1"):
                TensorProductPlan(bad, "0e", "0e", [])
        with pytest.raises(ValueError, match="irreps_out"):
            TensorProductPlan("0e", "0e", "0e+", [])

    def test_instructions_out_of_range_or_breaking_rules(self):
        with pytest.raises(ValueError, match=r"instructions\[0\]: i_in2=3"):
            TensorProductPlan("0e", "0e", "0e", [(0, 3, 0, "uvw", True)])
        with pytest.raises(ValueError, match="breaks parity"):
            TensorProductPlan("1x1o", "1x1o", "1x1o", [(0, 0, 0, "uvw", True)])
        with pytest.raises(ValueError, match="l_out"):
            TensorProductPlan("1x1o", "1x1o", "1x3e", [(0, 0, 0, "uvw", True)])
        with pytest.raises(ValueError, match="connection_mode"):
            TensorProductPlan("1x0e", "1x0e", "1x0e", [(0, 0, 0, "uvx", True)])
        with pytest.raises(ValueError, match="output multiplicity"):
            TensorProductPlan("3x0e", "1x0e", "2x0e", [(0, 0, 0, "uvu", True)])
        with pytest.raises(ValueError, match="needs has_weight"):
            TensorProductPlan("3x0e", "1x0e", "2x0e", [(0, 0, 0, "uvw", False)])
        with pytest.raises(ValueError, match="irrep_normalization"):
            TensorProductPlan("0e", "0e", "0e", [], irrep_normalization="unit")
        with pytest.raises(ValueError, match="in1_var"):
            TensorProductPlan("0e+1o", "0e", "0e", [], in1_var=[1.0])

    def test_wrong_shapes_dtypes_and_weights(self):
        plan = TensorProductPlan("2x0e", "0e", "2x0e", [(0, 0, 0, "uvu", True)])
        with pytest.raises(ValueError, match=r"x1 must have shape \[\.\.\., 2\]"):
            tensor_product(torch.zeros(4, 3), torch.zeros(4, 1), torch.zeros(2), plan)
        with pytest.raises(ValueError, match="x2 must have shape"):
            tensor_product(torch.zeros(4, 2), torch.zeros(4, 2), torch.zeros(2), plan)
        with pytest.raises(ValueError, match="weight must have shape"):
            tensor_product(torch.zeros(4, 2), torch.zeros(4, 1), torch.zeros(4, 5), plan)
        with pytest.raises(ValueError, match="weight is required"):
            tensor_product(torch.zeros(4, 2), torch.zeros(4, 1), None, plan)
        with pytest.raises(ValueError, match="one dtype"):
            tensor_product(torch.zeros(4, 2), torch.zeros(4, 1, dtype=torch.float64), torch.zeros(2), plan)
        with pytest.raises(ValueError, match="do not broadcast"):
            tensor_product(torch.zeros(4, 2), torch.zeros(3, 1), torch.zeros(2), plan)


@pytest.mark.parametrize("shared", [False, True])
def test_force_pattern_skips_the_weight_gradient_nobody_reads(shared, seeded, monkeypatch):
    # autograd.grad(energy, x2) reaches the weights, which require grad for the later backward:
    # that first backward must not run vjp_w, and the final gradients must not change.
    from collections import Counter

    from nffk.ops.tensor_product import KERNELS
    calls, reference = Counter(), KERNELS["reference"]
    for name in ("forward", "vjp_x1", "vjp_x2", "vjp_w"):
        original = getattr(reference, name)
        monkeypatch.setattr(reference, name, staticmethod(
            lambda *args, _name=name, _original=original: (calls.update([_name]), _original(*args))[1]))
    plan = make_plan(random_tensor_product(seeded, modes=["uvw"]))  # (uvw paths always have weights)
    x1, x2, w = random_inputs(plan, 5, shared, seeded)

    def force_loss_backward(grad_inputs):
        b, c = x2.detach().requires_grad_(), w.detach().requires_grad_()
        energy = tensor_product(x1, b, c, plan, backend="reference").pow(2).sum()
        force = torch.autograd.grad(energy, [b, c][:grad_inputs], create_graph=True)[0]
        first = dict(calls)
        force.pow(2).sum().backward()
        return first, b.grad, c.grad

    first, x2_grad, w_grad = force_loss_backward(1)
    assert first == {"forward": 1, "vjp_x2": 1}
    assert calls["vjp_w"] >= 1  # the loss's backward does need it
    calls.clear()
    first, x2_expected, w_expected = force_loss_backward(2)
    assert first == {"forward": 1, "vjp_x2": 1, "vjp_w": 1}
    torch.testing.assert_close(x2_grad, x2_expected)
    torch.testing.assert_close(w_grad, w_expected)
