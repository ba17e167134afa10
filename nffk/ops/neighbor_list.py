"""Neighbour lists: every pair (receiver i, sender j, integer cell shift S) closer than a cutoff.

Convention (that of ase's ``neighbor_list("ijS")`` with ``i = receivers``, ``j = senders``)::

    vector = positions[senders] - positions[receivers] + shifts @ cell[batch[receivers]]
    distance = |vector| < cutoff        (strictly)

Messages flow from sender j to receiver i. The output is sorted by receiver, then sender, then
shift, so it is deterministic and `ptr` is a CSR pointer over receivers. Many systems of
different sizes, cells and periodicities are handled in one call through the `batch` vector;
no pair ever crosses two systems.

Backends: ``"cpu"`` is a C++/OpenMP cell list (csrc/cpu/neighbor_list.cpp), ``"triton"`` the same
cell list for CUDA tensors (kernels/neighbor_list.py), ``"cuda"`` that one with its search kernel
in CUDA (csrc/cuda/neighbor_list.cu); ``"reference"`` is
a pure-torch brute force over all pairs and every periodic image that can matter, the oracle
the C++ kernel is tested against (and which is itself tested against ase). Neighbour lists are
integer outputs and are not differentiated; build differentiable edge vectors with
`edge_vectors`.
"""
import importlib.util
import math
from typing import NamedTuple, Optional

import torch

from nffk import backends

# "cuda": the search of csrc/cuda/neighbor_list.cu inside the Triton module's torch-side binning
# and sorting (so it needs the triton package as well).
IMPLEMENTED = ("reference", "cpu", "triton") + (("cuda",) if importlib.util.find_spec("triton") else ())
_TRITON = backends.TritonModule("neighbor_list")  # kernels/neighbor_list.py: the same cell list on the GPU


def _cuda_search(tensors, counts, offsets, senders, images, fill, cutoff_sq, image_bias, image_width,
                 self_interaction):
    torch.ops.nffk_C.nl_search_cuda(*tensors, cutoff_sq, image_bias, image_width, self_interaction, fill, offsets,
                                    counts, senders, images)
DEFAULT_MAX_PAIRS = 200_000_000  # ~10 GB of output; raise it explicitly for bigger requests


class NeighborList(NamedTuple):
    """Result of `neighbor_list`: pairs sorted by (receiver, sender, shift).

    senders    int64 [num_pairs]      j: the atom a message comes from
    receivers  int64 [num_pairs]      i: the atom it goes to (sorted, non-decreasing)
    shifts     int64 [num_pairs, 3]   integer cell shifts S (zero along non-periodic directions)
    ptr        int64 [num_atoms + 1]  receiver i's pairs are ptr[i]:ptr[i+1]
    distances  [num_pairs] in the positions' dtype, or None when not asked for
    vectors    [num_pairs, 3] edge vectors (not differentiable; see `edge_vectors`), or None
    """

    senders: torch.Tensor
    receivers: torch.Tensor
    shifts: torch.Tensor
    ptr: torch.Tensor
    distances: Optional[torch.Tensor] = None
    vectors: Optional[torch.Tensor] = None


# --------------------------------------------------------------------------------------------
# Validation: every argument is turned into the canonical per-system form, or a ValueError.
# --------------------------------------------------------------------------------------------
class _Systems(NamedTuple):
    positions: torch.Tensor  # [N, 3] float32/float64, contiguous, detached
    cutoff: float
    cell: torch.Tensor  # [S, 3, 3] float64 (zeros where no cell was given)
    pbc: torch.Tensor  # [S, 3] bool
    ptr: torch.Tensor  # [S + 1] int64: system s owns atoms ptr[s]:ptr[s+1]
    batch: Optional[torch.Tensor]  # [N] int64 or None (one system)


def _check_cutoff(cutoff) -> float:
    if isinstance(cutoff, torch.Tensor):
        if cutoff.numel() != 1:
            raise ValueError(f"cutoff must be a positive number, got a tensor of shape {tuple(cutoff.shape)}")
        cutoff = cutoff.item()
    if isinstance(cutoff, bool) or not isinstance(cutoff, (int, float)):
        raise ValueError(f"cutoff must be a positive number, got {type(cutoff).__name__}")
    cutoff = float(cutoff)
    if not math.isfinite(cutoff) or cutoff <= 0:
        raise ValueError(f"cutoff must be a finite number > 0, got {cutoff}")
    return cutoff


