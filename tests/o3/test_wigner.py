"""wigner_3j, wigner_3j_sparse, wigner_D and rotations against e3nn and against their defining properties."""
import itertools
import random

import e3nn.o3
import pytest
import torch

from nffk import o3


def triples(lmax):
    return [(a, b, c) for a, b, c in itertools.product(range(lmax + 1), repeat=3) if abs(a - b) <= c <= a + b]


def rotate_3j(C, R):
    l1, l2, l3 = [(n - 1) // 2 for n in C.shape]
    D1, D2, D3 = (o3.wigner_D(l, *o3.matrix_to_angles(R)) for l in (l1, l2, l3))
    return torch.einsum("ijk,...ia,...jb,...kc->...abc", C, D1, D2, D3)


def test_wigner_3j_equals_e3nn_for_all_triples_up_to_6():
    worst = 0.0
    for l1, l2, l3 in triples(6):
        ours = o3.wigner_3j(l1, l2, l3, dtype=torch.float64)
        theirs = e3nn.o3.wigner_3j(l1, l2, l3, dtype=torch.float64)
        worst = max(worst, (ours - theirs).abs().max().item())
    assert worst < 1e-12, worst


def test_wigner_3j_equals_e3nn_on_random_triples_up_to_12(seeded):
    rng = random.Random(int(torch.randint(0, 2**31, (), generator=seeded)))
    big = [t for t in triples(12) if max(t) > 6]
    for l1, l2, l3 in rng.sample(big, 6):
        ours = o3.wigner_3j(l1, l2, l3, dtype=torch.float64)
        theirs = e3nn.o3.wigner_3j(l1, l2, l3, dtype=torch.float64)
        assert (ours - theirs).abs().max().item() < 1e-12, (l1, l2, l3)


@pytest.mark.parametrize("l1, l2, l3", [(14, 14, 14), (14, 7, 9), (3, 14, 12), (16, 10, 8), (20, 1, 19)])
def test_wigner_3j_beyond_e3nn_is_invariant_and_normalised(l1, l2, l3, seeded):
    C = o3.wigner_3j(l1, l2, l3, dtype=torch.float64)
    assert abs(C.norm().item() - 1) < 1e-13
    R = o3.rand_matrix(2, dtype=torch.float64, generator=seeded)
    torch.testing.assert_close(rotate_3j(C, R), C.expand(2, *C.shape), atol=1e-12, rtol=0)


def test_wigner_3j_is_invariant_for_random_triples(seeded):
    rng = random.Random(int(torch.randint(0, 2**31, (), generator=seeded)))
    R = o3.rand_matrix(3, dtype=torch.float64, generator=seeded)
    for l1, l2, l3 in rng.sample(triples(8), 12):
        C = o3.wigner_3j(l1, l2, l3, dtype=torch.float64)
        torch.testing.assert_close(rotate_3j(C, R), C.expand(3, *C.shape), atol=1e-13, rtol=0)
        # Its rows are a (2 l3 + 1)^-1/2-scaled isometry: sum_ab C[a,b,c] C[a,b,c'] = delta / (2 l3 + 1).
        gram = torch.einsum("abc,abd->cd", C, C)
        torch.testing.assert_close(gram, torch.eye(2 * l3 + 1, dtype=torch.float64) / (2 * l3 + 1), atol=1e-14,
                                   rtol=0)


def test_wigner_3j_sparse_lists_exactly_the_non_zeros(seeded):
    rng = random.Random(int(torch.randint(0, 2**31, (), generator=seeded)))
    for l1, l2, l3 in rng.sample(triples(7), 25) + [(0, 0, 0), (1, 1, 1), (6, 6, 12)]:
        index, value = o3.wigner_3j_sparse(l1, l2, l3)
        assert index.dtype == torch.int64 and value.dtype == torch.float64 and index.shape == (value.numel(), 3)
        dense = torch.zeros(2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1, dtype=torch.float64)
        dense[index[:, 0], index[:, 1], index[:, 2]] = value
        assert torch.equal(dense, o3.wigner_3j(l1, l2, l3, dtype=torch.float64))
        # The structural non-zeros agree with e3nn's (which are float-rounded; true zeros are ~1e-17).
        theirs = e3nn.o3.wigner_3j(l1, l2, l3, dtype=torch.float64)
        assert int((theirs.abs() > 1e-10).sum()) == value.numel()
        assert bool((value != 0).all())
        keys = [(int(c), int(a), int(b)) for a, b, c in index]
        assert keys == sorted(keys) and len(set(keys)) == len(keys)
    # Returned tensors are copies: mutating them does not corrupt the cache.
    index, value = o3.wigner_3j_sparse(2, 2, 2)
    value.zero_()
    assert bool((o3.wigner_3j_sparse(2, 2, 2)[1] != 0).all())


def test_wigner_3j_arguments():
    assert o3.wigner_3j(1, 1, 2).dtype == torch.get_default_dtype()
    assert o3.wigner_3j(1, 1, 2, dtype=torch.float32).dtype == torch.float32
    C = o3.wigner_3j(2, 3, 4, dtype=torch.float64)
    C.zero_()
    assert o3.wigner_3j(2, 3, 4, dtype=torch.float64).abs().sum() > 0
    for bad in [(1, 1, 3), (0, 2, 1), (-1, 1, 0), (1.0, 1, 1), (True, 1, 1)]:
        with pytest.raises(ValueError):
            o3.wigner_3j(*bad)
        with pytest.raises(ValueError):
            o3.wigner_3j_sparse(*bad)


def test_wigner_D_is_a_representation(seeded):
    a1 = o3.rand_angles(5, dtype=torch.float64, generator=seeded)
    a2 = o3.rand_angles(5, dtype=torch.float64, generator=seeded)
    R1, R2 = o3.angles_to_matrix(*a1), o3.angles_to_matrix(*a2)
    for l in [0, 1, 2, 3, 5, 8, 12, 16]:
        D1, D2 = o3.wigner_D(l, *a1), o3.wigner_D(l, *a2)
        D12 = o3.wigner_D(l, *o3.matrix_to_angles(R1 @ R2))
        torch.testing.assert_close(D1 @ D2, D12, atol=1e-12, rtol=0)
        eye = torch.eye(2 * l + 1, dtype=torch.float64)
        torch.testing.assert_close(D1 @ D1.transpose(-1, -2), eye.expand_as(D1), atol=1e-13, rtol=0)
        torch.testing.assert_close(o3.wigner_D(l, *o3.identity_angles(dtype=torch.float64)), eye, atol=1e-15,
                                   rtol=0)
        torch.testing.assert_close(o3.wigner_D(l, *o3.inverse_angles(*a1)), D1.transpose(-1, -2), atol=1e-12,
                                   rtol=0)
    torch.testing.assert_close(o3.wigner_D(1, *a1), R1, atol=1e-14, rtol=0)


def test_wigner_D_matches_e3nn(seeded):
    angles = o3.rand_angles(10, dtype=torch.float64, generator=seeded)
    for l in (0, 1, 2, 5, 12):
        # e3nn builds D from float32 generators (torch.sqrt of an integer tensor), so it is only
        # float32-accurate: 1e-7..4e-6 from the exact matrix, which the representation test pins.
        torch.testing.assert_close(o3.wigner_D(l, *angles), e3nn.o3.wigner_D(l, *angles), atol=2e-5, rtol=0)


def test_wigner_D_broadcasts_and_keeps_dtype(seeded):
    alpha = torch.rand(4, 1, dtype=torch.float32, generator=seeded)
    beta = torch.rand(3, dtype=torch.float32, generator=seeded)
    D = o3.wigner_D(2, alpha, beta, 0.3)
    assert D.shape == (4, 3, 5, 5) and D.dtype == torch.float32
    torch.testing.assert_close(D[1, 2], o3.wigner_D(2, alpha[1, 0], beta[2], torch.tensor(0.3)))
    with pytest.raises(ValueError):
        o3.wigner_D(-1, alpha, beta, beta)


def test_rotations_match_e3nn(seeded):
    angles = o3.rand_angles(6, dtype=torch.float64, generator=seeded)
    for ours, theirs in [(o3.matrix_x, e3nn.o3.matrix_x), (o3.matrix_y, e3nn.o3.matrix_y),
                         (o3.matrix_z, e3nn.o3.matrix_z)]:
        torch.testing.assert_close(ours(angles[0]), theirs(angles[0]), atol=0, rtol=0)
    R = o3.angles_to_matrix(*angles)
    torch.testing.assert_close(R, e3nn.o3.angles_to_matrix(*angles), atol=1e-15, rtol=0)
    for ours, theirs in zip(o3.matrix_to_angles(R), e3nn.o3.matrix_to_angles(R)):
        torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=0)
    torch.testing.assert_close(o3.angles_to_matrix(*o3.matrix_to_angles(R)), R, atol=1e-13, rtol=0)
    other = o3.rand_angles(6, dtype=torch.float64, generator=seeded)
    composed = o3.compose_angles(*angles, *other)
    torch.testing.assert_close(o3.angles_to_matrix(*composed), R @ o3.angles_to_matrix(*other), atol=1e-13, rtol=0)
    axis = torch.randn(6, 3, dtype=torch.float64, generator=seeded)
    torch.testing.assert_close(o3.axis_angle_to_matrix(axis, angles[1]), e3nn.o3.axis_angle_to_matrix(axis, angles[1]),
                               atol=1e-14, rtol=0)
    torch.testing.assert_close(o3.axis_angle_to_matrix(axis, angles[1]) @ axis[..., None], axis[..., None],
                               atol=1e-13, rtol=0)
    got_axis, got_angle = o3.matrix_to_axis_angle(o3.axis_angle_to_matrix(axis, angles[1]))
    torch.testing.assert_close(got_angle, angles[1], atol=1e-12, rtol=0)
    torch.testing.assert_close(got_axis, torch.nn.functional.normalize(axis, dim=-1), atol=1e-10, rtol=0)
    xyz = torch.randn(6, 3, dtype=torch.float64, generator=seeded)
    for ours, theirs in zip(o3.xyz_to_angles(xyz), e3nn.o3.xyz_to_angles(xyz)):
        torch.testing.assert_close(ours, theirs, atol=1e-15, rtol=0)
    torch.testing.assert_close(o3.angles_to_xyz(*o3.xyz_to_angles(xyz)), torch.nn.functional.normalize(xyz, dim=-1))


def test_random_rotations(seeded):
    seed = int(torch.randint(0, 2**31, (), generator=seeded))
    torch.manual_seed(seed)
    ours = o3.rand_angles(4, 5)
    torch.manual_seed(seed)
    theirs = e3nn.o3.rand_angles(4, 5)
    for a, b in zip(ours, theirs):  # same draws in the same order as e3nn
        assert torch.equal(a, b)
    R = o3.rand_matrix(1000, dtype=torch.float64, generator=seeded)
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand_as(R))
    torch.testing.assert_close(torch.det(R), torch.ones(1000, dtype=torch.float64))
    # Haar measure: the image of any fixed unit vector is uniform, so its mean is ~0 and E[x x^T] = I/3.
    v = R[:, :, 0]
    assert v.mean(0).abs().max() < 0.15
    assert (v.T @ v / 1000 - torch.eye(3, dtype=torch.float64) / 3).abs().max() < 0.06
    assert all(a.shape == (2, 3) and a.abs().sum() == 0 for a in o3.identity_angles(2, 3))
    with pytest.raises(ValueError, match="proper rotation"):
        o3.matrix_to_angles(-R[:2])
