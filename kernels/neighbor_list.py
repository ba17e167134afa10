"""Triton cell-list neighbour list: same pairs and the same sorted output as the C++ one.

Arguments and results are those of `torch.ops.nffk_C.neighbor_list` (canonical systems from
`nffk.ops.neighbor_list`: float64 binning cells, bool pbc, a CSR over systems).

1. Binning (torch, on the device): wrap atoms into the cell along periodic directions, bin them
   into parallelepiped bins at least one cutoff thick (per system), and sort them by bin.
   Grid sizes are decided on the host from a few numbers per system (one small copy).
2. Search (Triton, one program per receiver): visit every bin within reach, each with the
   integer image T it is seen through (a cell thinner than the cutoff is visited through many
   images); consecutive bins of a row seen through the same image are one contiguous range of
   atoms, tested BLOCK at a time. A first launch counts the neighbours of each receiver; their
   prefix sum gives the output size (a host synchronisation: the number of pairs decides the
   size of every output) and each receiver's offset; a second launch writes (sender, image) in
   visit order.
3. Order (torch): one sort by (receiver, sender, image), as the reference and the C++ kernel
   order their output; shifts S = T - wrap[sender] + wrap[receiver].

The neighbour list is built once per structure (in the data loader or at the start of a step),
not inside the differentiated step: its two host synchronisations do not affect CUDA-graph
capture of the model.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 32  # candidates tested together (bins hold ~10 atoms at liquid/solid densities)
_BIN_MARGIN = 1e-9  # bins are this much (relative) thicker than needed, as in the C++ kernel
# Per-system integer table: 0-2 bins per axis, 3-5 reach (bins), 6-8 periodic, 9 first bin,
# 10-12 first entry of each axis' wrap table.
_PARAMS = 13


@triton.jit
def _search_kernel(counts_ptr, offsets_ptr, senders_ptr, images_ptr, wrapped_ptr, system_ptr, bin3_ptr,
                   slot_x_ptr, slot_y_ptr, slot_z_ptr, slot_atom_ptr, bin_start_ptr, params_ptr, cells_ptr,
                   wrap_bin_ptr, wrap_image_ptr, cutoff_sq, image_bias, image_width,
                   SELF_INTERACTION: tl.constexpr, FILL: tl.constexpr, NP: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    params = params_ptr + tl.load(system_ptr + i) * NP
    cell = cells_ptr + tl.load(system_ptr + i) * 9
    nb1 = tl.load(params + 1)
    nb2 = tl.load(params + 2)
    r0 = tl.load(params + 3)
    r1 = tl.load(params + 4)
    r2 = tl.load(params + 5)
    bin_offset = tl.load(params + 9)
    wrap0 = tl.load(params + 10) + r0  # table entry of bin coordinate u is wrap + u
    wrap1 = tl.load(params + 11) + r1
    wrap2 = tl.load(params + 12) + r2
    b0 = tl.load(bin3_ptr + 3 * i)
    b1 = tl.load(bin3_ptr + 3 * i + 1)
    b2 = tl.load(bin3_ptr + 3 * i + 2)
    # Open directions stay inside the grid; periodic ones wrap through the tables.
    lo0 = tl.where(tl.load(params + 6) != 0, b0 - r0, tl.maximum(b0 - r0, 0))
    hi0 = tl.where(tl.load(params + 6) != 0, b0 + r0, tl.minimum(b0 + r0, tl.load(params + 0) - 1))
    lo1 = tl.where(tl.load(params + 7) != 0, b1 - r1, tl.maximum(b1 - r1, 0))
    hi1 = tl.where(tl.load(params + 7) != 0, b1 + r1, tl.minimum(b1 + r1, nb1 - 1))
    lo2 = tl.where(tl.load(params + 8) != 0, b2 - r2, tl.maximum(b2 - r2, 0))
    hi2 = tl.where(tl.load(params + 8) != 0, b2 + r2, tl.minimum(b2 + r2, nb2 - 1))
    rx = tl.load(wrapped_ptr + 3 * i)
    ry = tl.load(wrapped_ptr + 3 * i + 1)
    rz = tl.load(wrapped_ptr + 3 * i + 2)
    h00, h01, h02 = tl.load(cell + 0), tl.load(cell + 1), tl.load(cell + 2)
    h10, h11, h12 = tl.load(cell + 3), tl.load(cell + 4), tl.load(cell + 5)
    h20, h21, h22 = tl.load(cell + 6), tl.load(cell + 7), tl.load(cell + 8)
    lanes = tl.arange(0, BLOCK)
    own_image = tl.zeros([BLOCK], dtype=tl.int64) + ((image_bias * image_width + image_bias) * image_width
                                                      + image_bias)
    found = i * 0
    per_lane = tl.zeros([BLOCK], dtype=tl.int64)
    first = i * 0
    if FILL:
        first = tl.load(offsets_ptr + i)
    for u0 in range(lo0, hi0 + 1):
        c0 = tl.load(wrap_bin_ptr + wrap0 + u0)
        t0 = tl.load(wrap_image_ptr + wrap0 + u0)
        for u1 in range(lo1, hi1 + 1):
            c1 = tl.load(wrap_bin_ptr + wrap1 + u1)
            t1 = tl.load(wrap_image_ptr + wrap1 + u1)
            row = bin_offset + (c0 * nb1 + c1) * nb2
            row_x = t0 * h00 + t1 * h10 - rx
            row_y = t0 * h01 + t1 * h11 - ry
            row_z = t0 * h02 + t1 * h12 - rz
            u2 = lo2
            while u2 <= hi2:
                c2 = tl.load(wrap_bin_ptr + wrap2 + u2)
                t2 = tl.load(wrap_image_ptr + wrap2 + u2)
                run = tl.minimum(hi2 - u2, nb2 - 1 - c2)  # further bins seen through the same image
                begin = tl.load(bin_start_ptr + row + c2)
                end = tl.load(bin_start_ptr + row + c2 + run + 1)
                u2 += run + 1
                # Candidate j is kept when |r_j + T @ H - r_i| < cutoff (cell rows are lattice vectors).
                dx = t2 * h20 + row_x
                dy = t2 * h21 + row_y
                dz = t2 * h22 + row_z
                image = tl.zeros([BLOCK], dtype=tl.int64) + (
                    ((t0 + image_bias) * image_width + t1 + image_bias) * image_width + t2 + image_bias)
                for p in range(begin, end, BLOCK):
                    slots = p + lanes
                    live = slots < end
                    ex = tl.load(slot_x_ptr + slots, mask=live, other=0.0) + dx
                    ey = tl.load(slot_y_ptr + slots, mask=live, other=0.0) + dy
                    ez = tl.load(slot_z_ptr + slots, mask=live, other=0.0) + dz
                    atom = tl.load(slot_atom_ptr + slots, mask=live, other=-1)
                    keep = live & (ex * ex + ey * ey + ez * ez < cutoff_sq)
                    if not SELF_INTERACTION:
                        keep = keep & ((atom != i) | (image != own_image))
                    if FILL:
                        where = first + found + tl.cumsum(keep.to(tl.int64), axis=0) - 1
                        tl.store(senders_ptr + where, atom, mask=keep)
                        tl.store(images_ptr + where, image, mask=keep)
                        found += tl.sum(keep.to(tl.int64), axis=0)
                    else:
                        per_lane += keep.to(tl.int64)  # counting needs one reduction, at the end
    if not FILL:
        tl.store(counts_ptr + i, tl.sum(per_lane, axis=0))


def _floor_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.div(a, b, rounding_mode="floor")


def _grid(positions, system, system_ptr, cells, pbc, cutoff):
    """Wrapped positions, wraps, bins and the per-system grid parameters (see module docstring)."""
    device = positions.device
    num_systems = cells.shape[0]
    inverse = torch.linalg.inv(cells)  # binning cells are never singular
    r = positions.double()
    frac = torch.einsum("nc,nck->nk", r, inverse[system])
    periodic = pbc[system]
    wrap = torch.where(periodic, torch.floor(frac), 0.0)
    if wrap.numel() and bool((wrap.abs() > 1e9).any()):
        raise ValueError("neighbor_list: an atom lies more than 1e9 cell lengths outside its cell along a "
                         "periodic direction")
    frac = frac - wrap
    wrapped = r - torch.einsum("nk,nkc->nc", wrap, cells[system])
    index3 = system[:, None].expand(-1, 3)
    lo = torch.full((num_systems, 3), torch.inf, dtype=torch.float64, device=device).scatter_reduce(
        0, index3, frac, "amin")
    hi = torch.full((num_systems, 3), -torch.inf, dtype=torch.float64, device=device).scatter_reduce(
        0, index3, frac, "amax")

    # Grid sizes on the host: a handful of numbers per system.
    thickness = cutoff * inverse.norm(dim=1)  # [S, 3]: cutoff in fractional units (dual vectors' norms)
    host = torch.stack([thickness, lo, hi], 0).cpu()
    thickness, lo_h, hi_h = host[0], host[1], host[2]
    pbc_h = pbc.cpu()
    counts = (system_ptr[1:] - system_ptr[:-1]).cpu()
    length = torch.where(pbc_h, 1.0, hi_h - lo_h)
    nb = torch.floor(length / (thickness * (1 + _BIN_MARGIN)))
    max_bins = torch.clamp(2.0 * counts.double(), min=8.0)
    nb = torch.where(nb >= 1, torch.minimum(nb, max_bins[:, None]), 1.0).nan_to_num(1.0)
    while True:  # few atoms spread far apart: coarser bins, never more than ~2 per atom
        over = nb.prod(1) > max_bins
        if not bool(over.any()):
            break
        largest = torch.nn.functional.one_hot(nb.argmax(1), 3).bool() & over[:, None]
        nb = torch.where(largest, torch.clamp(torch.floor(nb / 2), min=1.0), nb)
    finite = (length > 0) & torch.isfinite(length)
    scale = torch.where(pbc_h, nb, torch.where(finite, nb / torch.where(finite, length, 1.0), 0.0))
    lo_h = torch.where(pbc_h, 0.0, lo_h).nan_to_num(0.0, posinf=0.0, neginf=0.0)
    reach = torch.ceil(thickness * scale * (1 + 0.1 * _BIN_MARGIN)).nan_to_num(0.0).clamp(0, 1e6)
    reach = torch.where(pbc_h, reach, torch.minimum(reach, nb - 1))
    nb, reach = nb.long(), reach.long()

    # Wrap tables: bin coordinate u in [-reach, nb + reach) -> (bin, image), per system and axis.
    spans = (nb + 2 * reach).flatten()
    wrap_offset = torch.cumsum(spans, 0) - spans
    owner = torch.repeat_interleave(torch.arange(spans.numel()), spans)
    u = torch.arange(int(spans.sum())) - wrap_offset[owner] - reach.flatten()[owner]
    image = torch.where(pbc_h.flatten()[owner], _floor_div(u, nb.flatten()[owner]), 0)
    wrap_bin = u - image * nb.flatten()[owner]
    bins_per_system = nb.prod(1)
    bin_offset = torch.cumsum(bins_per_system, 0) - bins_per_system
    params = torch.cat([nb, reach, pbc_h.long(), bin_offset[:, None], wrap_offset.view(num_systems, 3)], 1)
    max_image = int(image.abs().max()) if image.numel() else 0

    scale_d, lo_d = scale.to(device), lo_h.to(device)
    bin3 = torch.floor((frac - lo_d[system]) * scale_d[system]).nan_to_num(0.0)
    bin3 = torch.minimum(bin3.clamp(min=0), (nb.to(device)[system] - 1).double()).long()
    nb_d = nb.to(device)
    global_bin = bin_offset.to(device)[system] + (bin3[:, 0] * nb_d[system, 1] + bin3[:, 1]) * nb_d[system, 2] \
        + bin3[:, 2]
    return {
        "wrapped": wrapped.contiguous(), "wrap": wrap.long(), "bin3": bin3.contiguous(), "global_bin": global_bin,
        "total_bins": int(bins_per_system.sum()), "params": params.to(device).contiguous(),
        "wrap_bin": wrap_bin.to(device), "wrap_image": image.to(device), "max_image": max_image,
    }


def triton_search(tensors, counts, offsets, senders, images, fill: bool, cutoff_sq: float, image_bias: int,
                  image_width: int, self_interaction: bool):
    """Step 2 with the Triton kernel: counts[i] (fill=False), or receiver i's (sender, image) pairs
    written at offsets[i] onwards (fill=True). `tensors` are the binning tables of step 1."""
    _search_kernel[(counts.shape[0],)](counts, offsets, senders, images, *tensors, cutoff_sq=cutoff_sq,
                                       image_bias=image_bias, image_width=image_width,
                                       SELF_INTERACTION=bool(self_interaction), FILL=fill, NP=_PARAMS, BLOCK=BLOCK)


def neighbor_list(positions, system_ptr, cells, pbc, cutoff: float, self_interaction: bool, distances: bool,
                  vectors: bool, search=triton_search):
    """(senders, receivers, shifts, ptr, distances, vectors) like torch.ops.nffk_C.neighbor_list.

    `search` runs step 2 (signature of `triton_search`); nffk.ops.neighbor_list passes the CUDA
    kernel's (csrc/cuda/neighbor_list.cu) for its "cuda" backend: steps 1 and 3 are shared."""
    device = positions.device
    num_atoms, num_systems = positions.shape[0], cells.shape[0]
    long = dict(dtype=torch.int64, device=device)
    counts_per_system = system_ptr[1:] - system_ptr[:-1]
    system = torch.repeat_interleave(torch.arange(num_systems, device=device), counts_per_system,
                                     output_size=num_atoms)
    if num_atoms == 0:
        empty = torch.zeros(0, **long)
        return (empty, empty.clone(), torch.zeros(0, 3, **long), torch.zeros(1, **long),
                positions.new_zeros(0), positions.new_zeros(0, 3))
    grid = _grid(positions, system, system_ptr, cells.double().contiguous(), pbc, float(cutoff))
    order = torch.sort(grid["global_bin"], stable=True).indices  # slots: atoms in bin order
    slot_xyz = grid["wrapped"][order].T.contiguous()
    bin_start = torch.zeros(grid["total_bins"] + 1, **long)
    torch.cumsum(torch.bincount(grid["global_bin"], minlength=grid["total_bins"]), 0, out=bin_start[1:])
    width = 2 * grid["max_image"] + 1
    if width ** 3 >= 2 ** 62:
        raise ValueError("neighbor_list: too many periodic images (a cell is many thousand times thinner "
                         "than the cutoff)")
    args = dict(cutoff_sq=float(cutoff) ** 2, image_bias=grid["max_image"], image_width=width,
                self_interaction=bool(self_interaction))
    tensors = [grid["wrapped"], system, grid["bin3"], slot_xyz[0], slot_xyz[1], slot_xyz[2], order, bin_start,
               grid["params"], cells.double().contiguous(), grid["wrap_bin"], grid["wrap_image"]]
    counts = torch.empty(num_atoms, **long)
    search(tensors, counts, counts, counts, counts, False, **args)
    ptr = torch.zeros(num_atoms + 1, **long)
    torch.cumsum(counts, 0, out=ptr[1:])
    num_pairs = int(ptr[-1])  # host synchronisation: the output size
    senders = torch.empty(num_pairs, **long)
    images = torch.empty(num_pairs, **long)
    if num_pairs:
        search(tensors, counts, ptr, senders, images, True, **args)
    receivers = torch.repeat_interleave(torch.arange(num_atoms, device=device), counts, output_size=num_pairs)

    # Sort by (receiver, sender, image): one key when it fits in 63 bits, else two stable sorts.
    images_total = width ** 3
    if num_atoms * num_atoms * images_total < 2 ** 62:
        key = (receivers * num_atoms + senders) * images_total + images
        permutation = torch.sort(key).indices
    else:
        permutation = torch.sort(senders * images_total + images, stable=True).indices
        permutation = permutation[torch.sort(receivers[permutation], stable=True).indices]
    senders, images = senders[permutation], images[permutation]
    t = torch.stack([images // (width * width), (images // width) % width, images % width], 1) - grid["max_image"]
    shifts = t - grid["wrap"][senders] + grid["wrap"][receivers]
    out_distances = positions.new_zeros(0)
    out_vectors = positions.new_zeros(0, 3)
    if distances or vectors:
        vec = positions.double()[senders] - positions.double()[receivers] \
            + torch.einsum("ek,ekc->ec", shifts.double(), cells.double()[system[receivers]])
        if distances:
            out_distances = vec.norm(dim=1).to(positions.dtype)
        if vectors:
            out_vectors = vec.to(positions.dtype)
    return senders, receivers, shifts, ptr, out_distances, out_vectors
