"""Clebsch–Gordan tensor products: a backend-neutral plan, a sparse reference, custom ops.

A tensor product is trilinear in its three inputs, out = F(x1, x2, w). Its vector-Jacobian
products are trilinear as well:

    vjp_x1(g, x2, w) = (dF/dx1)^T g,   vjp_x2(x1, g, w) = (dF/dx2)^T g,   vjp_w(x1, x2, g) = (dF/dw)^T g

and the derivative of any of these four maps is again one of the four (see `_backward_*`
below). So every backend implements exactly four kernels, and backward, double backward
(force training) and any higher derivative are compositions of them (the cpu backend also runs
two or three vjps of the same g in one pass where autograd does not record them: `_vjps`). One
subtlety: paths without weights do not depend on w, so the derivative of vjp_w reuses the other
kernels restricted to the weighted paths (`weighted_only=True`).

Conventions are e3nn's: `mul_ir` layout of inputs and outputs, instruction tuples
`(i_in1, i_in2, i_out, connection_mode, has_weight[, path_weight])`, the flat weight layout
(instructions with weights, in order, each flattened from its `path_shape`), and the
`irrep_normalization` / `path_normalization` / variance options.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch

from nffk import backends
from nffk.ops import _autograd, _outputs, _plans
from nffk.o3 import Irreps, wigner_3j_sparse

MODES = ("uvw", "uvu", "uvv", "uuw", "uuu", "uvuv")
# Channel letters of (x1, x2, out, weight) for each connection mode, as einsum subscripts.
MODE_LETTERS = {
    "uvw": ("u", "v", "w", "uvw"),
    "uvu": ("u", "v", "u", "uv"),
    "uvv": ("u", "v", "v", "uv"),
    "uuw": ("u", "u", "w", "uw"),
    "uuu": ("u", "u", "u", "u"),
    "uvuv": ("u", "v", "uv", "uv"),
}
# Columns of the int64 path table handed to compiled kernels (see TensorProductPlan.kernel_tables).
PATH_FIELDS = ("mode", "l1", "l2", "l3", "mul1", "mul2", "mul_out", "offset1", "offset2", "offset_out",
               "weight_offset", "has_weight", "cg_begin", "cg_end")


class Instruction(NamedTuple):
    """One path, with e3nn's field names (path_weight is e3nn's final normalised coefficient)."""
    i_in1: int
    i_in2: int
    i_out: int
    connection_mode: str
    has_weight: bool
    path_weight: float
    path_shape: tuple


@dataclass(frozen=True)
class Path:
    """Everything a kernel needs about one instruction, with offsets into the flat tensors."""
    mode: str
    l1: int
    l2: int
    l3: int
    mul1: int
    mul2: int
    mul_out: int
    offset1: int
    offset2: int
    offset_out: int
    weight_offset: int
    weight_shape: tuple
    has_weight: bool
    coefficient: float  # sqrt of e3nn's alpha: normalisation x variances x path_weight
    cg_begin: int  # this path's rows of plan.cg_index / plan.cg_value
    cg_end: int

    @property
    def weight_numel(self) -> int:
        return math.prod(self.weight_shape) if self.has_weight else 0

    def muls(self, letters: str) -> tuple:
        """Channel sizes of a block whose channel letters are `letters` (e.g. 'uv')."""
        size = {"u": self.mul1, "v": self.mul2, "w": self.mul_out}
        return tuple(size[c] for c in letters)


def _parse_irreps(irreps, name: str) -> Irreps:
    try:
        return Irreps(irreps)
    except (ValueError, TypeError, AssertionError) as err:
        raise ValueError(f"{name}: could not parse {irreps!r} as irreps (expected e.g. '32x0e+16x1o'): {err}") \
            from None


def _variances(values, irreps: Irreps, name: str) -> list:
    if values is None:
        return [1.0] * len(irreps)
    values = [float(v) for v in values]
    if len(values) != len(irreps):
        raise ValueError(f"{name} must have one entry per irrep of {irreps} ({len(irreps)}), got {len(values)}")
    return values


class TensorProductPlan:
    """Built once from irreps and instructions; shared by every backend.

    Holds the paths with their offsets, the CG non-zeros of all paths concatenated
    (`cg_index` [nnz, 3] of (m1, m2, m3) and `cg_value` [nnz], exact float64), the weight
    layout, e3nn's normalisation constants and the FLOP and byte counts per batch element.
    """

    def __init__(self, irreps_in1, irreps_in2, irreps_out, instructions: Sequence, in1_var=None, in2_var=None,
                 out_var=None, irrep_normalization: str | None = None, path_normalization: str | None = None):
        self.irreps_in1 = _parse_irreps(irreps_in1, "irreps_in1")
        self.irreps_in2 = _parse_irreps(irreps_in2, "irreps_in2")
        self.irreps_out = _parse_irreps(irreps_out, "irreps_out")
        irrep_normalization = "component" if irrep_normalization is None else irrep_normalization
        path_normalization = "element" if path_normalization is None else path_normalization
        if irrep_normalization not in ("component", "norm", "none"):
            raise ValueError(f"irrep_normalization must be 'component', 'norm' or 'none', got {irrep_normalization!r}")
        if path_normalization not in ("element", "path", "none"):
            raise ValueError(f"path_normalization must be 'element', 'path' or 'none', got {path_normalization!r}")
        self.irrep_normalization = irrep_normalization
        self.path_normalization = path_normalization
        raw = [self._check_instruction(k, ins) for k, ins in enumerate(instructions)]
        in1_var = _variances(in1_var, self.irreps_in1, "in1_var")
        in2_var = _variances(in2_var, self.irreps_in2, "in2_var")
        out_var = _variances(out_var, self.irreps_out, "out_var")

        offsets1, offsets2, offsets_out = (_offsets(self.irreps_in1), _offsets(self.irreps_in2),
                                           _offsets(self.irreps_out))
        self.instructions, self.paths = [], []
        cg_index, cg_value = [], []
        nnz = weight_offset = 0
        for i1, i2, io, mode, has_weight, path_weight in raw:
            (mul1, ir1), (mul2, ir2), (mul_out, ir_out) = self.irreps_in1[i1], self.irreps_in2[i2], self.irreps_out[io]
            alpha = self._alpha(raw, (i1, i2, io, mode), in1_var, in2_var) * out_var[io] * path_weight
            coefficient = math.sqrt(alpha)
            shape = _path_shape(mode, mul1, mul2, mul_out)
            index, value = wigner_3j_sparse(ir1.l, ir2.l, ir_out.l)
            cg_index.append(torch.as_tensor(index, dtype=torch.int64).reshape(-1, 3))
            cg_value.append(torch.as_tensor(value, dtype=torch.float64).reshape(-1))
            self.paths.append(Path(mode, ir1.l, ir2.l, ir_out.l, mul1, mul2, mul_out, offsets1[i1], offsets2[i2],
                                   offsets_out[io], weight_offset, shape, has_weight, coefficient,
                                   nnz, nnz + cg_value[-1].numel()))
            self.instructions.append(Instruction(i1, i2, io, mode, has_weight, coefficient, shape))
            nnz += cg_value[-1].numel()
            weight_offset += math.prod(shape) if has_weight else 0
        self.cg_index = torch.cat(cg_index) if cg_index else torch.zeros(0, 3, dtype=torch.int64)
        self.cg_value = torch.cat(cg_value) if cg_value else torch.zeros(0, dtype=torch.float64)
        self.weight_numel = weight_offset
        self.dim_in1, self.dim_in2, self.dim_out = self.irreps_in1.dim, self.irreps_in2.dim, self.irreps_out.dim
        self._tables = {}
        self.id = _plans.register(self)

    # -- construction helpers -------------------------------------------------------------
    def _check_instruction(self, k: int, ins) -> tuple:
        ins = tuple(ins)
        if len(ins) not in (5, 6):
            raise ValueError(f"instructions[{k}] must be (i_in1, i_in2, i_out, connection_mode, has_weight"
                             f"[, path_weight]), got {ins!r}")
        i1, i2, io, mode, has_weight = ins[:5]
        path_weight = float(ins[5]) if len(ins) == 6 else 1.0
        for name, i, irreps in (("i_in1", i1, self.irreps_in1), ("i_in2", i2, self.irreps_in2),
                                ("i_out", io, self.irreps_out)):
            if not isinstance(i, int) or not 0 <= i < len(irreps):
                raise ValueError(f"instructions[{k}]: {name}={i!r} is not an index of {irreps} "
                                 f"(0..{len(irreps) - 1})")
        if mode not in MODES:
            raise ValueError(f"instructions[{k}]: connection_mode must be one of {MODES}, got {mode!r}")
        (mul1, ir1), (mul2, ir2), (mul_out, ir_out) = self.irreps_in1[i1], self.irreps_in2[i2], self.irreps_out[io]
        if ir1.p * ir2.p != ir_out.p:
            raise ValueError(f"instructions[{k}]: {ir1} x {ir2} -> {ir_out} breaks parity "
                             f"(the output of {ir1} x {ir2} has parity {ir1.p * ir2.p})")
        if not abs(ir1.l - ir2.l) <= ir_out.l <= ir1.l + ir2.l:
            raise ValueError(f"instructions[{k}]: {ir1} x {ir2} -> {ir_out} violates |l1-l2| <= l_out <= l1+l2")
        expected = {"uvu": mul1, "uvv": mul2, "uuu": mul1, "uvuv": mul1 * mul2}.get(mode)
        if expected is not None and mul_out != expected:
            raise ValueError(f"instructions[{k}]: mode {mode!r} needs the output multiplicity to be {expected}, "
                             f"got {mul_out}x{ir_out}")
        if mode in ("uuw", "uuu") and mul1 != mul2:
            raise ValueError(f"instructions[{k}]: mode {mode!r} needs equal input multiplicities, got {mul1} and {mul2}")
        if mode in ("uvw", "uuw") and not has_weight:
            raise ValueError(f"instructions[{k}]: mode {mode!r} mixes channels and needs has_weight=True")
        return i1, i2, io, mode, bool(has_weight), path_weight

    def _alpha(self, raw, ins, in1_var, in2_var) -> float:
        """e3nn's normalisation of one path (before out_var and path_weight)."""
        i1, i2, io, mode = ins
        ir_out = self.irreps_out[io].ir
        alpha = {"component": ir_out.dim, "norm": self.irreps_in1[i1].ir.dim * self.irreps_in2[i2].ir.dim,
                 "none": 1}[self.irrep_normalization]
        if self.path_normalization == "element":
            x = sum(in1_var[j1] * in2_var[j2] * self._fan_in(j1, j2, jo, m) for j1, j2, jo, m, _, _ in raw if jo == io)
        elif self.path_normalization == "path":
            x = in1_var[i1] * in2_var[i2] * self._fan_in(i1, i2, io, mode) * sum(1 for r in raw if r[2] == io)
        else:
            x = 1
        return alpha / x if x > 0 else alpha

    def _fan_in(self, i1, i2, io, mode) -> int:
        mul1, mul2 = self.irreps_in1[i1].mul, self.irreps_in2[i2].mul
        return {"uvw": mul1 * mul2, "uvu": mul2, "uvv": mul1, "uuw": mul1, "uuu": 1, "uvuv": 1}[mode]

    # -- accounting -------------------------------------------------------------------------
    @property
    def flops_per_element(self) -> int:
        """Multiply-adds counted as 2 FLOPs: CG contraction (3 per non-zero and channel pair:
        product, coefficient, accumulation) plus the weighting of each output component."""
        total = 0
        for p in self.paths:
            nnz, d3 = p.cg_end - p.cg_begin, 2 * p.l3 + 1
            pairs = p.mul1 if p.mode in ("uuw", "uuu") else p.mul1 * p.mul2
            weighting = 2 * d3 * (pairs * p.mul_out if p.mode in ("uvw", "uuw") else pairs)
            total += 3 * nnz * pairs + (weighting if p.has_weight else d3 * pairs)
        return total

    def bytes_per_element(self, dtype=torch.float32, shared_weights=True) -> int:
        """Bytes a kernel must move per batch element: inputs read once, output written once."""
        values = self.dim_in1 + self.dim_in2 + self.dim_out + (0 if shared_weights else self.weight_numel)
        return values * torch.empty((), dtype=dtype).element_size()

    # -- kernel-facing tables ---------------------------------------------------------------
    def kernel_tables(self, device, dtype) -> dict:
        """Paths as an int64 table with columns PATH_FIELDS, coefficients and CG non-zeros,
        cached per device and dtype (the form compiled kernels read)."""
        key = (torch.device(device), dtype)
        if key not in self._tables:
            rows = [[MODES.index(p.mode), p.l1, p.l2, p.l3, p.mul1, p.mul2, p.mul_out, p.offset1, p.offset2,
                     p.offset_out, p.weight_offset, int(p.has_weight), p.cg_begin, p.cg_end] for p in self.paths]
            self._tables[key] = {
                "paths": torch.tensor(rows, dtype=torch.int64).reshape(-1, len(PATH_FIELDS)).to(device),
                "coefficients": torch.tensor([p.coefficient for p in self.paths], dtype=torch.float64)
                .to(device=device, dtype=dtype),
                "cg_index": self.cg_index.to(device),
                "cg_value": self.cg_value.to(device=device, dtype=dtype),
            }
        return self._tables[key]

    def __repr__(self) -> str:
        return (f"TensorProductPlan({self.irreps_in1} x {self.irreps_in2} -> {self.irreps_out} | "
                f"{len(self.paths)} paths | {self.weight_numel} weights | {self.cg_value.numel()} CG non-zeros)")


