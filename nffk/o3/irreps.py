"""Irreducible representations of O(3) and their direct sums, with e3nn's conventions.

`Irrep(l, p)` is the (2l+1)-dimensional irrep of degree `l` and parity `p` (+1 even "e",
-1 odd "o"). `Irreps` is a tuple of `MulIr(mul, ir)`: `mul` copies of `ir`, laid out one
copy after the other ("mul_ir" layout), written `"32x0e+16x1o"`.

Both are plain tuples underneath, so they compare, hash and sort like tuples: `Irrep`
sorts by `(l, p)` (`0o < 0e < 1o < 1e < ...`), and an `Irreps` equals any tuple of
`(mul, (l, p))` pairs with the same entries (including e3nn's own `Irreps`).
"""
from __future__ import annotations

import itertools
import numbers
import re
from collections import namedtuple
from typing import Iterable, Iterator, List, Optional, Union

import torch

from nffk.o3 import rotation, wigner

_PARITY_OF_LETTER = {"e": 1, "o": -1}
_LETTER_OF_PARITY = {1: "e", -1: "o"}
_IRREP_FORM = ('"<l><p>" with l a non-negative integer and p one of "e" (even), "o" (odd) or '
               '"y" (the parity (-1)^l of the spherical harmonics), e.g. "1o"')
_IRREPS_FORM = ('"<mul>x<l><p>" terms joined by "+", with mul and l non-negative integers and p one '
                'of "e", "o", "y" (mul may be omitted, meaning 1), e.g. "32x0e+16x1o"')
_IRREP_RE = re.compile(r"^\s*(\d+)\s*([eoy])\s*$")
_MUL_IRREP_RE = re.compile(r"^\s*(?:(\d+)\s*x)?\s*(\d+)\s*([eoy])\s*$")


def _irrep_from_match(l_text: str, p_letter: str) -> "Irrep":
    l = int(l_text)
    p = (-1) ** l if p_letter == "y" else _PARITY_OF_LETTER[p_letter]
    return Irrep(l, p)


