"""Triton tensor-product kernels: one generic contraction, driven by tables built from the plan.

Every kernel of a tensor product (and of the fused conv, see `conv.py`) has the same shape:
a produced slot P (`out`, `x1`, `x2` or the weights) is a sum, over the paths writing into it
and over their CG non-zeros, of coefficient x A x B x W, where A and B are the two other
slots. Instead of generating one kernel per plan, the kernels here are generic and read the
plan from small tables:

* `contract` produces `out`, `x1` or `x2`. One program owns a tile of rows (batch elements, or
  receivers / senders of a graph) and a tile of channels of one produced irrep block, and loops
  over the block's components m, the paths into the block, the channel letters the path sums
  over, and the CG non-zeros of the path whose produced component is m (non-zeros are sorted by
  produced m per path, so no accumulator is ever indexed by a run-time m). Every output element
  is written once by one program in a fixed order: deterministic, no atomics, no zero fill.
  Rows may sum a CSR segment of "edges" (the fused conv), gather A and B through index arrays,
  and use per-row or shared weights.
* `contract_weights` produces the weights: one program per (row tile, weight tile of a path),
  looping over the path's non-zeros; shared weights sum fixed chunks of rows per program and
  the chunk partials are added by one torch.sum (deterministic).

Channel bookkeeping is branch-free: each path's channel letters u, v, w (e3nn's connection
modes) are decoded from the produced channel c and the reduction index r as
(c // div) % mod per letter, and every slot's channel is a dot product of the letters with its
row-major strides. So every connection mode runs through the same code.

On a GPU the kernels are memory-bound by design (see bench/NOTES.md, "GPU floors"): operands
of a row tile are re-read from L1/L2 for every non-zero, HBM traffic stays near one read of
the inputs and one write of the output.
"""
from __future__ import annotations

import functools
import math
import weakref

import torch
import triton
import triton.language as tl

# Channel letters of (x1, x2, out, weight) per connection mode (e3nn's; same table as
# nffk.ops.tensor_product.MODE_LETTERS, repeated here because kernels import nothing of nffk).
MODE_LETTERS = {
    "uvw": ("u", "v", "w", "uvw"),
    "uvu": ("u", "v", "u", "uv"),
    "uvv": ("u", "v", "v", "uv"),
    "uuw": ("u", "u", "w", "uw"),
    "uuu": ("u", "u", "u", "u"),
    "uvuv": ("u", "v", "uv", "uv"),
}
_SLOT = {"x1": 0, "x2": 1, "out": 2, "w": 3}
# The two operand slots of each produced slot, in (A, B) order.
OPERANDS = {"out": ("x1", "x2"), "x1": ("x2", "out"), "x2": ("x1", "out")}
LETTERS = "uvw"

# Per-path table of `contract` (int64; the kernel reads these columns by position):
#   0 offset of A, 1 2l+1 of A, 2 offset of B, 3 2l+1 of B, 4 weight offset, 5 has weight,
#   6 first entry of the path's m pointers, 7 size of the channel reduction,
#   8-10 / 11-13 (div, mod) decoding u, v, w from the produced channel,
#   14-16 / 17-19 (div, mod) decoding u, v, w from the reduction index,
#   20-22 / 23-25 / 26-28 strides of u, v, w in the channels of A / B / the weights.
CONTRACT_COLUMNS = 29
# Per-path table of `contract_weights`:
#   0-5 (offset, 2l+1) of x1, x2, out, 6 weight offset, 7 number of weights, 8-9 non-zero range,
#   10-12 / 13-15 (div, mod) decoding u, v, w from the weight index,
#   16-18 / 19-21 / 22-24 strides of u, v, w in the channels of x1 / x2 / out.
WEIGHT_COLUMNS = 25
_W_NUMEL = 7


# --------------------------------------------------------------------------------------------
# Tables (built once per plan, produced slot, flag, device and dtype)
# --------------------------------------------------------------------------------------------
def _extents(path) -> dict:
    return {"u": path.mul1, "v": path.mul2, "w": path.mul_out}


def _letters(path, slot: str) -> str:
    return MODE_LETTERS[path.mode][_SLOT[slot]]


