"""Random irreps and tensor-product configurations for tests (of nffk and of new backends).

Everything draws from an explicit `torch.Generator`, so a failing case can be replayed from its seed.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from nffk.o3 import Irrep, Irreps
from nffk.ops import _outputs
from nffk.ops.tensor_product import MODES


def _randint(gen: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high]."""
    return int(torch.randint(low, high + 1, (), generator=gen))


def _choice(gen: torch.Generator, options):
    return options[_randint(gen, 0, len(options) - 1)]


def random_irreps(gen: torch.Generator, lmax: int = 3, max_mul: int = 4, max_terms: int = 4,
                  min_terms: int = 1) -> Irreps:
    """Irreps with random multiplicities (possibly repeated irreps, unsorted, parity both ways)."""
    terms = [(_randint(gen, 1, max_mul), Irrep(_randint(gen, 0, lmax), _choice(gen, (1, -1))))
             for _ in range(_randint(gen, min_terms, max_terms))]
    return Irreps(terms)


@dataclass
class TensorProductConfig:
    irreps_in1: Irreps
    irreps_in2: Irreps
    irreps_out: Irreps
    instructions: list
    options: dict = field(default_factory=dict)  # normalisations and variances

    def __repr__(self):
        return (f"TensorProductConfig({self.irreps_in1} x {self.irreps_in2} -> {self.irreps_out}, "
                f"{self.instructions}, {self.options})")


def random_tensor_product(gen: torch.Generator, modes=MODES, lmax: int = 3, max_mul: int = 4,
                          max_paths: int = 6, random_options: bool = True) -> TensorProductConfig:
    """A random valid tensor product: paths of the given connection modes, outputs shared by
    several paths where multiplicities allow, unused outputs, random path weights, and (with
    `random_options`) random normalisations and variances."""
    modes = list(modes)
    while True:
        uniform = any(m in ("uuw", "uuu") for m in modes)
        irreps1 = random_irreps(gen, lmax, max_mul)
        # uu* modes pair equal multiplicities: give the second input the first one's multiplicities.
        irreps2 = (Irreps([(mul, Irrep(_randint(gen, 0, lmax), _choice(gen, (1, -1)))) for mul, _ in irreps1])
                   if uniform else random_irreps(gen, lmax, max_mul, max_terms=3))
        outputs, instructions = [], []
        for _ in range(_randint(gen, 1, max_paths)):
            i1, i2 = _randint(gen, 0, len(irreps1) - 1), _randint(gen, 0, len(irreps2) - 1)
            (mul1, ir1), (mul2, ir2) = irreps1[i1], irreps2[i2]
            mode = _choice(gen, modes)
            if mode in ("uuw", "uuu") and mul1 != mul2:
                continue
            ir_out = _choice(gen, list(ir1 * ir2))
            mul_out = {"uvu": mul1, "uvv": mul2, "uuu": mul1, "uvuv": mul1 * mul2}.get(mode, _randint(gen, 1, max_mul))
            # Reuse an existing output block when it fits, so some outputs sum several paths.
            reuse = [k for k, (m, ir) in enumerate(outputs) if ir == ir_out and m == mul_out]
            if reuse and _randint(gen, 0, 1):
                i_out = _choice(gen, reuse)
            else:
                outputs.append((mul_out, ir_out))
                i_out = len(outputs) - 1
            has_weight = mode in ("uvw", "uuw") or bool(_randint(gen, 0, 3))
            path_weight = 0.5 + float(torch.rand((), generator=gen, dtype=torch.float64))
            instructions.append((i1, i2, i_out, mode, has_weight, path_weight))
        if not instructions:
            continue
        if _randint(gen, 0, 3) == 0:  # an output block no path writes: must come out as zeros
            outputs.append((_randint(gen, 1, max_mul), Irrep(_randint(gen, 0, lmax), _choice(gen, (1, -1)))))
        irreps_out = Irreps(outputs)
        options = {}
        if random_options:
            options["irrep_normalization"] = _choice(gen, ("component", "norm", "none"))
            options["path_normalization"] = _choice(gen, ("element", "path", "none"))
            if _randint(gen, 0, 1):
                options["in1_var"] = [0.5 + float(torch.rand((), generator=gen)) for _ in irreps1]
                options["out_var"] = [0.5 + float(torch.rand((), generator=gen)) for _ in irreps_out]
        return TensorProductConfig(irreps1, irreps2, irreps_out, instructions, options)