def _offsets(irreps: Irreps) -> list:
    offsets, total = [], 0
    for mul, ir in irreps:
        offsets.append(total)
        total += mul * ir.dim
    return offsets


def _path_shape(mode, mul1, mul2, mul_out) -> tuple:
    return {"uvw": (mul1, mul2, mul_out), "uvu": (mul1, mul2), "uvv": (mul1, mul2), "uuw": (mul1, mul_out),
            "uuu": (mul1,), "uvuv": (mul1, mul2)}[mode]


# ---------------------------------------------------------------------------------------------
# Reference backend: per path, gather the CG non-zeros' components, contract channels with one
# einsum, scatter onto the produced tensor. Memory per chunk of the batch is bounded, so the
# whole call is O(batch x (inputs + output)) and never forms a dense CG or outer product.
# ---------------------------------------------------------------------------------------------
_SLOT_COLUMN = {"x1": 0, "x2": 1, "out": 2}  # which column of cg_index indexes each slot
_REFERENCE_CHUNK_ELEMENTS = 1 << 24  # intermediate floats per chunk


def _slot_letters(path: Path, slot: str) -> str:
    x1, x2, out, weight = MODE_LETTERS[path.mode]
    return {"x1": x1, "x2": x2, "out": out, "w": weight}[slot]