def _as_pbc(pbc, device) -> torch.Tensor:
    if isinstance(pbc, bool):
        return torch.full((3,), pbc, dtype=torch.bool, device=device)
    if not isinstance(pbc, torch.Tensor):
        try:
            pbc = torch.tensor(pbc, device=device)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"pbc must be a bool, 3 bools or a bool tensor [num_systems, 3], got {pbc!r}") from err
    if pbc.dtype != torch.bool:
        raise ValueError(f"pbc must hold booleans, got dtype {pbc.dtype}")
    if pbc.dim() not in (1, 2) or pbc.shape[-1] != 3:
        raise ValueError(f"pbc must have shape [3] or [num_systems, 3], got {tuple(pbc.shape)}")
    if pbc.device != device:
        raise ValueError(f"pbc is on {pbc.device} but positions are on {device}")
    return pbc


def _validate(positions, cutoff, cell, pbc, batch) -> _Systems:
    if not isinstance(positions, torch.Tensor):
        raise ValueError(f"positions must be a torch.Tensor [num_atoms, 3], got {type(positions).__name__}")
    if positions.dim() != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape [num_atoms, 3], got {tuple(positions.shape)}")
    if positions.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"positions must be float32 or float64, got {positions.dtype}")
    if positions.shape[0] >= 2**31:
        raise ValueError(f"at most 2**31 - 1 atoms per call, got {positions.shape[0]}")
    device = positions.device
    positions = positions.detach().contiguous()
    if not bool(torch.isfinite(positions).all()):
        raise ValueError("positions must be finite (found NaN or inf)")
    cutoff = _check_cutoff(cutoff)
    num_atoms = positions.shape[0]

    # Number of systems: from the cell, else pbc, else the batch vector.
    if cell is not None:
        if not isinstance(cell, torch.Tensor):
            raise ValueError(f"cell must be a torch.Tensor [3, 3] or [num_systems, 3, 3], got {type(cell).__name__}")
        if cell.dim() not in (2, 3) or tuple(cell.shape[-2:]) != (3, 3):
            raise ValueError(f"cell must have shape [3, 3] or [num_systems, 3, 3], got {tuple(cell.shape)}")
        if not cell.is_floating_point():
            raise ValueError(f"cell must be a floating-point tensor, got {cell.dtype}")
        if cell.device != device:
            raise ValueError(f"cell is on {cell.device} but positions are on {device}")
        if not bool(torch.isfinite(cell).all()):
            raise ValueError("cell must be finite (found NaN or inf)")
    if pbc is not None:
        pbc = _as_pbc(pbc, device)
    if batch is not None:
        if not isinstance(batch, torch.Tensor) or batch.dtype != torch.int64 or batch.dim() != 1:
            raise ValueError("batch must be a 1-D int64 tensor [num_atoms] of system indices")
        if batch.shape[0] != num_atoms:
            raise ValueError(f"batch has {batch.shape[0]} entries but positions has {num_atoms} atoms")
        if batch.device != device:
            raise ValueError(f"batch is on {batch.device} but positions are on {device}")

    sizes = [t.shape[0] for t in (cell, pbc) if t is not None and t.dim() == (3 if t is cell else 2)]
    if len(set(sizes)) > 1:
        raise ValueError(f"cell has {sizes[0]} systems but pbc has {sizes[1]}")
    if batch is None:
        num_systems = 1
        if sizes and sizes[0] != 1:
            raise ValueError(f"cell/pbc describe {sizes[0]} systems; pass a batch vector to say which atom is in which")
        ptr = torch.tensor([0, num_atoms], dtype=torch.int64, device=device)
    else:
        if num_atoms > 0:
            # One sync for all checks of the batch vector.
            first, last, unsorted = torch.stack([batch[0], batch[-1], (batch[1:] < batch[:-1]).any().long()]).tolist()
            if unsorted:
                raise ValueError("batch must be sorted (non-decreasing): atoms of one system must be contiguous")
            if first < 0:
                raise ValueError(f"batch must hold system indices >= 0, got {first}")
        else:
            last = -1
        num_systems = sizes[0] if sizes else last + 1
        if last >= num_systems:
            raise ValueError(f"batch refers to system {last} but cell/pbc describe only {num_systems} systems")
        ptr = torch.zeros(num_systems + 1, dtype=torch.int64, device=device)
        if num_systems > 0:
            torch.cumsum(torch.bincount(batch, minlength=num_systems), 0, out=ptr[1:])

    if cell is None:
        if pbc is not None and bool(pbc.any()):
            raise ValueError("pbc asks for periodic directions but no cell was given")
        cell = torch.zeros(num_systems, 3, 3, dtype=torch.float64, device=device)
        pbc = torch.zeros(num_systems, 3, dtype=torch.bool, device=device)
    else:
        cell = cell.detach().to(torch.float64).expand(num_systems, 3, 3) if cell.dim() == 2 else cell.detach().double()
        if pbc is None:
            pbc = torch.ones(num_systems, 3, dtype=torch.bool, device=device)
        pbc = pbc.expand(num_systems, 3)
    return _Systems(positions, cutoff, cell.contiguous(), pbc.contiguous(), ptr, batch)


