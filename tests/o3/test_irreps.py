"""nffk.o3.Irrep / Irreps against e3nn on randomly generated irreps (fresh seed per test)."""
import random

import e3nn.o3
import pytest
import torch

from nffk import o3


def random_rng(seeded):
    return random.Random(int(torch.randint(0, 2**31, (), generator=seeded)))


def random_irreps_string(rng, max_terms=6, lmax=5):
    """A random irreps string in e3nn's grammar: optional multiplicity, e/o/y parities, spaces."""
    terms = []
    for _ in range(rng.randint(1, max_terms)):
        ir = f"{rng.randint(0, lmax)}{rng.choice('eoy')}"
        mul = rng.choice([None, 0, 1, rng.randint(2, 64)])
        term = ir if mul is None else f"{mul}x{ir}"
        if rng.random() < 0.3:
            term = f" {term} "
        terms.append(term)
    return "+".join(terms)


def test_matches_e3nn_on_random_strings(seeded):
    rng = random_rng(seeded)
    for _ in range(200):
        text = random_irreps_string(rng)
        ours, theirs = o3.Irreps(text), e3nn.o3.Irreps(text)
        assert repr(ours) == repr(theirs), text
        assert ours == theirs and hash(ours) == hash(tuple(theirs))
        assert ours.dim == theirs.dim and ours.num_irreps == theirs.num_irreps and ours.ls == theirs.ls
        assert repr(ours.simplify()) == repr(theirs.simplify())
        assert repr(ours.remove_zero_multiplicities()) == repr(theirs.remove_zero_multiplicities())
        assert repr(ours.regroup()) == repr(theirs.regroup())
        sorted_ours, sorted_theirs = ours.sort(), theirs.sort()
        assert repr(sorted_ours.irreps) == repr(sorted_theirs.irreps)
        assert sorted_ours.p == sorted_theirs.p and sorted_ours.inv == sorted_theirs.inv
        assert ours.slices() == theirs.slices()
        if theirs.ls:
            assert ours.lmax == theirs.lmax
        for ir in e3nn.o3.Irrep.iterator(5):
            assert ours.count(str(ir)) == theirs.count(ir)
            assert (str(ir) in ours) == (ir in theirs)
        i = rng.randrange(len(theirs))
        assert repr(ours[i]) == repr(theirs[i]) and ours[i].dim == theirs[i].dim
        assert ours[i].mul == theirs[i].mul and ours[i].ir == theirs[i].ir
        assert repr(ours[i:]) == repr(theirs[i:]) and isinstance(ours[i:], o3.Irreps)
        other = random_irreps_string(rng)
        assert repr(ours + other) == repr(theirs + e3nn.o3.Irreps(other))
        assert repr(other + ours) == repr(e3nn.o3.Irreps(other) + theirs)
        assert repr(ours * 3) == repr(theirs * 3) and repr(2 * ours) == repr(2 * theirs)
        keep = [str(ir) for ir in e3nn.o3.Irrep.iterator(3) if rng.random() < 0.5]
        assert repr(ours.filter(keep=keep)) == repr(theirs.filter(keep=keep))
        assert repr(ours.filter(drop=keep)) == repr(theirs.filter(drop=keep))
        assert repr(ours.filter(lmax=2)) == repr(theirs.filter(lmax=2))
        # Round trips: from our repr, from e3nn's object, from a list of pairs.
        assert o3.Irreps(repr(ours)) == ours
        assert o3.Irreps(theirs) == ours
        assert o3.Irreps([(mul, (ir.l, ir.p)) for mul, ir in theirs]) == ours