class Irrep(tuple):
    """Irrep of O(3): degree `l` >= 0 and parity `p` in {+1, -1}.

    `Irrep(1, -1)`, `Irrep("1o")`, `Irrep("1y")` (parity (-1)^l), `Irrep((1, -1))` and
    `Irrep(Irrep("1o"))` are all the vector irrep `1o`.
    """

    def __new__(cls, l: Union[int, str, tuple, "Irrep"], p: Optional[int] = None):
        if p is None:
            if isinstance(l, Irrep):
                return l
            if isinstance(l, MulIr):
                return l.ir
            if isinstance(l, str):
                match = _IRREP_RE.match(l)
                if match is None:
                    raise ValueError(f'cannot parse irrep "{l}": expected {_IRREP_FORM}')
                return _irrep_from_match(*match.groups())
            if isinstance(l, tuple) and tuple.__len__(l) == 2:  # (also e3nn's Irrep, whose len() raises)
                l, p = tuple.__getitem__(l, 0), tuple.__getitem__(l, 1)
            else:
                raise ValueError(f"cannot interpret {l!r} as an irrep: expected Irrep(l, p), a string like "
                                 f'"1o" or a pair (l, p)')
        if isinstance(l, bool) or not isinstance(l, numbers.Integral) or l < 0:
            raise ValueError(f"irrep degree l must be a non-negative integer, got {l!r}")
        if isinstance(p, bool) or p not in (-1, 1):
            raise ValueError(f"irrep parity p must be +1 (even) or -1 (odd), got {p!r}")
        return super().__new__(cls, (int(l), int(p)))

    @property
    def l(self) -> int:  # noqa: E743
        """Degree of the representation."""
        return self[0]

    @property
    def p(self) -> int:
        """Parity: +1 (even) or -1 (odd)."""
        return self[1]

    @property
    def dim(self) -> int:
        """Dimension 2l+1."""
        return 2 * self.l + 1

    def is_scalar(self) -> bool:
        """True for the invariant scalar `0e`."""
        return self.l == 0 and self.p == 1

    def __repr__(self) -> str:
        return f"{self.l}{_LETTER_OF_PARITY[self.p]}"

    @classmethod
    def iterator(cls, lmax: Optional[int] = None) -> Iterator["Irrep"]:
        """All irreps in the order 0e, 0o, 1o, 1e, 2e, 2o, ... (parity (-1)^l first), up to `lmax`."""
        for l in itertools.count():
            if lmax is not None and l > lmax:
                return
            yield Irrep(l, (-1) ** l)
            yield Irrep(l, -((-1) ** l))

    def __mul__(self, other) -> Iterator["Irrep"]:
        """The irreps in the product `self x other`: l from |l1-l2| to l1+l2, parity p1*p2."""
        other = Irrep(other)
        p = self.p * other.p
        for l in range(abs(self.l - other.l), self.l + other.l + 1):
            yield Irrep(l, p)

    def __rmul__(self, mul) -> "Irreps":
        """`3 * Irrep("1o")` is `Irreps("3x1o")`."""
        if isinstance(mul, bool) or not isinstance(mul, numbers.Integral):
            return NotImplemented
        return Irreps([(int(mul), self)])

    def __add__(self, other) -> "Irreps":
        return Irreps(self) + Irreps(other)

    def __radd__(self, other) -> "Irreps":
        return Irreps(other) + Irreps(self)

    # A tuple's count/index/len/contains make no sense for an irrep; refuse them like e3nn does.
    def count(self, _value):
        raise NotImplementedError

    def index(self, _value):
        raise NotImplementedError

    def __contains__(self, _value):
        raise NotImplementedError

    def __len__(self):
        raise NotImplementedError

    def D_from_angles(self, alpha, beta, gamma, k=None) -> torch.Tensor:
        """`p^k D^l(alpha, beta, gamma)`, shape [..., 2l+1, 2l+1] (`k`: number of inversions)."""
        alpha, beta, gamma = _as_tensors(alpha, beta, gamma)
        if k is None:
            k = torch.zeros_like(alpha)
        alpha, beta, gamma, k = torch.broadcast_tensors(alpha, beta, gamma, torch.as_tensor(k).to(alpha))
        return wigner.wigner_D(self.l, alpha, beta, gamma) * (self.p ** k)[..., None, None]

    def D_from_matrix(self, R: torch.Tensor) -> torch.Tensor:
        """Representation of the orthogonal matrix `R` [..., 3, 3]; improper `R` picks up the parity."""
        angles, k = _angles_and_inversions(R)
        return self.D_from_angles(*angles, k)

    def D_from_axis_angle(self, axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
        """Representation of the rotation by `angle` around `axis` [..., 3]."""
        return self.D_from_angles(*rotation.axis_angle_to_angles(axis, angle))


class MulIr(namedtuple("MulIr", ["mul", "ir"])):
    """`mul` copies of the irrep `ir`; printed `"16x1o"`."""

    __slots__ = ()

    def __new__(cls, mul, ir=None):
        if ir is None:
            mul, ir = mul
        if isinstance(mul, bool) or not isinstance(mul, numbers.Integral) or mul < 0:
            raise ValueError(f"multiplicity must be a non-negative integer, got {mul!r}")
        return super().__new__(cls, int(mul), Irrep(ir))

    @property
    def dim(self) -> int:
        return self.mul * self.ir.dim

    def __repr__(self) -> str:
        return f"{self.mul}x{self.ir}"


IrrepsSort = namedtuple("IrrepsSort", ["irreps", "p", "inv"])


class Irreps(tuple):
    """Direct sum of irreps: a tuple of `MulIr(mul, ir)`.

    Accepts a string `"32x0e + 16x1o"` (empty string: no irreps), an `Irrep`, another
    `Irreps`, or an iterable of `MulIr`, `(mul, ir)` pairs, irrep strings or `Irrep`s.
    """

    def __new__(cls, irreps=None):
        if isinstance(irreps, Irreps):
            return super().__new__(cls, irreps)
        if irreps is None:
            return super().__new__(cls, ())
        if isinstance(irreps, Irrep):
            return super().__new__(cls, (MulIr(1, irreps),))
        if isinstance(irreps, str):
            return super().__new__(cls, _parse_irreps(irreps))
        if isinstance(irreps, MulIr):
            return super().__new__(cls, (irreps,))
        out = []
        try:
            items = list(irreps)
        except TypeError:
            raise ValueError(f"cannot interpret {irreps!r} as irreps: expected a string like "
                             f'"32x0e+16x1o", an Irrep or a list of (mul, irrep) pairs') from None
        for item in items:
            if isinstance(item, (str, Irrep)):
                out.append(MulIr(1, Irrep(item)))
            elif isinstance(item, tuple) and tuple.__len__(item) == 2:
                first, second = tuple.__getitem__(item, 0), tuple.__getitem__(item, 1)
                if isinstance(second, numbers.Integral):  # an (l, p) pair such as e3nn's Irrep
                    out.append(MulIr(1, Irrep(first, second)))
                else:
                    out.append(MulIr(first, second))
            else:
                raise ValueError(f"cannot interpret {item!r} as a (mul, irrep) pair in {irreps!r}")
        return super().__new__(cls, out)

    @staticmethod
    def spherical_harmonics(lmax: int, p: int = -1) -> "Irreps":
        """Irreps of the spherical harmonics up to `lmax`: `1x0e+1x1o+1x2e+...` (parity p^l)."""
        return Irreps([(1, (l, p ** l)) for l in range(lmax + 1)])

    @property
    def dim(self) -> int:
        return sum(mul_ir.dim for mul_ir in self)

    @property
    def num_irreps(self) -> int:
        return sum(mul for mul, _ in self)

    @property
    def ls(self) -> List[int]:
        """The degree of every copy, in order: `Irreps("2x0e+1o").ls == [0, 0, 1]`."""
        return [ir.l for mul, ir in self for _ in range(mul)]

    @property
    def lmax(self) -> int:
        ls = self.ls
        if not ls:
            raise ValueError(f'cannot get lmax of empty irreps "{self}"')
        return max(ls)

    def slices(self) -> List[slice]:
        """Slice of the last dimension occupied by each `MulIr`."""
        out, start = [], 0
        for mul_ir in self:
            out.append(slice(start, start + mul_ir.dim))
            start += mul_ir.dim
        return out

    def count(self, ir) -> int:
        """Total multiplicity of `ir`."""
        ir = Irrep(ir)
        return sum(mul for mul, other in self if other == ir)

    def index(self, _value):
        raise NotImplementedError

    def __contains__(self, ir) -> bool:
        ir = Irrep(ir)
        return any(other == ir for _, other in self)

    def __getitem__(self, i):
        item = super().__getitem__(i)
        return Irreps(item) if isinstance(i, slice) else item

    def __add__(self, other) -> "Irreps":
        return Irreps(tuple(self) + tuple(Irreps(other)))

    def __radd__(self, other) -> "Irreps":
        return Irreps(tuple(Irreps(other)) + tuple(self))

    def __mul__(self, times) -> "Irreps":
        """`Irreps("1o") * 2` repeats the whole sequence: `1x1o+1x1o`."""
        if isinstance(times, Irreps):
            raise NotImplementedError("the product of two Irreps is not an Irreps operation; use "
                                      "nffk.o3.tensor_product_irreps(irreps1, irreps2)")
        if isinstance(times, bool) or not isinstance(times, numbers.Integral):
            return NotImplemented
        return Irreps(tuple(self) * int(times))

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return "+".join(repr(mul_ir) for mul_ir in self)

    def simplify(self) -> "Irreps":
        """Merge neighbouring equal irreps and drop zero multiplicities (does not sort)."""
        out = []
        for mul, ir in self:
            if out and out[-1][1] == ir:
                out[-1] = (out[-1][0] + mul, ir)
            elif mul > 0:
                out.append((mul, ir))
        return Irreps(out)

    def remove_zero_multiplicities(self) -> "Irreps":
        return Irreps([(mul, ir) for mul, ir in self if mul > 0])

    def sort(self) -> IrrepsSort:
        """Stable sort by irrep. Returns `(irreps, p, inv)`: entry `i` moves to `p[i]`, and
        `sorted[j] = self[inv[j]]`."""
        order = sorted(range(len(self)), key=lambda i: (self[i].ir, i))
        inv = tuple(order)
        p = [0] * len(inv)
        for j, i in enumerate(inv):
            p[i] = j
        return IrrepsSort(Irreps([self[i] for i in inv]), tuple(p), inv)

    def regroup(self) -> "Irreps":
        """`sort()` then `simplify()`: each irrep once, in increasing order."""
        return self.sort().irreps.simplify()

    def filter(self, keep=None, *, drop=None, lmax: Optional[int] = None) -> "Irreps":
        """Keep (or drop) the entries whose irrep is in `keep` (`drop`), or with l <= `lmax`.

        `keep`/`drop` may be irreps (string, list) or a predicate on `MulIr`.
        """
        if sum(arg is not None for arg in (keep, drop, lmax)) > 1:
            raise ValueError("give at most one of keep, drop and lmax")
        if lmax is not None:
            return Irreps([mul_ir for mul_ir in self if mul_ir.ir.l <= lmax])
        selector, wanted = (keep, True) if keep is not None else (drop, False)
        if selector is None:
            return self
        if callable(selector) and not isinstance(selector, (Irrep, Irreps)):
            return Irreps([mul_ir for mul_ir in self if bool(selector(mul_ir)) == wanted])
        chosen = _irrep_set(selector)
        return Irreps([mul_ir for mul_ir in self if (mul_ir.ir in chosen) == wanted])

    def randn(self, *size: int, normalization: str = "component", requires_grad: bool = False,
              dtype=None, device=None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Random features; `size` contains one `-1`, replaced by `self.dim`.

        "component": standard normal entries; "norm": each irrep copy has unit norm.
        """
        if list(size).count(-1) != 1:
            raise ValueError(f"size must contain exactly one -1 (the irreps dimension), got {size}")
        axis = size.index(-1)
        before, after = size[:axis], size[axis + 1:]
        if normalization == "component":
            x = torch.randn(*before, self.dim, *after, dtype=dtype, device=device, generator=generator)
        elif normalization == "norm":
            chunks = []
            for mul, ir in self:
                r = torch.randn(*before, mul, ir.dim, *after, dtype=dtype, device=device, generator=generator)
                r = r / r.norm(dim=axis + 1, keepdim=True)
                chunks.append(r.reshape(*before, mul * ir.dim, *after))
            x = torch.cat(chunks, dim=axis) if chunks else torch.zeros(*before, 0, *after, dtype=dtype,
                                                                      device=device)
        else:
            raise ValueError(f'normalization must be "component" or "norm", got {normalization!r}')
        return x.requires_grad_(requires_grad)

    def D_from_angles(self, alpha, beta, gamma, k=None) -> torch.Tensor:
        """Block-diagonal representation, shape [..., dim, dim], parity `p^k` per block."""
        alpha, beta, gamma = _as_tensors(alpha, beta, gamma)
        if k is None:
            k = torch.zeros_like(alpha)
        alpha, beta, gamma, k = torch.broadcast_tensors(alpha, beta, gamma, torch.as_tensor(k).to(alpha))
        out = alpha.new_zeros(*alpha.shape, self.dim, self.dim)
        start = 0
        for mul, ir in self:
            if mul == 0:
                continue
            block = ir.D_from_angles(alpha, beta, gamma, k)
            for _ in range(mul):
                out[..., start:start + ir.dim, start:start + ir.dim] = block
                start += ir.dim
        return out

    def D_from_matrix(self, R: torch.Tensor) -> torch.Tensor:
        """Block-diagonal representation of the orthogonal matrix `R` [..., 3, 3] (parity included)."""
        angles, k = _angles_and_inversions(R)
        return self.D_from_angles(*angles, k)

    def D_from_axis_angle(self, axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
        return self.D_from_angles(*rotation.axis_angle_to_angles(axis, angle))


def tensor_product_irreps(irreps1, irreps2, lmax: Optional[int] = None,
                          filter_ir_out: Optional[Iterable] = None) -> Irreps:
    """All outputs of the full tensor product of `irreps1` and `irreps2`.

    Same as e3nn's `FullTensorProduct(irreps1, irreps2).irreps_out`: inputs are simplified, every
    pair `(mul1 x ir1, mul2 x ir2)` gives `mul1*mul2 x ir` for each `ir` in `ir1 * ir2`, and the
    result is sorted (not merged). `lmax` and `filter_ir_out` (a list of irreps) restrict the outputs.
    """
    irreps1, irreps2 = Irreps(irreps1).simplify(), Irreps(irreps2).simplify()
    allowed = None if filter_ir_out is None else _irrep_set(filter_ir_out)
    out = []
    for mul1, ir1 in irreps1:
        for mul2, ir2 in irreps2:
            for ir in ir1 * ir2:
                if (lmax is None or ir.l <= lmax) and (allowed is None or ir in allowed):
                    out.append((mul1 * mul2, ir))
    return Irreps(out).sort().irreps


def _parse_irreps(text: str) -> List[MulIr]:
    if text.strip() == "":
        return []
    out = []
    for part in text.split("+"):
        match = _MUL_IRREP_RE.match(part)
        if match is None:
            raise ValueError(f'cannot parse irreps "{text}": the term "{part.strip()}" is not valid; '
                             f"expected {_IRREPS_FORM}")
        mul, l_text, p_letter = match.groups()
        out.append(MulIr(1 if mul is None else int(mul), _irrep_from_match(l_text, p_letter)))
    return out


def _irrep_set(irreps) -> set:
    if isinstance(irreps, str):
        irreps = Irreps(irreps)
    if isinstance(irreps, (Irrep, MulIr)):
        return {Irrep(irreps)}
    return {mul_ir.ir if isinstance(mul_ir, MulIr) else Irrep(mul_ir) for mul_ir in irreps}


def _as_tensors(*values):
    tensors = [torch.as_tensor(v) for v in values]
    dtype = torch.promote_types(torch.promote_types(tensors[0].dtype, tensors[1].dtype), tensors[2].dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    return [t.to(dtype) for t in tensors]


def _angles_and_inversions(R: torch.Tensor):
    """Split an orthogonal `R` into Euler angles of `det(R) R` and k = 1 if `R` is improper."""
    d = torch.det(R).sign()
    angles = rotation.matrix_to_angles(d[..., None, None] * R)
    return angles, (1 - d) / 2