def binning_cells(cell: torch.Tensor, pbc: torch.Tensor) -> torch.Tensor:
    """Cells [S, 3, 3] (float64) whose periodic rows are those of `cell` and whose non-periodic
    rows are an orthonormal basis of the complement of the periodic rows' span.

    Shifts along non-periodic directions are always zero, so replacing those rows changes no
    pair; it makes the fractional coordinates well defined (a slab may have a zero third row)
    and the bins as square as possible. Raises ValueError if the periodic rows are (nearly)
    linearly dependent: such a cell has no lattice to wrap atoms into.
    """
    num_systems = cell.shape[0]
    if num_systems == 0:
        return cell
    periodic_count = pbc.sum(-1)
    all_periodic, none_periodic = torch.stack([(periodic_count == 3).all(), (periodic_count == 0).all()]).tolist()
    if none_periodic:
        return torch.eye(3, dtype=torch.float64, device=cell.device).expand(num_systems, 3, 3).contiguous()
    if all_periodic:
        eff = cell
    else:
        # Right-singular vectors with zero singular value span the complement of the periodic rows.
        _, _, vh = torch.linalg.svd(torch.where(pbc[..., None], cell, 0.0))
        rank = torch.cumsum(~pbc, -1) - 1
        column = (periodic_count[:, None] + rank).clamp(0, 2)
        complement = torch.gather(vh, 1, column[..., None].expand(-1, -1, 3))
        eff = torch.where(pbc[..., None], cell, complement)
    # |det| of the rows scaled to unit length: the sine-like volume ratio of the periodic rows
    # (the completion rows are unit and orthogonal to them), free of overflow for huge cells.
    unit = eff / eff.abs().amax(-1, keepdim=True)
    ratio = torch.linalg.det(unit / unit.norm(dim=-1, keepdim=True)).abs()
    bad = ~(ratio > 1e-10)
    if bool(bad.any()):
        s = int(bad.nonzero()[0, 0])
        raise ValueError(f"cell of system {s} is singular along its periodic directions "
                         f"(pbc={pbc[s].tolist()}, cell={cell[s].tolist()}); periodic cell vectors "
                         "must be non-zero and linearly independent")
    return eff.contiguous()


