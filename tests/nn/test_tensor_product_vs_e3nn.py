"""nffk.nn.TensorProduct against e3nn.o3.TensorProduct on random configurations: same weights,
same outputs, same first and second derivatives."""
import contextlib

import e3nn.o3
import pytest
import torch

import nffk.nn
from nffk.testing import random_tensor_product

TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-6}


def relative_error(got, expected):
    if expected.numel() == 0:
        return 0.0 if got.shape == expected.shape else float("inf")
    scale = expected.abs().max().clamp_min(1e-30)
    return ((got - expected).abs().max() / scale).item()


@contextlib.contextmanager
def default_dtype(dtype):
    """e3nn bakes its CG constants in the default dtype at construction: build in the test dtype."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def build_pair(config, shared, dtype):
    kwargs = dict(config.options, shared_weights=shared, internal_weights=shared)
    with default_dtype(dtype):
        theirs = e3nn.o3.TensorProduct(config.irreps_in1, config.irreps_in2, config.irreps_out,
                                       config.instructions, **kwargs)
    ours = nffk.nn.TensorProduct(config.irreps_in1, config.irreps_in2, config.irreps_out, config.instructions,
                                 backend="reference", **kwargs).to(dtype)
    if shared and ours.weight_numel:
        with torch.no_grad():
            ours.weight.copy_(theirs.weight)
    return theirs, ours


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shared", [True, False])
def test_forward_matches_e3nn(dtype, shared, seeded):
    for _ in range(12):
        config = random_tensor_product(seeded)
        theirs, ours = build_pair(config, shared, dtype)
        batch = (3, 2)
        x1 = torch.randn(*batch, config.irreps_in1.dim, dtype=dtype, generator=seeded)
        x2 = torch.randn(*batch, config.irreps_in2.dim, dtype=dtype, generator=seeded)
        if shared:
            expected, got = theirs(x1, x2), ours(x1, x2)
        else:
            w = torch.randn(*batch, ours.weight_numel, dtype=dtype, generator=seeded)
            expected, got = theirs(x1, x2, w), ours(x1, x2, w)
        assert got.shape == expected.shape
        assert relative_error(got, expected) <= TOLERANCE[dtype], config


@pytest.mark.parametrize("shared", [True, False])
def test_first_and_second_derivatives_match_e3nn(shared, seeded):
    dtype = torch.float64
    for _ in range(8):
        config = random_tensor_product(seeded)
        theirs, ours = build_pair(config, shared, dtype)
        x1 = torch.randn(4, config.irreps_in1.dim, dtype=dtype, generator=seeded)
        x2 = torch.randn(4, config.irreps_in2.dim, dtype=dtype, generator=seeded)
        w = torch.randn(*(() if shared else (4,)), ours.weight_numel, dtype=dtype, generator=seeded)
        target = torch.randn(4, config.irreps_out.dim, dtype=dtype, generator=seeded)

        def derivatives(module):
            inputs = [t.clone().requires_grad_() for t in (x1, x2, w)]
            out = module(inputs[0], inputs[1], inputs[2])
            first = torch.autograd.grad((out * target).sum(), inputs, create_graph=True, allow_unused=True)
            first = [torch.zeros_like(t) if g is None else g for g, t in zip(first, inputs)]
            # A force-training-like second derivative: gradient of a loss on the first derivatives.
            loss = sum((g.pow(2)).sum() for g in first)
            second = torch.autograd.grad(loss, inputs, allow_unused=True) if loss.requires_grad else [None] * 3
            second = [torch.zeros_like(t) if g is None else g for g, t in zip(second, inputs)]
            return out, first, second

        e_out, e_first, e_second = derivatives(theirs)
        n_out, n_first, n_second = derivatives(ours)
        assert relative_error(n_out, e_out) <= 1e-12
        for got, expected in zip(n_first + n_second, e_first + e_second):
            assert relative_error(got, expected) <= 1e-11, config


def test_fully_connected_matches_e3nn(seeded):
    for _ in range(5):
        config = random_tensor_product(seeded)
        theirs = e3nn.o3.FullyConnectedTensorProduct(config.irreps_in1, config.irreps_in2, config.irreps_out)
        ours = nffk.nn.FullyConnectedTensorProduct(config.irreps_in1, config.irreps_in2, config.irreps_out)
        assert ours.weight_numel == theirs.weight_numel
        if ours.weight_numel:
            with torch.no_grad():
                ours.weight.copy_(theirs.weight)
        x1 = torch.randn(5, config.irreps_in1.dim, generator=seeded)
        x2 = torch.randn(5, config.irreps_in2.dim, generator=seeded)
        assert relative_error(ours(x1, x2), theirs(x1, x2)) <= 1e-6


def test_from_e3nn_converts_weights_and_outputs(seeded):
    for _ in range(5):
        config = random_tensor_product(seeded)
        with default_dtype(torch.float64):
            theirs = e3nn.o3.TensorProduct(config.irreps_in1, config.irreps_in2, config.irreps_out,
                                           config.instructions, **config.options)
        ours = nffk.nn.from_e3nn(theirs)
        x1 = torch.randn(5, config.irreps_in1.dim, dtype=torch.float64, generator=seeded)
        x2 = torch.randn(5, config.irreps_in2.dim, dtype=torch.float64, generator=seeded)
        assert relative_error(ours(x1, x2), theirs(x1, x2)) <= 1e-12


def test_channelwise_matches_nequip_style_e3nn_construction(seeded):
    node, edge = "8x0e+4x1o+2x2e", "0e+1o+2e"
    ours = nffk.nn.ChannelwiseTensorProduct(node, edge, "0e+1o+1e+2e")
    # The same construction written against e3nn by hand.
    node_irreps, edge_irreps = e3nn.o3.Irreps(node), e3nn.o3.Irreps(edge)
    mid, instructions = [], []
    for i, (mul, ir_in) in enumerate(node_irreps):
        for j, (_, ir_edge) in enumerate(edge_irreps):
            for ir_out in ir_in * ir_edge:
                if ir_out in e3nn.o3.Irreps("0e+1o+1e+2e"):
                    instructions.append((i, j, len(mid), "uvu", True))
                    mid.append((mul, ir_out))
    mid, p, _ = e3nn.o3.Irreps(mid).sort()
    instructions = [(i, j, p[k], m, t) for i, j, k, m, t in instructions]
    theirs = e3nn.o3.TensorProduct(node, edge, mid, instructions, shared_weights=False, internal_weights=False)
    assert str(ours.irreps_out) == str(theirs.irreps_out)
    x1 = torch.randn(7, node_irreps.dim, generator=seeded)
    x2 = torch.randn(7, edge_irreps.dim, generator=seeded)
    w = torch.randn(7, ours.weight_numel, generator=seeded)
    assert relative_error(ours(x1, x2, w), theirs(x1, x2, w)) <= 1e-6