def _strides(letters: str, extents: dict) -> list:
    """Row-major strides of the letters of one slot, in u, v, w order (0 for absent letters)."""
    stride, out = 1, {}
    for letter in reversed(letters):
        out[letter] = stride
        stride *= extents[letter]
    return [out.get(letter, 0) for letter in LETTERS]


def _decoder(letters: str, extents: dict) -> tuple:
    """(div, mod) per letter so that letter = (index // div) % mod for an index over `letters`
    (row-major); absent letters get (1, 1), i.e. 0."""
    strides = _strides(letters, extents)
    div = [strides[k] if letter in letters else 1 for k, letter in enumerate(LETTERS)]
    mod = [extents[letter] if letter in letters else 1 for letter in LETTERS]
    return div, mod


def _geometry(path, slot: str) -> tuple:
    """(offset, 2l+1) of the path's block in the flat tensor of `slot`."""
    return {"x1": (path.offset1, 2 * path.l1 + 1), "x2": (path.offset2, 2 * path.l2 + 1),
            "out": (path.offset_out, 2 * path.l3 + 1)}[slot]


def _irreps_blocks(plan, slot: str) -> list:
    """(offset, mul, 2l+1) of every non-empty irrep block of the slot's flat tensor."""
    irreps = {"x1": plan.irreps_in1, "x2": plan.irreps_in2, "out": plan.irreps_out}[slot]
    blocks, offset = [], 0
    for mul, ir in irreps:
        if mul * ir.dim:
            blocks.append((offset, mul, ir.dim))
        offset += mul * ir.dim
    return blocks


def _live_paths(plan, weighted_only: bool):
    for path in plan.paths:
        if path.cg_end == path.cg_begin or 0 in (path.mul1, path.mul2, path.mul_out):
            continue
        if weighted_only and not path.has_weight:
            continue
        yield path


def _pow2(n: int, cap: int) -> int:
    return max(2, min(cap, triton.next_power_of_2(max(n, 1))))


_TABLES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _cached(plan, key, build):
    per_plan = _TABLES.setdefault(plan, {})
    if key not in per_plan:
        per_plan[key] = build()
    return per_plan[key]


def contract_tables(plan, produce: str, weighted_only: bool, device, dtype) -> dict:
    """Tables of `contract` for one produced slot ('out', 'x1' or 'x2')."""
    return _cached(plan, ("contract", produce, weighted_only, torch.device(device), dtype),
                   lambda: _build_contract_tables(plan, produce, weighted_only, device, dtype))