def estimate_pairs(positions, cutoff, eff, pbc, ptr, batch) -> float:
    """A cheap estimate of the number of pairs, made before anything large is allocated.

    Per atom: density x sphere volume (the volume spans the cell along periodic directions and
    the atoms' extent, at least the cutoff, along open ones) plus the atom's own periodic images
    within the cutoff (which dominate when the cell is much thinner than the cutoff). Fully open
    systems are capped at all pairs."""
    num_systems = eff.shape[0]
    if num_systems == 0 or positions.shape[0] == 0:
        return 0.0
    counts = (ptr[1:] - ptr[:-1]).double()
    periodic_axes = int(pbc.sum())
    periodic = periodic_axes > 0
    # Coordinates along each row's dual direction; open rows are orthonormal, so these are in A.
    if not periodic:
        along = positions  # eff is the identity
    elif periodic_axes == 3 * num_systems:
        along = None  # fully periodic: the cells alone give the volumes
    elif batch is None:
        along = positions.double() @ eff[0].transpose(0, 1)
    else:
        along = torch.einsum("nc,nkc->nk", positions.double(), eff[batch])
    if along is None:
        extent = None
    elif batch is None:
        extent = (along.amax(0) - along.amin(0)).double()[None].clamp(min=cutoff)
    else:
        index3 = batch[:, None].expand(-1, 3)
        high = along.new_full((num_systems, 3), -math.inf).scatter_reduce(0, index3, along, "amax")
        low = along.new_full((num_systems, 3), math.inf).scatter_reduce(0, index3, along, "amin")
        extent = (high - low).double().nan_to_num(0.0).clamp(min=cutoff)  # empty systems: -inf
    sphere = 4.0 / 3.0 * math.pi * min(cutoff, 1e100) ** 3  # no float overflow for absurd cutoffs
    if not periodic:
        per_atom = torch.minimum(counts / extent.prod(-1) * sphere + 1, counts)
        return float((counts * per_atom).sum())
    volume = torch.linalg.det(eff).abs()
    if extent is not None:
        volume = volume * torch.where(pbc, 1.0, extent).prod(-1)
    spacing = 1.0 / torch.linalg.inv(eff).norm(dim=-2)  # distance between opposite cell faces
    own_images = torch.where(pbc, 2 * torch.floor(cutoff / spacing) + 1, 1.0).prod(-1)
    per_atom = counts / volume * sphere + own_images
    per_atom = torch.where(pbc.any(-1), per_atom, torch.minimum(per_atom, counts))
    return float((counts * per_atom).sum())


# --------------------------------------------------------------------------------------------
# Reference: brute force over all pairs and all periodic images that can be within the cutoff.
# --------------------------------------------------------------------------------------------
def _reference_one_system(pos, cell, pbc, cutoff, self_interaction):
    """(i, j, S) of one system, float64, unsorted. Independent of the C++ algorithm: no
    wrapping and no bins, the image range is derived pair by pair."""
    n = pos.shape[0]
    device = pos.device
    periodic = pbc.nonzero().flatten()
    rows = cell[periodic]  # [m, 3]
    if rows.shape[0] > 0:
        # Dual vectors of the periodic rows within their span: frac = pos @ dual, rows @ dual = I.
        dual = rows.T @ torch.linalg.inv(rows @ rows.T)  # [3, m]
        frac = pos @ dual
        reach = torch.ceil(cutoff * dual.norm(dim=0)).long() + 1  # |frac_j - frac_i + S| < cutoff |dual|; +1 spare
        # Base shift per pair puts frac_j - frac_i + base in [0, 1); then offsets cover the reach.
        base = -torch.floor(frac[None, :, :] - frac[:, None, :]).long()  # [n, n, m]
        axes = [torch.arange(-int(r), int(r) + 1, device=device) for r in reach]
        offsets = torch.cartesian_prod(*axes).reshape(-1, rows.shape[0])
    else:
        base = torch.zeros(n, n, 0, dtype=torch.int64, device=device)
        offsets = torch.zeros(1, 0, dtype=torch.int64, device=device)
    diff = pos[None, :, :] - pos[:, None, :]  # [i, j, 3]: positions[j] - positions[i]
    base_vector = diff + base.double() @ rows
    found = []
    for offset in offsets:
        vector = base_vector + offset.double() @ rows
        keep = (vector * vector).sum(-1) < cutoff * cutoff
        if not self_interaction and not bool(offset.any()):
            keep.fill_diagonal_(False)  # base is 0 on the diagonal: this is (i, i, S=0)
        i, j = keep.nonzero(as_tuple=True)
        shift = torch.zeros(i.shape[0], 3, dtype=torch.int64, device=device)
        shift[:, periodic] = base[i, j] + offset
        found.append((i, j, shift))
    return (torch.cat([f[0] for f in found]), torch.cat([f[1] for f in found]), torch.cat([f[2] for f in found]))