def _slot_layout(path: Path, slot: str) -> tuple:
    """(offset, degree l) of this path's block in the flat tensor of `slot`."""
    return {"x1": (path.offset1, path.l1), "x2": (path.offset2, path.l2), "out": (path.offset_out, path.l3)}[slot]


def _block(flat: torch.Tensor, path: Path, slot: str) -> torch.Tensor:
    """View [batch, *channels, 2l+1] of this path's block of a flat [batch, dim] tensor."""
    offset, l = _slot_layout(path, slot)
    muls = path.muls(_slot_letters(path, slot))
    return flat[:, offset:offset + math.prod(muls) * (2 * l + 1)].view(flat.shape[0], *muls, 2 * l + 1)


def _reference_chunk(plan: TensorProductPlan, produce: str, tensors: dict, shared: bool, weighted_only: bool,
                     result: torch.Tensor):
    """Adds the `produce` slot ('x1', 'x2', 'out' or 'w') computed from the other slots into `result`."""
    for path in plan.paths:
        if path.cg_begin == path.cg_end or 0 in (path.mul1, path.mul2, path.mul_out):
            continue
        if (produce == "w" or weighted_only) and not path.has_weight:
            continue
        index = plan.cg_index[path.cg_begin:path.cg_end].to(result.device)
        cg = plan.cg_value[path.cg_begin:path.cg_end].to(result) * path.coefficient
        operands, subscripts = [cg], ["n"]
        for slot in ("x1", "x2", "out"):
            if slot != produce:
                operands.append(_block(tensors[slot], path, slot)[..., index[:, _SLOT_COLUMN[slot]]])
                subscripts.append("e" + _slot_letters(path, slot) + "n")
        batch = "" if shared else "e"
        if produce == "w":
            contribution = torch.einsum(",".join(subscripts) + "->" + batch + _slot_letters(path, "w"), *operands)
            result[..., path.weight_offset:path.weight_offset + path.weight_numel] += \
                contribution.reshape(*result.shape[:-1], path.weight_numel)
            continue
        if path.has_weight:
            weight = tensors["w"][..., path.weight_offset:path.weight_offset + path.weight_numel]
            operands.append(weight.reshape(*weight.shape[:-1], *path.weight_shape))
            subscripts.append(batch + _slot_letters(path, "w"))
        produced = _slot_letters(path, produce)
        for letter in set(produced) - set("".join(subscripts)):
            # e.g. d/dx1 of an unweighted 'uvv' path does not depend on u: broadcast over it.
            operands.append(cg.new_ones(path.muls(letter)))
            subscripts.append(letter)
        contribution = torch.einsum(",".join(subscripts) + "->e" + produced + "n", *operands)
        _block(result, path, produce).index_add_(-1, index[:, _SLOT_COLUMN[produce]], contribution)


