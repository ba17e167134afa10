"""nffk.data: datasets for neural force fields.

generate_dataset  QM9 conformers labelled with GFN2-xTB (tblite), split by molecule, sharded
load_dataset      one split of a dataset folder as a torch Dataset of `Structure`s
read_extxyz       users' own data (extended XYZ with energies and forces) as `Structure`s
import_extxyz     the same splitting / reference energies / statistics for such a file
collate, make_loader  graph batches (nffk neighbour list) and a DataLoader of them
"""
from nffk.data.generate import DEFAULT_ROOT, DEFAULT_STRUCTURES, generate_dataset  # noqa: F401
from nffk.data.sampling import SamplerSettings  # noqa: F401
from nffk.data.store import StructureDataset, fit_reference_energies, load_dataset  # noqa: F401
from nffk.data.structure import Structure  # noqa: F401
from nffk.data.extxyz import build_dataset, import_extxyz, read_extxyz  # noqa: F401
from nffk.data.batch import Batch, collate, make_loader  # noqa: F401