def _sort_pairs(receivers, senders, shifts):
    """Lexicographic order by (receiver, sender, shift0, shift1, shift2): stable sorts from the
    least significant key."""
    order = torch.arange(receivers.shape[0], device=receivers.device)
    for key in (shifts[:, 2], shifts[:, 1], shifts[:, 0], senders, receivers):
        order = order[torch.sort(key[order], stable=True).indices]
    return order


def neighbor_list_reference(systems: _Systems, self_interaction: bool):
    """Pure-torch (i, j, S) for canonical `_Systems`, sorted; the oracle of the C++ kernel."""
    pos = systems.positions.double()
    bounds = systems.ptr.tolist()
    receivers, senders, shifts = [], [], []
    for s in range(len(bounds) - 1):
        a, b = bounds[s], bounds[s + 1]
        if a == b:
            continue
        i, j, shift = _reference_one_system(pos[a:b], systems.cell[s], systems.pbc[s], systems.cutoff,
                                            self_interaction)
        receivers.append(i + a)
        senders.append(j + a)
        shifts.append(shift)
    if not receivers:
        empty = torch.zeros(0, dtype=torch.int64, device=pos.device)
        return empty, empty.clone(), torch.zeros(0, 3, dtype=torch.int64, device=pos.device)
    receivers, senders, shifts = torch.cat(receivers), torch.cat(senders), torch.cat(shifts)
    order = _sort_pairs(receivers, senders, shifts)
    return senders[order], receivers[order], shifts[order]


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
def neighbor_list(positions: torch.Tensor, cutoff: float, cell: Optional[torch.Tensor] = None, pbc=None,
                  batch: Optional[torch.Tensor] = None, self_interaction: bool = False, *,
                  return_distances: bool = False, return_vectors: bool = False,
                  max_pairs: float = DEFAULT_MAX_PAIRS, backend: str = "auto") -> NeighborList:
    """All pairs (receiver i, sender j, shift S) with |positions[j] - positions[i] + S @ cell| < cutoff.

    positions  [num_atoms, 3] float32 or float64 (atoms may lie outside the cell)
    cutoff     > 0, in the units of positions
    cell       None (open boundaries), [3, 3] (rows are lattice vectors; shared by all systems)
               or [num_systems, 3, 3]
    pbc        None (all True when a cell is given, all False otherwise), a bool, 3 bools,
               or a bool tensor [3] or [num_systems, 3]
    batch      None (one system) or int64 [num_atoms], the system of each atom, sorted
    self_interaction  include (i, i, 0) pairs (pairs of an atom with its own periodic images
               are always included, as in ase)
    return_distances / return_vectors  also return |vector| / vector (not differentiable)
    max_pairs  raise ValueError, before allocating, when the estimated number of pairs is larger

    Returns a `NeighborList` sorted by (receiver, sender, shift); same pair set as ase's
    ``neighbor_list("ijS", ...)`` with i = receivers, j = senders.
    """
    systems = _validate(positions, cutoff, cell, pbc, batch)
    if not isinstance(self_interaction, bool):
        raise ValueError(f"self_interaction must be a bool, got {type(self_interaction).__name__}")
    if not (isinstance(max_pairs, (int, float)) and max_pairs >= 0):
        raise ValueError(f"max_pairs must be a number >= 0, got {max_pairs!r}")
    chosen = backends.resolve("neighbor_list", backend, systems.positions.device, IMPLEMENTED)
    num_atoms, num_systems = systems.positions.shape[0], systems.cell.shape[0]
    if cell is None:  # open boundaries throughout: identity bins, and at most num_atoms**2 pairs
        eff = torch.eye(3, dtype=torch.float64, device=systems.positions.device).expand(num_systems, 3, 3).contiguous()
        bound = float(num_atoms) ** 2
    else:
        eff = binning_cells(systems.cell, systems.pbc)
        bound = math.inf
    # The estimate costs ~15 small torch ops: only worth it when the free bound is not enough.
    estimate = 0.0 if bound <= max_pairs else estimate_pairs(systems.positions, systems.cutoff, eff, systems.pbc,
                                                             systems.ptr, systems.batch)
    if estimate > max_pairs:
        raise ValueError(f"neighbor_list: this request would produce about {estimate:.3g} pairs "
                         f"(more than max_pairs={max_pairs:.3g}; ~{48 * estimate / 2**30:.3g} GiB); lower the "
                         "cutoff, check the cell and positions units, or raise max_pairs")

    if chosen in ("cpu", "triton", "cuda"):
        kernel = {"cpu": torch.ops.nffk_C.neighbor_list, "triton": _TRITON.neighbor_list,
                  "cuda": lambda *args: _TRITON.neighbor_list(*args, search=_cuda_search)}[chosen]
        senders, receivers, shifts, ptr, distances, vectors = kernel(
            systems.positions, systems.ptr, eff, systems.pbc, systems.cutoff, self_interaction,
            return_distances, return_vectors)
        return NeighborList(senders, receivers, shifts, ptr, distances if return_distances else None,
                            vectors if return_vectors else None)

    senders, receivers, shifts = neighbor_list_reference(systems, self_interaction)
    ptr = torch.zeros(num_atoms + 1, dtype=torch.int64, device=receivers.device)
    torch.cumsum(torch.bincount(receivers, minlength=num_atoms), 0, out=ptr[1:])
    distances = vectors = None
    if return_distances or return_vectors:
        vec = edge_vectors(systems.positions.double(), senders, receivers, shifts, systems.cell, systems.batch)
        vectors = vec.to(positions.dtype) if return_vectors else None
        distances = vec.norm(dim=-1).to(positions.dtype) if return_distances else None
    return NeighborList(senders, receivers, shifts, ptr, distances, vectors)