def _reference(plan: TensorProductPlan, produce: str, tensors: dict, shared: bool,
               weighted_only: bool = False) -> torch.Tensor:
    any_input = next(t for t in tensors.values() if t is not None)
    batch = next(t.shape[0] for slot, t in tensors.items() if slot != "w")
    dims = {"x1": plan.dim_in1, "x2": plan.dim_in2, "out": plan.dim_out, "w": plan.weight_numel}
    if produce == "w" and shared:
        result = any_input.new_zeros(plan.weight_numel)
    else:
        result = any_input.new_zeros(batch, dims[produce])
    per_element = max([p.mul1 * p.mul2 * p.mul_out * (p.cg_end - p.cg_begin) for p in plan.paths] or [1])
    chunk = max(1, _REFERENCE_CHUNK_ELEMENTS // max(per_element, 1))
    for start in range(0, batch, chunk):
        part = {slot: (t if slot == "w" and shared else t[start:start + chunk]) for slot, t in tensors.items()}
        _reference_chunk(plan, produce, part, shared, weighted_only, result if produce == "w" and shared
                         else result[start:start + chunk])
    return result


class ReferenceKernels:
    """The four kernels in pure torch: the oracle every other backend is tested against.

    `weighted_only` restricts a kernel to the paths that have weights; `w.dim() == 1` means
    one set of weights shared by the batch, `[batch, weight_numel]` one set per element."""

    @staticmethod
    def forward(plan, x1, x2, w, weighted_only):
        return _reference(plan, "out", {"x1": x1, "x2": x2, "w": w}, w.dim() == 1, weighted_only)

    @staticmethod
    def vjp_x1(plan, g, x2, w, weighted_only):
        return _reference(plan, "x1", {"out": g, "x2": x2, "w": w}, w.dim() == 1, weighted_only)

    @staticmethod
    def vjp_x2(plan, x1, g, w, weighted_only):
        return _reference(plan, "x2", {"x1": x1, "out": g, "w": w}, w.dim() == 1, weighted_only)

    @staticmethod
    def vjp_w(plan, x1, x2, g, shared):
        return _reference(plan, "w", {"x1": x1, "x2": x2, "out": g}, shared)


# ---------------------------------------------------------------------------------------------
# CPU backend: C++/OpenMP kernels (csrc/cpu/tensor_product.cpp, element-level arithmetic in
# csrc/include/nffk/tensor_product.h) for plans made of uvu and uvw paths, float32 and float64.
# ---------------------------------------------------------------------------------------------
CPU_MODES = ("uvu", "uvw")
CPU_DTYPES = (torch.float32, torch.float64)


def _cpu(kernel, plan, inputs, out_shape, *flags):
    """Runs one compiled kernel on contiguous inputs into a fresh output buffer (every element written)."""
    tables = plan.kernel_tables(inputs[0].device, inputs[0].dtype)
    out = _outputs.new(out_shape, inputs[0])
    kernel(*(t.contiguous() for t in inputs), tables["paths"], tables["coefficients"], tables["cg_index"],
           tables["cg_value"], *flags, out)
    return out


class CpuKernels:
    """The four kernels of the cpu backend (same contract as ReferenceKernels)."""

    @staticmethod
    def forward(plan, x1, x2, w, weighted_only):
        return _cpu(torch.ops.nffk_C.tp_forward, plan, (x1, x2, w), (x1.shape[0], plan.dim_out), weighted_only)

    @staticmethod
    def vjp_x1(plan, g, x2, w, weighted_only):
        return _cpu(torch.ops.nffk_C.tp_vjp_x1, plan, (g, x2, w), (g.shape[0], plan.dim_in1), weighted_only)

    @staticmethod
    def vjp_x2(plan, x1, g, w, weighted_only):
        return _cpu(torch.ops.nffk_C.tp_vjp_x2, plan, (x1, g, w), (x1.shape[0], plan.dim_in2), weighted_only)

    @staticmethod
    def vjp_w(plan, x1, x2, g, shared):
        shape = (plan.weight_numel,) if shared else (x1.shape[0], plan.weight_numel)
        return _cpu(torch.ops.nffk_C.tp_vjp_w, plan, (x1, x2, g), shape)

    @staticmethod
    def vjps(plan, x1, x2, w, g, need, weighted_only):
        """(vjp_x1(g, x2, w), vjp_x2(x1, g, w), vjp_w(x1, x2, g)) where `need` says (else None), in
        one pass over the batch: each tile's inputs are read from memory once for all three, and
        where every path is weighted vjp_x1 and vjp_w share one contraction with g."""
        x1, x2, w, g = (t.contiguous() for t in (x1, x2, w, g))
        tables = plan.kernel_tables(x1.device, x1.dtype)
        outs = [_outputs.new(like.shape, like) if wanted else like.new_empty(0)
                for like, wanted in zip((x1, x2, w), need)]
        torch.ops.nffk_C.tp_vjp(x1, x2, w, g, tables["paths"], tables["coefficients"], tables["cg_index"],
                                tables["cg_value"], weighted_only, *outs)
        return tuple(out if wanted else None for out, wanted in zip(outs, need))


# ---------------------------------------------------------------------------------------------
# CUDA backend: csrc/cuda/tensor_product.cu (element-level arithmetic again from
# csrc/include/nffk/tensor_product.h), one thread per (row, output channel). Its tables (the
# "program") are built here once per plan, device and dtype and stay in device memory, so a call
# copies nothing to the device and never waits for it (CUDA-graph capture works).
# ---------------------------------------------------------------------------------------------
CUDA_MODES = ("uvu", "uvw")
CUDA_DTYPES = (torch.float32, torch.float64)
CUDA_LMAX = 6  # csrc/cuda/launchers.h kTPMaxD = 2 * 6 + 1
# Entries of the layout list handed with the program (csrc/cuda/ops.cpp enum Layout).
CUDA_LAYOUT = ("paths", "pairs", "cg_j", "out_segments", "out_group", "out_slots", "out_num_slots", "x1_segments",
               "x1_group", "x1_slots", "x1_num_slots", "x2_segments", "x2_group", "x2_slots", "x2_num_slots",
               "weight_slots", "dim1", "dim2", "dim_out", "weight_numel", "max_d")


def _cuda_supports(plan: TensorProductPlan) -> bool:
    return all(p.mode in CUDA_MODES and max(p.l1, p.l2, p.l3) <= CUDA_LMAX for p in plan.paths)


def _role_tables(kept: list, block, dim: int) -> tuple:
    """Segments [offset, mul, d, group_begin, group_end] covering a row of `dim` (the blocks the
    kept paths produce, plus the gaps between them as d = 1 segments with no paths), the paths
    grouped by segment, and the (segment, channel) slots: one thread per slot and row."""
    blocks = {}
    for n, path in enumerate(kept):
        offset, mul, d = block(path)
        if offset in blocks and blocks[offset][:2] != [mul, d]:
            raise ValueError(f"paths disagree on the block at offset {offset}")
        blocks.setdefault(offset, [mul, d, []])[2].append(n)
    segments, group, at = [], [], 0
    for offset in sorted(blocks):
        mul, d, paths = blocks[offset]
        if offset > at:
            segments.append([at, offset - at, 1, 0, 0])
        segments.append([offset, mul, d, len(group), len(group) + len(paths)])
        group += paths
        at = offset + mul * d
    if at < dim:
        segments.append([at, dim - at, 1, 0, 0])
    slots = [[s, c] for s, seg in enumerate(segments) for c in range(seg[1])]
    return segments, group, slots


def cuda_program(plan: TensorProductPlan, device, dtype) -> tuple:
    """(program int32, layout list, cg_value, coefficients) for csrc/cuda: built once per plan,
    device and dtype and cached on the plan."""
    key = ("cuda", torch.device(device), dtype)
    if key in plan._tables:
        return plan._tables[key]
    kept = [p for p in plan.paths if p.cg_end > p.cg_begin and min(p.mul1, p.mul2, p.mul_out) > 0]
    index, value = plan.cg_index.tolist(), plan.cg_value.tolist()
    paths, pairs, cg_j, cg_value = [], [], [], []
    for p in kept:  # CG non-zeros sorted by (m3, m1, m2); runs of equal (m1, m3) are pairs
        begin = len(pairs)
        for e in sorted(range(p.cg_begin, p.cg_end), key=lambda e: (index[e][2], index[e][0], index[e][1])):
            i, j, k = index[e]
            if len(pairs) == begin or pairs[-1][:2] != [i, k]:
                pairs.append([i, k, len(cg_j), len(cg_j)])
            cg_j.append(j)
            cg_value.append(value[e])
            pairs[-1][3] = len(cg_j)
        paths.append([MODES.index(p.mode), 2 * p.l1 + 1, 2 * p.l2 + 1, 2 * p.l3 + 1, p.mul1, p.mul2, p.mul_out,
                      p.offset1, p.offset2, p.offset_out, p.weight_offset, int(p.has_weight), begin, len(pairs)])
    roles = [_role_tables(kept, lambda p: (p.offset_out, p.mul_out, 2 * p.l3 + 1), plan.dim_out),
             _role_tables(kept, lambda p: (p.offset1, p.mul1, 2 * p.l1 + 1), plan.dim_in1),
             _role_tables(kept, lambda p: (p.offset2, p.mul2, 2 * p.l2 + 1), plan.dim_in2)]
    weight_slots = []  # one per weight, in e3nn's flat order: (kept path or -1, u, v, w)
    for p in plan.paths:
        if p.has_weight:
            n = next((n for n, q in enumerate(kept) if q is p), -1)
            weight_slots += [[n, *uvw] if p.mode == "uvw" else [n, *uvw, 0]
                             for uvw in itertools.product(*(range(size) for size in p.weight_shape))]
    parts, layout = [], {}

    def add(name, rows, width):
        layout[name] = sum(len(part) for part in parts)
        parts.append([v for row in rows for v in row] if rows else [])
        assert all(len(row) == width for row in rows)

    add("paths", paths, 14)
    add("pairs", pairs, 4)
    add("cg_j", [[j] for j in cg_j], 1)
    for name, (segments, group, slots) in zip(("out", "x1", "x2"), roles):
        add(f"{name}_segments", segments, 5)
        add(f"{name}_group", [[n] for n in group], 1)
        add(f"{name}_slots", slots, 2)
        layout[f"{name}_num_slots"] = len(slots)
    add("weight_slots", weight_slots, 4)
    layout.update(dim1=plan.dim_in1, dim2=plan.dim_in2, dim_out=plan.dim_out, weight_numel=plan.weight_numel,
                  max_d=max([2 * max(p.l1, p.l2, p.l3) + 1 for p in kept], default=1))
    program = torch.tensor([v for part in parts for v in part], dtype=torch.int32)
    values = lambda v: torch.tensor(v, dtype=torch.float64).to(device=device, dtype=dtype)  # noqa: E731
    plan._tables[key] = (program.to(device), [int(layout[name]) for name in CUDA_LAYOUT], values(cg_value),
                         values([p.coefficient for p in kept]))
    return plan._tables[key]


def _cuda(kernel: int, plan, a, b, w, out_shape, flag):
    out = _outputs.new(out_shape, a)
    torch.ops.nffk_C.tp_cuda(kernel, a.contiguous(), b.contiguous(), w.contiguous(),
                             *cuda_program(plan, a.device, a.dtype), flag, out)
    return out


class CudaKernels:
    """The four kernels of the cuda backend (same contract as ReferenceKernels)."""

    @staticmethod
    def forward(plan, x1, x2, w, weighted_only):
        return _cuda(0, plan, x1, x2, w, (x1.shape[0], plan.dim_out), weighted_only)

    @staticmethod
    def vjp_x1(plan, g, x2, w, weighted_only):
        return _cuda(1, plan, g, x2, w, (g.shape[0], plan.dim_in1), weighted_only)

    @staticmethod
    def vjp_x2(plan, x1, g, w, weighted_only):
        return _cuda(2, plan, x1, g, w, (x1.shape[0], plan.dim_in2), weighted_only)

    @staticmethod
    def vjp_w(plan, x1, x2, g, shared):
        shape = (plan.weight_numel,) if shared else (x1.shape[0], plan.weight_numel)
        return _cuda(3, plan, x1, x2, g, shape, False)


# Backend name -> kernels object, a predicate saying which plans it supports, and the dtypes it
# computes in (missing: any floating dtype).
# "triton": kernels/tensor_product.py, generic over the plan (every connection mode).
KERNELS = {"reference": ReferenceKernels, "cpu": CpuKernels, "triton": backends.TritonModule("tensor_product"),
           "cuda": CudaKernels}
# (whether the compiled extension is loaded, and built with CUDA, is checked by backends.resolve)
SUPPORTS = {"reference": lambda plan: True, "cpu": lambda plan: all(p.mode in CPU_MODES for p in plan.paths),
            "triton": lambda plan: True, "cuda": _cuda_supports}
DTYPES = {"cpu": CPU_DTYPES, "cuda": CUDA_DTYPES}


def implemented_backends(plan: TensorProductPlan, dtype: torch.dtype | None = None) -> tuple:
    """Backends that implement this plan (and, if given, compute in this dtype)."""
    return backends.implemented_by("tensor_product", SUPPORTS, DTYPES, plan, dtype)


# ---------------------------------------------------------------------------------------------
# Custom ops. Each takes the plan id and the already-resolved backend name.
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("nffk::tp_forward", mutates_args=())
def _tp_forward(x1: torch.Tensor, x2: torch.Tensor, w: torch.Tensor, plan_id: int, backend: str,
                weighted_only: bool) -> torch.Tensor:
    return KERNELS[backend].forward(_plans.get(plan_id), x1, x2, w, weighted_only)


@torch.library.custom_op("nffk::tp_vjp_x1", mutates_args=())
def _tp_vjp_x1(g: torch.Tensor, x2: torch.Tensor, w: torch.Tensor, plan_id: int, backend: str,
               weighted_only: bool) -> torch.Tensor:
    return KERNELS[backend].vjp_x1(_plans.get(plan_id), g, x2, w, weighted_only)


@torch.library.custom_op("nffk::tp_vjp_x2", mutates_args=())
def _tp_vjp_x2(x1: torch.Tensor, g: torch.Tensor, w: torch.Tensor, plan_id: int, backend: str,
               weighted_only: bool) -> torch.Tensor:
    return KERNELS[backend].vjp_x2(_plans.get(plan_id), x1, g, w, weighted_only)


@torch.library.custom_op("nffk::tp_vjp_w", mutates_args=())
def _tp_vjp_w(x1: torch.Tensor, x2: torch.Tensor, g: torch.Tensor, plan_id: int, backend: str,
              shared: bool) -> torch.Tensor:
    return KERNELS[backend].vjp_w(_plans.get(plan_id), x1, x2, g, shared)


@_tp_forward.register_fake
def _(x1, x2, w, plan_id, backend, weighted_only):
    return x1.new_empty(x1.shape[0], _plans.get(plan_id).dim_out)


@_tp_vjp_x1.register_fake
def _(g, x2, w, plan_id, backend, weighted_only):
    return g.new_empty(g.shape[0], _plans.get(plan_id).dim_in1)


@_tp_vjp_x2.register_fake
def _(x1, g, w, plan_id, backend, weighted_only):
    return x1.new_empty(x1.shape[0], _plans.get(plan_id).dim_in2)


@_tp_vjp_w.register_fake
def _(x1, x2, g, plan_id, backend, shared):
    numel = _plans.get(plan_id).weight_numel
    return x1.new_empty(numel) if shared else x1.new_empty(x1.shape[0], numel)


def _save_all(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:3])
    ctx.plan_id, ctx.backend, ctx.flag = inputs[3], inputs[4], inputs[5]


