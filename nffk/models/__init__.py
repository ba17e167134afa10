"""The scaling-study architectures (the ladder of symmetry), built from `nffk.nn` and `nffk.ops`.

| model | symmetry | tensor order | depth | parameters (width w) |
| --- | --- | --- | --- | --- |
| `MPNN` | none built in (sees raw relative vectors) | 0 | 3 | 18 w^2 + O(w) |
| `EGNN` | E(3), Cartesian vector channels | 1 | 3 | ~22 w^2 (w/4 vector channels) |
| `Equivariant(lmax)` | E(3), irreps up to lmax (NequIP-style) | lmax | 3 | ~w^2 x (paths of the edge TP) + radial MLP |

`build_model(arch, width, lmax=None, **options)` builds one by name; options are those of
`ForceFieldModel` (elements, cutoff, statistics, reference_energies, forces, ...).
"""
from nffk.models.base import FORCE_MODES, ForceFieldModel  # noqa: F401
from nffk.models.egnn import EGNN  # noqa: F401
from nffk.models.equivariant import Equivariant  # noqa: F401
from nffk.models.mpnn import MPNN  # noqa: F401

ARCHITECTURES = {"MPNN": MPNN, "EGNN": EGNN, "Equivariant": Equivariant}


def build_model(arch: str, width: int, lmax: int | None = None, **options) -> ForceFieldModel:
    """A model by architecture name; `lmax` is required by (and only accepted for) `Equivariant`."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}, got {arch!r}")
    if arch == "Equivariant":
        if lmax is None:
            raise ValueError("Equivariant needs lmax (1..6)")
        return Equivariant(width, lmax=lmax, **options)
    if lmax is not None:
        raise ValueError(f"{arch} has no irrep order: lmax must be None, got {lmax!r}")
    return ARCHITECTURES[arch](width, **options)


def model_from_config(arch: str, config: dict) -> ForceFieldModel:
    """Rebuild a model from its `config` (as stored in checkpoints)."""
    config = dict(config)
    width = config.pop("width")
    return build_model(arch, width, config.pop("lmax", None), **config)