# (irreps_in1, irreps_in2, irreps_out, instructions) of plans with output blocks that the cpu
# backend's direct kernels take (csrc/cpu/tp_direct.h: one uvu path with one x2 channel, channels a
# multiple of the vector width; up to 7 components interleaved in registers, more through register
# transposes), next to blocks that are not theirs (8 channels in float32, several paths into one
# block), unweighted paths among them.
DIRECT_PLANS = [
    ("16x0e+32x1o+16x2e", "0e+1o+2e", "16x0e+32x1e+32x3o+16x3o", [
        (0, 0, 0, "uvu", True), (1, 1, 1, "uvu", True), (1, 2, 2, "uvu", False), (2, 1, 3, "uvu", True)]),
    ("32x0e+16x1o+8x1e+16x3o", "0e+1o+3o", "32x0e+16x1o+8x2o+16x2e+16x4e+16x2e", [
        (0, 0, 0, "uvu", True), (1, 0, 1, "uvu", True), (1, 0, 1, "uvu", True), (2, 1, 2, "uvu", True),
        (1, 1, 3, "uvu", True), (3, 2, 4, "uvu", True), (3, 1, 5, "uvu", False)]),
    ("16x5o+32x6e", "1o+0e", "16x6e+16x5e+32x6e", [(0, 0, 0, "uvu", True), (0, 0, 1, "uvu", True),
                                                   (1, 1, 2, "uvu", True)]),
    # uvw paths of 9 and 13 components: the register-transposed weight contraction (partial groups
    # of channels on both sides, two x2 channels)
    ("17x5o+5x4e", "1o+2x0e", "9x6e+20x4e", [(0, 0, 0, "uvw", True), (1, 1, 1, "uvw", True)]),
]


@contextlib.contextmanager
def poisoned_outputs():
    """Inside this context every output buffer nffk hands to a compiled kernel starts as NaN, so an
    element the kernel does not write shows up as NaN instead of passing silently as zero."""
    previous = _outputs.set_poison(True)
    try:
        yield
    finally:
        _outputs.set_poison(previous)

# ---------------------------------------------------------------------------------------------
# A toy force-field dataset: small random molecules under a Morse pair potential, exact forces.
# ---------------------------------------------------------------------------------------------
TOY_ELEMENTS = (1, 6, 8)


def toy_structures(num_structures: int, seed: int = 0, min_atoms: int = 3, max_atoms: int = 7,
                   conformers: int = 2) -> list:
    """`Structure`s of random H/C/O clusters (atoms at least 0.9 Å apart) with the energy and
    forces of a Morse pair potential (D = 0.5 eV, a = 1.5 / Å, r0 = 1.1-1.5 Å by element pair)
    plus -10 Z eV per atom; `conformers` consecutive structures share a molecule id and a
    composition. Deterministic from `seed`; float64 labels from torch autograd."""
    import numpy as np

    from nffk.data.structure import Structure

    rng = np.random.default_rng(seed)
    structures = []
    for s in range(num_structures):
        if s % conformers == 0:
            numbers = rng.choice(TOY_ELEMENTS, size=int(rng.integers(min_atoms, max_atoms + 1)))
        positions = _spread_points(rng, len(numbers))
        x = torch.tensor(positions, dtype=torch.float64, requires_grad=True)
        energy = _morse_energy(x, torch.as_tensor(numbers)) - 10.0 * float(numbers.sum())
        (gradient,) = torch.autograd.grad(energy, x)
        structures.append(Structure(numbers=numbers.astype(np.int64), positions=positions, energy=float(energy.detach()),
                                    forces=(-gradient).numpy(), molecule=s // conformers))
    return structures


def _spread_points(rng, n: int):
    import numpy as np

    points = []
    while len(points) < n:
        candidate = rng.uniform(-1.6, 1.6, size=3)
        if all(np.linalg.norm(candidate - p) > 0.9 for p in points):
            points.append(candidate)
    return np.array(points, dtype=np.float64)


def _morse_energy(x: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
    i, j = torch.triu_indices(len(numbers), len(numbers), offset=1)
    r = (x[i] - x[j]).norm(dim=-1)
    r0 = 1.1 + 0.05 * (numbers[i] + numbers[j]).to(torch.float64) / 2
    decay = torch.exp(-1.5 * (r - r0))
    return (0.5 * (decay * decay - 2 * decay)).sum()


def toy_dataset(root, num_structures: int = 96, seed: int = 0, **options):
    """A dataset folder (as `nffk.data.load_dataset` reads) of `toy_structures`; returns its path."""
    from nffk.data import build_dataset

    return build_dataset(toy_structures(num_structures, seed, **options), root, seed=seed,
                         info={"source": "nffk.testing.toy_dataset (Morse pair potential)"}, overwrite=True)


def assert_thread_count_independent(compute, thread_counts=(1, 2, 3)):
    """Calls compute() under each torch thread count and asserts that the results (tensors, or
    nested tuples/lists of tensors and None) are bitwise equal: nffk's kernels promise results
    independent of the thread count."""
    previous, results = torch.get_num_threads(), []
    try:
        for threads in thread_counts:
            torch.set_num_threads(threads)
            results.append(compute())
    finally:
        torch.set_num_threads(previous)
    for other in results[1:]:
        _assert_bitwise_equal(results[0], other)


def _assert_bitwise_equal(a, b):
    if isinstance(a, (tuple, list)):
        assert isinstance(b, (tuple, list)) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_bitwise_equal(x, y)
    elif a is None:
        assert b is None
    else:
        assert torch.equal(a, b)