F, A, B, W = (torch.ops.nffk.tp_forward, torch.ops.nffk.tp_vjp_x1, torch.ops.nffk.tp_vjp_x2,
              torch.ops.nffk.tp_vjp_w)


def _vjps(x1, x2, w, g, need, p, b, only):
    """(A(g, x2, w), B(x1, g, w), W(x1, x2, g)) where `need` says, else None. Where two or more are
    wanted and autograd does not record them, the cpu backend computes them in one pass
    (CpuKernels.vjps); else each is its own op (differentiable again)."""
    if b == "cpu" and sum(need) >= 2 and _autograd.direct_call_is_safe(x1, x2, w, g):
        return CpuKernels.vjps(_plans.get(p), x1, x2, w, g, need, only)
    return (A(g, x2, w, p, b, only) if need[0] else None, B(x1, g, w, p, b, only) if need[1] else None,
            W(x1, x2, g, p, b, w.dim() == 1) if need[2] else None)


def _backward_forward(ctx, g):
    x1, x2, w = ctx.saved_tensors
    p, b, only = ctx.plan_id, ctx.backend, ctx.flag
    return (*_vjps(x1, x2, w, g, _autograd.wanted(ctx, 3), p, b, only), None, None, None)


def _backward_vjp_x1(ctx, h):
    # A(g, x2, w) = dF/dx1^T g is linear in g, x2 and w; <h, A(g, x2, w)> = <g, F(h, x2, w)>.
    g, x2, w = ctx.saved_tensors
    p, b, only = ctx.plan_id, ctx.backend, ctx.flag
    need = _autograd.wanted(ctx, 3)
    _, gx2, gw = _vjps(h, x2, w, g, (False, need[1], need[2]), p, b, only)  # B(h, g, w), W(h, x2, g)
    return (F(h, x2, w, p, b, only) if need[0] else None, gx2, gw, None, None, None)