def test_irrep_matches_e3nn(seeded):
    rng = random_rng(seeded)
    for _ in range(100):
        l, letter = rng.randint(0, 9), rng.choice("eoy")
        ours, theirs = o3.Irrep(f"{l}{letter}"), e3nn.o3.Irrep(f"{l}{letter}")
        assert repr(ours) == repr(theirs) and (ours.l, ours.p, ours.dim) == (theirs.l, theirs.p, theirs.dim)
        assert ours.is_scalar() == theirs.is_scalar()
        assert o3.Irrep(ours.l, ours.p) == ours == o3.Irrep(ours) == o3.Irrep((ours.l, ours.p)) == o3.Irrep(theirs)
        other = o3.Irrep(rng.randint(0, 9), rng.choice([1, -1]))
        assert [repr(ir) for ir in ours * other] == [repr(ir) for ir in theirs * e3nn.o3.Irrep(repr(other))]
        assert repr(3 * ours) == repr(3 * theirs) and isinstance(3 * ours, o3.Irreps)
        assert repr(ours + other) == repr(theirs + e3nn.o3.Irrep(repr(other)))
    everything = [o3.Irrep(l, p) for l in range(6) for p in (1, -1)]
    rng.shuffle(everything)
    assert [repr(ir) for ir in sorted(everything)] == [repr(ir) for ir in sorted(e3nn.o3.Irrep(repr(ir))
                                                                                  for ir in everything)]
    assert [repr(ir) for ir in o3.Irrep.iterator(4)] == [repr(ir) for ir in e3nn.o3.Irrep.iterator(4)]
    assert len({o3.Irrep("1o"), o3.Irrep(1, -1), o3.Irrep("1y")}) == 1


def test_constructors_and_empty():
    assert o3.Irreps("") == o3.Irreps() == o3.Irreps([]) == () and repr(o3.Irreps("")) == ""
    assert o3.Irreps("  ").dim == 0
    assert repr(o3.Irreps(o3.Irrep("2e"))) == "1x2e"
    assert repr(o3.Irreps(["1o", o3.Irrep("0e"), (3, "2e"), o3.MulIr(2, o3.Irrep(1, 1))])) == "1x1o+1x0e+3x2e+2x1e"
    assert o3.Irreps(o3.Irreps("3x0e")) == o3.Irreps("3x0e")
    assert o3.Irreps("2x1o")[0] == o3.MulIr(2, "1o") and o3.Irreps("2x1o")[0].dim == 6
    assert repr(o3.Irreps.spherical_harmonics(4)) == repr(e3nn.o3.Irreps.spherical_harmonics(4))
    assert repr(o3.Irreps.spherical_harmonics(3, p=1)) == repr(e3nn.o3.Irreps.spherical_harmonics(3, p=1))
    with pytest.raises(ValueError, match="lmax"):
        o3.Irreps("").lmax
    with pytest.raises(ValueError, match="lmax"):
        o3.Irreps("0x1e").lmax
    assert o3.Irreps("0x1e").D_from_matrix(torch.eye(3)).shape == (0, 0)


@pytest.mark.parametrize("text, bad", [("3x1q", "3x1q"), ("x1e", "x1e"), ("-1e", "-1e"), ("1x-2e", "1x-2e"),
                                       ("abc", "abc"), ("16x1o+", ""), ("1.5e", "1.5e"), ("2x1e+3xx0e", "3xx0e"),
                                       ("1e+2", "2")])
def test_malformed_strings_name_the_bad_part(text, bad):
    with pytest.raises(ValueError) as info:
        o3.Irreps(text)
    message = str(info.value)
    assert f'"{bad}"' in message and '"32x0e+16x1o"' in message
    with pytest.raises(ValueError):
        e3nn.o3.Irreps(text)  # e3nn rejects them too: same grammar


@pytest.mark.parametrize("bad", ["1q", "e", "-1o", "1x1e", "", (1, 2), (-1, 1), 1.5])
def test_malformed_irrep(bad):
    with pytest.raises(ValueError):
        o3.Irrep(bad)