def _build_contract_tables(plan, produce, weighted_only, device, dtype) -> dict:
    blocks = _irreps_blocks(plan, produce)
    block_of_offset = {offset: b for b, (offset, _, _) in enumerate(blocks)}
    slot_a, slot_b = OPERANDS[produce]
    col_p, col_a, col_b = _SLOT[produce], _SLOT[slot_a], _SLOT[slot_b]
    paths_of_block = [[] for _ in blocks]
    rows, m_ptr, m_a, m_b, values = [], [], [], [], []
    for path in _live_paths(plan, weighted_only):
        ext = _extents(path)
        produced = _letters(path, produce)
        used = set(_letters(path, "x1") + _letters(path, "x2") + _letters(path, "out"))
        reduced = "".join(letter for letter in LETTERS if letter in used and letter not in produced)
        div_c, mod_c = _decoder(produced, ext)
        div_r, mod_r = _decoder(reduced, ext)
        stride_w = _strides(_letters(path, "w"), ext) if path.has_weight else [0, 0, 0]
        (off_a, d_a), (off_b, d_b) = _geometry(path, slot_a), _geometry(path, slot_b)
        offset_p, d_p = _geometry(path, produce)
        # This path's non-zeros sorted by produced component, with a pointer per component.
        index_nz = plan.cg_index[path.cg_begin:path.cg_end]
        value_nz = plan.cg_value[path.cg_begin:path.cg_end] * path.coefficient
        order = torch.sort(index_nz[:, col_p], stable=True).indices
        index_nz, value_nz = index_nz[order], value_nz[order]
        base = len(values)
        counts = torch.bincount(index_nz[:, col_p], minlength=d_p)
        pointers = [base] + (base + torch.cumsum(counts, 0)).tolist()
        mptr_base = len(m_ptr)
        m_ptr += pointers
        m_a += index_nz[:, col_a].tolist()
        m_b += index_nz[:, col_b].tolist()
        values += value_nz.tolist()
        rows.append([off_a, d_a, off_b, d_b, path.weight_offset, int(path.has_weight), mptr_base,
                     math.prod(ext[letter] for letter in reduced)]
                    + div_c + mod_c + div_r + mod_r
                    + _strides(_letters(path, slot_a), ext) + _strides(_letters(path, slot_b), ext) + stride_w)
        paths_of_block[block_of_offset[offset_p]].append(len(rows) - 1)

    block_channels = _pow2(max((mul for _, mul, _ in blocks), default=1), 64)
    block_rows, block_paths, items = [], [], []
    for b, (offset, mul, d) in enumerate(blocks):
        block_rows.append([offset, mul, d, len(block_paths), len(block_paths) + len(paths_of_block[b])])
        block_paths += paths_of_block[b]
        items += [[b, c0] for c0 in range(0, mul, block_channels)]
    long = dict(dtype=torch.int64, device=device)
    return {
        "items": torch.tensor(items, **long).reshape(-1, 2),
        "blocks": torch.tensor(block_rows, **long).reshape(-1, 5),
        "block_paths": torch.tensor(block_paths or [0], **long),
        "paths": torch.tensor(rows or [[0] * CONTRACT_COLUMNS], **long),
        "m_ptr": torch.tensor(m_ptr or [0], **long),
        "m_a": torch.tensor(m_a or [0], **long),
        "m_b": torch.tensor(m_b or [0], **long),
        "values": torch.tensor(values or [0.0], dtype=torch.float64).to(device=device, dtype=dtype),
        "block_channels": block_channels,
        "dims": {"x1": plan.dim_in1, "x2": plan.dim_in2, "out": plan.dim_out},
    }


def weight_tables(plan, device, dtype) -> dict:
    """Tables of `contract_weights`: one row per weighted path."""
    return _cached(plan, ("weights", torch.device(device), dtype),
                   lambda: _build_weight_tables(plan, device, dtype))