def _backward_vjp_x2(ctx, h):
    # <h, B(x1, g, w)> = <g, F(x1, h, w)>.
    x1, g, w = ctx.saved_tensors
    p, b, only = ctx.plan_id, ctx.backend, ctx.flag
    need = _autograd.wanted(ctx, 3)
    gx1, _, gw = _vjps(x1, h, w, g, (need[0], False, need[2]), p, b, only)  # A(g, h, w), W(x1, h, g)
    return (gx1, F(x1, h, w, p, b, only) if need[1] else None, gw, None, None, None)


def _backward_vjp_w(ctx, h):
    # <h, W(x1, x2, g)> = <g, F(x1, x2, h)> over the weighted paths only; h has the weight's shape.
    x1, x2, g = ctx.saved_tensors
    p, b = ctx.plan_id, ctx.backend
    need = _autograd.wanted(ctx, 3)
    gx1, gx2, _ = _vjps(x1, x2, h, g, (need[0], need[1], False), p, b, True)  # A(g, x2, h), B(x1, g, h)
    return (gx1, gx2, F(x1, x2, h, p, b, True) if need[2] else None, None, None, None)


_tp_forward.register_autograd(_backward_forward, setup_context=_save_all)
_tp_vjp_x1.register_autograd(_backward_vjp_x1, setup_context=_save_all)
_tp_vjp_x2.register_autograd(_backward_vjp_x2, setup_context=_save_all)
_tp_vjp_w.register_autograd(_backward_vjp_w, setup_context=_save_all)


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------
def tensor_product(x1: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor | None, plan: TensorProductPlan,
                   backend: str = "auto") -> torch.Tensor:
    """out[..., irreps_out.dim] = TP(x1[..., irreps_in1.dim], x2[..., irreps_in2.dim]; weight).

    `weight` is `[weight_numel]` (shared by the batch) or `[..., weight_numel]` (one set per
    element); None when the plan has no weights. Leading dimensions broadcast."""
    for name, x, dim, irreps in (("x1", x1, plan.dim_in1, plan.irreps_in1), ("x2", x2, plan.dim_in2, plan.irreps_in2)):
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] != dim:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must have shape [..., {dim}] for irreps {irreps}, got {shape}")
    if not x1.is_floating_point() or x1.dtype != x2.dtype or x1.device != x2.device:
        raise ValueError(f"x1 and x2 must be floating tensors of one dtype and device, got "
                         f"{x1.dtype} on {x1.device} and {x2.dtype} on {x2.device}")
    if weight is None:
        if plan.weight_numel:
            raise ValueError(f"weight is required: this tensor product has {plan.weight_numel} weights")
        weight = x1.new_zeros(0)
    if weight.dtype != x1.dtype or weight.device != x1.device:
        raise ValueError(f"weight must match x1's dtype and device ({x1.dtype}, {x1.device}), "
                         f"got {weight.dtype} on {weight.device}")
    if weight.dim() == 0 or weight.shape[-1] != plan.weight_numel:
        raise ValueError(f"weight must have shape [{plan.weight_numel}] (shared) or [..., {plan.weight_numel}] "
                         f"(per element), got {tuple(weight.shape)}")
    shared = weight.dim() == 1
    shapes = [x1.shape[:-1], x2.shape[:-1]] + ([] if shared else [weight.shape[:-1]])
    if all(shape == shapes[0] for shape in shapes):  # the usual case, without broadcast_shapes' cost
        batch_shape = shapes[0]
    else:
        try:
            batch_shape = torch.broadcast_shapes(*shapes)
        except RuntimeError:
            raise ValueError(f"batch shapes of x1 {tuple(x1.shape[:-1])}, x2 {tuple(x2.shape[:-1])}"
                             f"{'' if shared else f' and weight {tuple(weight.shape[:-1])}'} do not broadcast") from None
    elements = math.prod(batch_shape)

    def flat(t, d):
        if t.shape[:-1] != batch_shape:
            t = t.expand(*batch_shape, d)
        return t.reshape(elements, d).contiguous()
    x1f, x2f = flat(x1, plan.dim_in1), flat(x2, plan.dim_in2)
    wf = weight.contiguous() if shared else flat(weight, plan.weight_numel)
    backends.check_dtype("tensor_product", backend, x1.dtype, DTYPES)
    chosen = backends.resolve("tensor_product", backend, x1.device, implemented_backends(plan, x1.dtype))
    if _autograd.direct_call_is_safe(x1f, x2f, wf):
        out = KERNELS[chosen].forward(plan, x1f, x2f, wf, False)
    else:
        out = torch.ops.nffk.tp_forward(x1f, x2f, wf, plan.id, chosen, False)
    return out.reshape(*batch_shape, plan.dim_out)