def test_tensor_product_irreps_matches_full_tensor_product(seeded):
    rng = random_rng(seeded)
    for _ in range(8):  # e3nn's FullTensorProduct is slow to build
        a = random_irreps_string(rng, max_terms=4, lmax=3)
        b = random_irreps_string(rng, max_terms=3, lmax=3)
        if not e3nn.o3.Irreps(a).simplify() or not e3nn.o3.Irreps(b).simplify():
            continue
        expected = e3nn.o3.FullTensorProduct(a, b).irreps_out
        assert repr(o3.tensor_product_irreps(a, b)) == repr(expected)
        keep = [ir for ir in e3nn.o3.Irrep.iterator(4) if rng.random() < 0.5]
        expected = e3nn.o3.FullTensorProduct(a, b, filter_ir_out=keep).irreps_out
        assert repr(o3.tensor_product_irreps(a, b, filter_ir_out=[repr(ir) for ir in keep])) == repr(expected)
        assert all(ir.l <= 2 for _, ir in o3.tensor_product_irreps(a, b, lmax=2))
    with pytest.raises(NotImplementedError, match="tensor_product_irreps"):
        o3.Irreps("1o") * o3.Irreps("1o")


def test_D_from_matrix_block_diagonal_with_parity(seeded):
    rng = random_rng(seeded)
    text = random_irreps_string(rng, max_terms=5, lmax=4)
    while o3.Irreps(text).dim == 0:  # e3nn's direct_sum fails on no blocks (ours gives [..., 0, 0])
        text = random_irreps_string(rng, max_terms=5, lmax=4)
    irreps = o3.Irreps(text)
    R = o3.rand_matrix(7, dtype=torch.float64, generator=seeded)
    R = R * torch.tensor([1.0, -1.0] * 3 + [1.0], dtype=torch.float64)[:, None, None]  # some reflections
    ours = irreps.D_from_matrix(R)
    theirs = e3nn.o3.Irreps(text).D_from_matrix(R)
    # e3nn's Wigner D is only float32-accurate (its generators are float32): see test_wigner.py.
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert ours.shape == (7, irreps.dim, irreps.dim)
    # Homomorphism with reflections: D(R1 R2) = D(R1) D(R2), to float64 precision.
    torch.testing.assert_close(irreps.D_from_matrix(R[:-1] @ R[1:]), ours[:-1] @ ours[1:], atol=1e-12, rtol=0)
    # -I acts as the parity on every block; a vector 1o is R itself.
    minus = irreps.D_from_matrix(-torch.eye(3, dtype=torch.float64))
    parities = torch.tensor([ir.p for mul, ir in irreps for _ in range(mul * ir.dim)], dtype=torch.float64)
    torch.testing.assert_close(minus, torch.diag(parities))
    torch.testing.assert_close(o3.Irrep("1o").D_from_matrix(R), R, atol=1e-13, rtol=0)
    torch.testing.assert_close(o3.Irrep("1e").D_from_matrix(R), R * torch.det(R)[:, None, None], atol=1e-13, rtol=0)
    # Angles and axis-angle entry points agree with the matrix one.
    angles = o3.rand_angles(3, dtype=torch.float64, generator=seeded)
    torch.testing.assert_close(irreps.D_from_angles(*angles), irreps.D_from_matrix(o3.angles_to_matrix(*angles)),
                               atol=1e-12, rtol=0)
    axis, angle = torch.randn(3, 3, dtype=torch.float64, generator=seeded), torch.rand(3, dtype=torch.float64)
    torch.testing.assert_close(irreps.D_from_axis_angle(axis, angle),
                               irreps.D_from_matrix(o3.axis_angle_to_matrix(axis, angle)), atol=1e-12, rtol=0)


def test_randn(seeded):
    irreps = o3.Irreps("5x0e+3x1o+2x2e")
    x = irreps.randn(4, -1, 2, generator=seeded)
    assert x.shape == (4, irreps.dim, 2)
    x = irreps.randn(6, -1, normalization="norm", dtype=torch.float64, generator=seeded)
    for s, (mul, ir) in zip(irreps.slices(), irreps):
        norms = x[:, s].reshape(6, mul, ir.dim).norm(dim=-1)
        torch.testing.assert_close(norms, torch.ones_like(norms))
    with pytest.raises(ValueError, match="normalization"):
        irreps.randn(-1, normalization="unit")
    with pytest.raises(ValueError, match="-1"):
        irreps.randn(3, 4)
