"""EquivariantConv against the same block assembled from e3nn modules (gather -> e3nn
TensorProduct -> scatter) with the same weights; FullyConnectedNet against e3nn's; equivariance."""
import pytest
import torch

from nffk import o3
from nffk.nn import EquivariantConv, FullyConnectedNet
from nffk.ops.conv import ConvGraph

e3nn = pytest.importorskip("e3nn")
from e3nn import o3 as e3o3  # noqa: E402
from e3nn.nn import FullyConnectedNet as E3FullyConnectedNet  # noqa: E402
from e3nn.nn import Gate as E3Gate  # noqa: E402


def close(got, expected, tolerance=1e-6):
    """e3nn's Clebsch-Gordan coefficients are float32-accurate (nffk's are exact), so agreement is
    judged relative to the largest entry, as in tests/nn/test_modules.py."""
    return (got - expected).abs().max().item() <= tolerance * max(expected.abs().max().item(), 1e-30)


def random_graph(gen, num_nodes, num_edges):
    receivers = torch.sort(torch.randint(0, num_nodes, (num_edges,), generator=gen)).values
    senders = torch.randint(0, num_nodes, (num_edges,), generator=gen)
    return senders, receivers


def test_fully_connected_net_matches_e3nn(seeded):
    ours = FullyConnectedNet([5, 7, 3], torch.nn.functional.silu).double()
    theirs = E3FullyConnectedNet([5, 7, 3], torch.nn.functional.silu).double()
    theirs.load_state_dict(ours.state_dict())  # same names, shapes and scaling
    x = torch.randn(11, 5, dtype=torch.float64, generator=seeded)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)


class E3nnBlock(torch.nn.Module):
    """The interaction block written with e3nn modules and an explicit gather / scatter."""

    def __init__(self, ours: EquivariantConv):
        super().__init__()
        self.ours = ours
        self.linear_in = e3o3.Linear(ours.irreps_in, ours.irreps_in)
        tp = ours.tp
        self.tp = e3o3.TensorProduct(tp.irreps_in1, tp.irreps_in2, tp.irreps_out,
                                     [(i.i_in1, i.i_in2, i.i_out, i.connection_mode, i.has_weight)
                                      for i in tp.instructions], shared_weights=False, internal_weights=False)
        self.radial = E3FullyConnectedNet(ours.radial.hs, torch.nn.functional.silu)
        self.linear_out = e3o3.Linear(ours.irreps_mid, ours.gate.irreps_in)
        self.self_connection = e3o3.Linear(ours.irreps_in, ours.gate.irreps_in)
        g = ours.gate
        self.gate = E3Gate(g.irreps_scalars, [a.act for a in g.act_scalars], g.irreps_gates,
                           [a.act for a in g.act_gates], g.irreps_gated)
        with torch.no_grad():
            for name in ("linear_in", "linear_out", "self_connection"):
                getattr(self, name).weight.copy_(getattr(ours, name).weight)
            self.radial.load_state_dict(ours.radial.state_dict())

    def forward(self, x, sh, embedding, senders, receivers):
        w = self.radial(embedding)
        per_edge = self.tp(self.linear_in(x)[senders], sh, w)
        summed = x.new_zeros(x.shape[0], per_edge.shape[1]).index_add_(0, receivers, per_edge)
        out = self.gate(self.linear_out(summed / self.ours.avg_num_neighbors ** 0.5) + self.self_connection(x))
        return x + out if self.ours.residual else out


@pytest.mark.parametrize("irreps_in, irreps_out, lmax", [
    ("4x0e", "4x0e+3x1o+2x2e", 2),
    ("3x0e+2x1o+2x2e", "3x0e+2x1o+2x2e", 2),
    ("2x0e+2x1o", "3x0e+2x1o+1x1e+1x2e", 1),
])
def test_matches_the_block_assembled_from_e3nn(irreps_in, irreps_out, lmax, seeded):
    ours = EquivariantConv(irreps_in, irreps_out, o3.Irreps.spherical_harmonics(lmax), num_basis=6,
                           radial_hidden=(8,), avg_num_neighbors=3.7).double()
    theirs = E3nnBlock(ours).double()
    n, e = 9, 40
    senders, receivers = random_graph(seeded, n, e)
    x = torch.randn(n, ours.irreps_in.dim, dtype=torch.float64, generator=seeded, requires_grad=True)
    vectors = torch.randn(e, 3, dtype=torch.float64, generator=seeded)
    sh = e3o3.spherical_harmonics(list(range(lmax + 1)), vectors, True, normalization="component")
    embedding = torch.randn(e, 6, dtype=torch.float64, generator=seeded)
    got = ours(x, sh, embedding, ConvGraph.build(senders, receivers, n))
    expected = theirs(x, sh, embedding, senders, receivers)
    assert got.shape == (n, ours.irreps_out.dim)
    assert close(got, expected)
    # gradients with respect to inputs and to every weight agree as well
    grad_out = torch.randn(got.shape, dtype=torch.float64, generator=seeded)
    ours_grads = torch.autograd.grad(got, [x, *ours.parameters()], grad_out)
    theirs_grads = torch.autograd.grad(expected, [x, *(getattr(theirs, name).weight for name in
                                                       ("linear_in", "linear_out", "self_connection"))]
                                       + list(theirs.radial.parameters()), grad_out)
    named = dict(zip(["x"] + [name for name, _ in ours.named_parameters()], ours_grads))
    order = ["x", "linear_in.weight", "linear_out.weight", "self_connection.weight"] + \
        [f"radial.{name}" for name, _ in ours.radial.named_parameters()]
    for name, theirs_grad in zip(order, theirs_grads):
        assert close(named[name], theirs_grad), name


def test_equivariance_and_residual(seeded):
    layer = EquivariantConv("3x0e+2x1o+2x2e", "3x0e+2x1o+2x2e", "0e+1o+2e", num_basis=4).double()
    assert layer.residual
    n, e = 6, 20
    senders, receivers = random_graph(seeded, n, e)
    graph = ConvGraph.build(senders, receivers, n)
    x = torch.randn(n, layer.irreps_in.dim, dtype=torch.float64, generator=seeded)
    vectors = torch.randn(e, 3, dtype=torch.float64, generator=seeded)
    embedding = torch.randn(e, 4, dtype=torch.float64, generator=seeded)
    R = o3.rand_matrix(dtype=torch.float64) * -1  # rotation and inversion
    sh = lambda v: o3.spherical_harmonics([0, 1, 2], v, True, "component")  # noqa: E731
    D_in, D_out = layer.irreps_in.D_from_matrix(R), layer.irreps_out.D_from_matrix(R)
    rotated_after = layer(x, sh(vectors), embedding, graph) @ D_out.T
    rotated_before = layer(x @ D_in.T, sh(vectors @ R.T), embedding, graph)
    torch.testing.assert_close(rotated_after, rotated_before, rtol=1e-10, atol=1e-10)


def test_clear_errors():
    with pytest.raises(ValueError, match="avg_num_neighbors"):
        EquivariantConv("2x0e", "2x0e", "0e", avg_num_neighbors=0)
    with pytest.raises(ValueError, match="cannot produce"):
        EquivariantConv("2x0e", "2x0e+2x1e", "0e+1o")
    with pytest.raises(ValueError, match="residual"):
        EquivariantConv("2x0e", "3x0e", "0e", residual=True)