def _build_weight_tables(plan, device, dtype) -> dict:
    rows, m1, m2, m3, values = [], [], [], [], []
    for path in _live_paths(plan, weighted_only=True):
        ext = _extents(path)
        div, mod = _decoder(_letters(path, "w"), ext)
        index_nz = plan.cg_index[path.cg_begin:path.cg_end]
        begin = len(values)
        m1 += index_nz[:, 0].tolist()
        m2 += index_nz[:, 1].tolist()
        m3 += index_nz[:, 2].tolist()
        values += (plan.cg_value[path.cg_begin:path.cg_end] * path.coefficient).tolist()
        rows.append([path.offset1, 2 * path.l1 + 1, path.offset2, 2 * path.l2 + 1, path.offset_out,
                     2 * path.l3 + 1, path.weight_offset, path.weight_numel, begin, len(values)]
                    + div + mod + _strides(_letters(path, "x1"), ext) + _strides(_letters(path, "x2"), ext)
                    + _strides(_letters(path, "out"), ext))
    block_channels = _pow2(max((row[_W_NUMEL] for row in rows), default=1), 64)
    items = [[p, c0] for p, row in enumerate(rows) for c0 in range(0, row[_W_NUMEL], block_channels)]
    long = dict(dtype=torch.int64, device=device)
    covered = sum(row[_W_NUMEL] for row in rows)
    return {
        "items": torch.tensor(items, **long).reshape(-1, 2),
        "paths": torch.tensor(rows or [[0] * WEIGHT_COLUMNS], **long),
        "m1": torch.tensor(m1 or [0], **long),
        "m2": torch.tensor(m2 or [0], **long),
        "m3": torch.tensor(m3 or [0], **long),
        "values": torch.tensor(values or [0.0], dtype=torch.float64).to(device=device, dtype=dtype),
        "block_channels": block_channels,
        "complete": covered == plan.weight_numel,
    }


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------
@triton.jit
def _contract_kernel(out_ptr, a_ptr, b_ptr, w_ptr, num_rows, dim_out, dim_a, dim_b, weight_numel,
                     segment_ptr, perm_ptr, a_index_ptr, b_index_ptr,
                     items_ptr, blocks_ptr, block_paths_ptr, paths_ptr, m_ptr_ptr, m_a_ptr, m_b_ptr, values_ptr,
                     SEGMENTED: tl.constexpr, PERMUTED: tl.constexpr, GATHER_A: tl.constexpr,
                     GATHER_B: tl.constexpr, SHARED_W: tl.constexpr, NCOL: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < num_rows
    item = tl.program_id(1)
    block = tl.load(items_ptr + 2 * item)
    channels = tl.load(items_ptr + 2 * item + 1) + tl.arange(0, BLOCK_C)
    offset_p = tl.load(blocks_ptr + 5 * block)
    mul_p = tl.load(blocks_ptr + 5 * block + 1)
    d_p = tl.load(blocks_ptr + 5 * block + 2)
    path_begin = tl.load(blocks_ptr + 5 * block + 3)
    path_end = tl.load(blocks_ptr + 5 * block + 4)
    channel_ok = channels < mul_p
    if SEGMENTED:
        segment_begin = tl.load(segment_ptr + rows, mask=row_ok, other=0)
        segment_length = tl.load(segment_ptr + rows + 1, mask=row_ok, other=0) - segment_begin
        longest = tl.max(segment_length, axis=0)
        last_slot = tl.load(segment_ptr + num_rows) - 1
    else:
        segment_begin = rows
        segment_length = tl.where(row_ok, 1, 0)
        longest = 1
        last_slot = num_rows - 1

    for m in range(0, d_p):
        acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=out_ptr.dtype.element_ty)
        for k in range(0, longest):
            live = row_ok & (k < segment_length)
            # Index loads read a slot clamped into range instead of a masked one (rows past their
            # segment are masked at the data loads): Triton 3.6 fails to compile masked index
            # loads here ("tt.load op failed to verify that mask type matches ptr type").
            edge = tl.minimum(segment_begin + k, last_slot)
            if PERMUTED:
                edge = tl.load(perm_ptr + edge)
            a_row = edge
            if GATHER_A:
                a_row = tl.load(a_index_ptr + edge)
            b_row = edge
            if GATHER_B:
                b_row = tl.load(b_index_ptr + edge)
            mask = live[:, None] & channel_ok[None, :]
            for q in range(path_begin, path_end):
                path = paths_ptr + tl.load(block_paths_ptr + q) * NCOL
                off_a = tl.load(path + 0)
                d_a = tl.load(path + 1)
                off_b = tl.load(path + 2)
                d_b = tl.load(path + 3)
                w_off = tl.load(path + 4)
                # A [BLOCK_C] vector (a scalar bool in a mask trips the interpreter).
                has_w = (tl.zeros_like(channels) + tl.load(path + 5)) != 0
                n_first = tl.load(m_ptr_ptr + tl.load(path + 6) + m)
                n_last = tl.load(m_ptr_ptr + tl.load(path + 6) + m + 1)
                reduce_size = tl.load(path + 7)
                # Letters u, v, w from the produced channel (vector) plus the reduction index r (scalar).
                u_c = (channels // tl.load(path + 8)) % tl.load(path + 11)
                v_c = (channels // tl.load(path + 9)) % tl.load(path + 12)
                w_c = (channels // tl.load(path + 10)) % tl.load(path + 13)
                div_ru, div_rv, div_rw = tl.load(path + 14), tl.load(path + 15), tl.load(path + 16)
                mod_ru, mod_rv, mod_rw = tl.load(path + 17), tl.load(path + 18), tl.load(path + 19)
                sa_u, sa_v, sa_w = tl.load(path + 20), tl.load(path + 21), tl.load(path + 22)
                sb_u, sb_v, sb_w = tl.load(path + 23), tl.load(path + 24), tl.load(path + 25)
                sw_u, sw_v, sw_w = tl.load(path + 26), tl.load(path + 27), tl.load(path + 28)
                for r in range(0, reduce_size):
                    u = u_c + (r // div_ru) % mod_ru
                    v = v_c + (r // div_rv) % mod_rv
                    w = w_c + (r // div_rw) % mod_rw
                    chan_a = sa_u * u + sa_v * v + sa_w * w
                    chan_b = sb_u * u + sb_v * v + sb_w * w
                    w_index = w_off + sw_u * u + sw_v * v + sw_w * w
                    if SHARED_W:
                        weight = tl.load(w_ptr + w_index, mask=channel_ok & has_w, other=1.0)[None, :]
                    else:
                        weight = tl.load(w_ptr + edge[:, None] * weight_numel + w_index[None, :],
                                         mask=mask & has_w[None, :], other=1.0)
                    a_base = a_row[:, None] * dim_a + (off_a + chan_a * d_a)[None, :]
                    b_base = b_row[:, None] * dim_b + (off_b + chan_b * d_b)[None, :]
                    inner = tl.zeros([BLOCK_R, BLOCK_C], dtype=out_ptr.dtype.element_ty)
                    for n in range(n_first, n_last):
                        a = tl.load(a_ptr + a_base + tl.load(m_a_ptr + n), mask=mask, other=0.0)
                        b = tl.load(b_ptr + b_base + tl.load(m_b_ptr + n), mask=mask, other=0.0)
                        inner += tl.load(values_ptr + n) * a * b
                    acc += inner * weight
        out_index = rows[:, None] * dim_out + (offset_p + channels * d_p + m)[None, :]
        tl.store(out_ptr + out_index, acc, mask=row_ok[:, None] & channel_ok[None, :])


@triton.jit
def _weights_tile(rows, row_ok, channel_ok, x1_ptr, x2_ptr, g_ptr, dim1, dim2, dim_out, x1_index_ptr, g_index_ptr,
                  path, m1_ptr, m2_ptr, m3_ptr, values_ptr, chan1, chan2, chan_o,
                  GATHER_X1: tl.constexpr, GATHER_G: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """sum over the path's non-zeros of value * x1 * x2 * g for a tile of rows and weights."""
    x1_row = rows
    if GATHER_X1:
        x1_row = tl.load(x1_index_ptr + rows, mask=row_ok, other=0)
    g_row = rows
    if GATHER_G:
        g_row = tl.load(g_index_ptr + rows, mask=row_ok, other=0)
    mask = row_ok[:, None] & channel_ok[None, :]
    base1 = x1_row[:, None] * dim1 + (tl.load(path + 0) + chan1 * tl.load(path + 1))[None, :]
    base2 = rows[:, None] * dim2 + (tl.load(path + 2) + chan2 * tl.load(path + 3))[None, :]
    base_o = g_row[:, None] * dim_out + (tl.load(path + 4) + chan_o * tl.load(path + 5))[None, :]
    acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=x1_ptr.dtype.element_ty)
    for n in range(tl.load(path + 8), tl.load(path + 9)):
        a = tl.load(x1_ptr + base1 + tl.load(m1_ptr + n), mask=mask, other=0.0)
        b = tl.load(x2_ptr + base2 + tl.load(m2_ptr + n), mask=mask, other=0.0)
        c = tl.load(g_ptr + base_o + tl.load(m3_ptr + n), mask=mask, other=0.0)
        acc += tl.load(values_ptr + n) * a * b * c
    return acc


@triton.jit
def _weights_kernel(out_ptr, x1_ptr, x2_ptr, g_ptr, num_rows, rows_per_program, dim1, dim2, dim_out, weight_numel,
                    x1_index_ptr, g_index_ptr, items_ptr, paths_ptr, m1_ptr, m2_ptr, m3_ptr, values_ptr,
                    GATHER_X1: tl.constexpr, GATHER_G: tl.constexpr, SHARED: tl.constexpr, NCOL: tl.constexpr,
                    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    item = tl.program_id(1)
    path = paths_ptr + tl.load(items_ptr + 2 * item) * NCOL
    channels = tl.load(items_ptr + 2 * item + 1) + tl.arange(0, BLOCK_C)
    channel_ok = channels < tl.load(path + 7)
    u = (channels // tl.load(path + 10)) % tl.load(path + 13)
    v = (channels // tl.load(path + 11)) % tl.load(path + 14)
    w = (channels // tl.load(path + 12)) % tl.load(path + 15)
    chan1 = tl.load(path + 16) * u + tl.load(path + 17) * v + tl.load(path + 18) * w
    chan2 = tl.load(path + 19) * u + tl.load(path + 20) * v + tl.load(path + 21) * w
    chan_o = tl.load(path + 22) * u + tl.load(path + 23) * v + tl.load(path + 24) * w
    w_index = tl.load(path + 6) + channels
    if SHARED:
        # This program's partial sum over a fixed chunk of rows (added up by the launcher).
        first = tl.program_id(0).to(tl.int64) * rows_per_program
        acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=out_ptr.dtype.element_ty)
        for start in range(first, tl.minimum(first + rows_per_program, num_rows), BLOCK_R):
            rows = start + tl.arange(0, BLOCK_R)
            row_ok = rows < tl.minimum(first + rows_per_program, num_rows)
            acc += _weights_tile(rows, row_ok, channel_ok, x1_ptr, x2_ptr, g_ptr, dim1, dim2, dim_out, x1_index_ptr,
                                 g_index_ptr, path, m1_ptr, m2_ptr, m3_ptr, values_ptr, chan1, chan2, chan_o,
                                 GATHER_X1, GATHER_G, BLOCK_R, BLOCK_C)
        tl.store(out_ptr + tl.program_id(0).to(tl.int64) * weight_numel + w_index, tl.sum(acc, axis=0),
                 mask=channel_ok)
    else:
        rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
        row_ok = rows < num_rows
        acc = _weights_tile(rows, row_ok, channel_ok, x1_ptr, x2_ptr, g_ptr, dim1, dim2, dim_out, x1_index_ptr,
                            g_index_ptr, path, m1_ptr, m2_ptr, m3_ptr, values_ptr, chan1, chan2, chan_o,
                            GATHER_X1, GATHER_G, BLOCK_R, BLOCK_C)
        tl.store(out_ptr + rows[:, None] * weight_numel + w_index[None, :], acc,
                 mask=row_ok[:, None] & channel_ok[None, :])


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------
_COMPUTE_DTYPES = (torch.float32, torch.float64)
_SHARED_WEIGHT_CHUNKS = 256  # partial sums of shared-weight gradients (a function of nothing but this)


def _allocate(shape, dtype, device):
    """Output buffers (tests replace this with a NaN-filled allocation to catch unwritten elements)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _compute_dtype(dtype):
    """Half types are computed in float32 (and rounded once at the end)."""
    return dtype if dtype in _COMPUTE_DTYPES else torch.float32


@functools.lru_cache(maxsize=None)
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _block_rows(block_channels: int, block_rows, num_rows: int, items: int, device) -> int:
    """Rows per program: tiles of up to 1024 elements, smaller when that would leave the GPU's SMs
    idle (a few produced blocks and a small batch: ~4 programs per SM wanted). On the CPU (the
    interpreter) the fewest programs are fastest."""
    if block_rows:
        return block_rows
    largest = max(1, min(64, 1024 // block_channels))
    if device.type != "cuda":
        return largest
    wanted = 4 * _multiprocessors(device.index if device.index is not None else torch.cuda.current_device())
    fitting = max(1, num_rows * items // wanted)
    return max(1, min(largest, 1 << (fitting.bit_length() - 1)))


def contract(plan, produce: str, a, b, w, weighted_only: bool, num_rows: int, segments=None, perm=None,
             a_index=None, b_index=None, block_rows=None):
    """The `produce` slot ('out', 'x1' or 'x2') of a tensor product, as a [num_rows, dim] tensor.

    a, b: the operand slots OPERANDS[produce]. Row i sums "edges" segments[i]:segments[i+1]
    (or edge i when `segments` is None), edge = perm[slot] when `perm` is given; operand rows are
    a_index[edge] / b_index[edge] (or edge), weights w[edge] (or w when 1-D, shared)."""
    dtype = a.dtype
    compute = _compute_dtype(dtype)
    a, b, w = (t.to(compute).contiguous() for t in (a, b, w))
    tables = contract_tables(plan, produce, weighted_only, a.device, compute)
    out = _allocate((num_rows, tables["dims"][produce]), compute, a.device)
    items = tables["items"]
    if num_rows == 0 or out.shape[1] == 0:
        return out.zero_().to(dtype)
    block_c = tables["block_channels"]
    block_r = _block_rows(block_c, block_rows, num_rows, items.shape[0], a.device)
    dummy = items
    grid = (triton.cdiv(num_rows, block_r), items.shape[0])
    _contract_kernel[grid](
        out, a, b, w if w.numel() else dummy.to(compute), num_rows, out.shape[1], a.shape[1], b.shape[1],
        plan.weight_numel,
        dummy if segments is None else segments, dummy if perm is None else perm,
        dummy if a_index is None else a_index, dummy if b_index is None else b_index,
        items, tables["blocks"], tables["block_paths"], tables["paths"], tables["m_ptr"], tables["m_a"],
        tables["m_b"], tables["values"],
        SEGMENTED=segments is not None, PERMUTED=perm is not None, GATHER_A=a_index is not None,
        GATHER_B=b_index is not None, SHARED_W=w.dim() == 1, NCOL=CONTRACT_COLUMNS, BLOCK_R=block_r,
        BLOCK_C=block_c)
    return out.to(dtype)


def contract_weights(plan, x1, x2, g, shared: bool, num_rows: int, x1_index=None, g_index=None, block_rows=None):
    """Gradient of the weights: [weight_numel] (shared: summed over rows) or [num_rows, weight_numel].

    Row e pairs x1[x1_index[e]] (or x1[e]), x2[e] and g[g_index[e]] (or g[e])."""
    dtype = x1.dtype
    compute = _compute_dtype(dtype)
    x1, x2, g = (t.to(compute).contiguous() for t in (x1, x2, g))
    tables = weight_tables(plan, x1.device, compute)
    numel = plan.weight_numel
    items = tables["items"]
    if num_rows == 0 or numel == 0 or items.shape[0] == 0:
        shape = (numel,) if shared else (num_rows, numel)
        return torch.zeros(shape, dtype=dtype, device=x1.device)
    block_c = tables["block_channels"]
    block_r = _block_rows(block_c, block_rows, num_rows, items.shape[0], x1.device)
    if shared:
        chunks = min(triton.cdiv(num_rows, block_r), _SHARED_WEIGHT_CHUNKS)
        rows_per_program = triton.cdiv(triton.cdiv(num_rows, chunks), block_r) * block_r
        shape = (chunks, numel)
    else:
        chunks, rows_per_program = triton.cdiv(num_rows, block_r), block_r
        shape = (num_rows, numel)
    out = _allocate(shape, compute, x1.device)
    if not tables["complete"]:
        out.zero_()  # weights of paths without CG non-zeros (or with an empty multiplicity) have no item
    _weights_kernel[(chunks, items.shape[0])](
        out, x1, x2, g, num_rows, rows_per_program, x1.shape[1], x2.shape[1], g.shape[1], numel,
        items if x1_index is None else x1_index, items if g_index is None else g_index,
        items, tables["paths"], tables["m1"], tables["m2"], tables["m3"], tables["values"],
        GATHER_X1=x1_index is not None, GATHER_G=g_index is not None, SHARED=shared, NCOL=WEIGHT_COLUMNS,
        BLOCK_R=block_r, BLOCK_C=block_c)
    return (out.sum(0) if shared else out).to(dtype)


# The four kernels of nffk.ops.tensor_product (batch elements are rows, no gathers).
def forward(plan, x1, x2, w, weighted_only):
    return contract(plan, "out", x1, x2, w, weighted_only, x1.shape[0])


def vjp_x1(plan, g, x2, w, weighted_only):
    return contract(plan, "x1", x2, g, w, weighted_only, g.shape[0])


def vjp_x2(plan, x1, g, w, weighted_only):
    return contract(plan, "x2", x1, g, w, weighted_only, g.shape[0])


def vjp_w(plan, x1, x2, g, shared):
    return contract_weights(plan, x1, x2, g, shared, x1.shape[0])
