"""GFN2-xTB energies and forces from `tblite`, converted to eV and eV/Å.

tblite works in atomic units: positions in Bohr, energy in Hartree, gradient in Hartree/Bohr.
Forces are minus the gradient. A calculation that fails (SCF not converged, or anything else
tblite raises) is reported as `LabelError` so the sampler can reject the structure.
"""
from contextlib import contextmanager

import numpy as np
from ase.units import Bohr, Hartree  # Bohr in Å, Hartree in eV

METHOD = "GFN2-xTB"


class LabelError(RuntimeError):
    """The xTB calculation of one structure failed."""


def _silent(message):
    del message


@contextmanager
def _one_openmp_thread():
    """tblite's OpenMP (the system libgomp, not torch's) would start one thread per core; for
    molecules this small that only adds overhead, and it thrashes on a busy machine. Parallelism
    comes from worker processes instead. If the runtime cannot be reached this is a no-op."""
    try:
        import ctypes
        gomp = ctypes.CDLL("libgomp.so.1")
        saved = gomp.omp_get_max_threads()
        gomp.omp_set_num_threads(1)
    except (OSError, AttributeError):
        yield
        return
    try:
        yield
    finally:
        gomp.omp_set_num_threads(saved)


def xtb_energy_forces(numbers: np.ndarray, positions: np.ndarray, charge: float = 0.0,
                      max_iterations: int = 250) -> tuple[float, np.ndarray]:
    """GFN2-xTB total energy (eV) and forces (eV/Å) of a neutral closed-shell molecule with
    `positions` in Å. Raises LabelError if tblite fails or returns non-finite numbers."""
    from tblite.interface import Calculator  # imported lazily: loads a Fortran library

    try:
        with _one_openmp_thread():
            calc = Calculator(METHOD, np.asarray(numbers, dtype=np.int64),
                              np.asarray(positions, dtype=np.float64) / Bohr,
                              charge=charge, logger=_silent, color=False)
            calc.set("verbosity", 0)
            calc.set("max-iter", max_iterations)
            result = calc.singlepoint()
        energy = float(result.get("energy")) * Hartree
        forces = -np.asarray(result.get("gradient"), dtype=np.float64) * (Hartree / Bohr)
    except Exception as error:  # noqa: BLE001 - tblite raises several types; all mean "no label"
        raise LabelError(f"{METHOD} failed: {error}") from error
    if not (np.isfinite(energy) and np.all(np.isfinite(forces))):
        raise LabelError(f"{METHOD} returned non-finite energy or forces")
    return energy, forces