def edge_vectors(positions: torch.Tensor, senders: torch.Tensor, receivers: torch.Tensor,
                 shifts: Optional[torch.Tensor] = None, cell: Optional[torch.Tensor] = None,
                 batch: Optional[torch.Tensor] = None) -> torch.Tensor:
    """positions[senders] - positions[receivers] + shifts @ cell[batch[receivers]], [num_pairs, 3].

    Plain torch ops, so differentiable (to any order) with respect to positions and cell: forces
    are -dE/dpositions, and the stress follows from a strain applied to both positions and cell.
    `cell` may be [3, 3] (one system, or shared) or [num_systems, 3, 3] (then `batch` is needed
    unless num_systems is 1). The result has the positions' dtype.
    """
    if positions.dim() != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape [num_atoms, 3], got {tuple(positions.shape)}")
    if senders.shape != receivers.shape or senders.dim() != 1:
        raise ValueError(f"senders and receivers must be 1-D of equal length, got {tuple(senders.shape)} "
                         f"and {tuple(receivers.shape)}")
    vectors = positions[senders] - positions[receivers]
    if cell is None:
        return vectors
    if shifts is None or tuple(shifts.shape) != (senders.shape[0], 3):
        raise ValueError(f"shifts must have shape [num_pairs, 3] = [{senders.shape[0]}, 3] when a cell is given")
    cell = cell.to(positions.dtype)
    shifts = shifts.to(positions.dtype)
    if cell.dim() == 3 and cell.shape[0] == 1:
        cell = cell[0]
    if cell.dim() == 2:
        if tuple(cell.shape) != (3, 3):
            raise ValueError(f"cell must have shape [3, 3] or [num_systems, 3, 3], got {tuple(cell.shape)}")
        return vectors + shifts @ cell
    if cell.dim() != 3 or tuple(cell.shape[1:]) != (3, 3):
        raise ValueError(f"cell must have shape [3, 3] or [num_systems, 3, 3], got {tuple(cell.shape)}")
    if batch is None or batch.shape != (positions.shape[0],):
        raise ValueError("batch [num_atoms] is needed to pick each pair's cell from a [num_systems, 3, 3] cell")
    edge_cell = cell[batch[receivers]]
    return vectors + torch.bmm(shifts[:, None, :], edge_cell)[:, 0, :]
