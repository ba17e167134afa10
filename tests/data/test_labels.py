"""GFN2-xTB labels: units and signs checked by finite differences and by tblite's ASE calculator."""
import numpy as np
import pytest

from nffk.data.qm9 import load_qm9
from nffk.data.sampling import SamplerSettings, sample_conformer
from nffk.data.xtb import LabelError, xtb_energy_forces


@pytest.fixture(scope="module")
def molecule():
    numbers, positions = load_qm9().get(20)  # a 14-atom QM9 molecule
    return numbers, positions + np.random.default_rng(0).normal(0, 0.03, positions.shape)


def test_forces_are_minus_the_energy_gradient(molecule):
    numbers, positions = molecule
    energy, forces = xtb_energy_forces(numbers, positions)
    h = 1e-3  # Å; central differences are accurate to ~4e-5 eV/Å here
    rng = np.random.default_rng(1)
    for atom, axis in zip(rng.choice(len(numbers), 4, replace=False), rng.integers(0, 3, 4)):
        plus, minus = positions.copy(), positions.copy()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        slope = (xtb_energy_forces(numbers, plus)[0] - xtb_energy_forces(numbers, minus)[0]) / (2 * h)
        assert -slope == pytest.approx(forces[atom, axis], abs=1e-3)
    assert np.abs(forces).max() > 0.1  # a distorted molecule has real forces to check


def test_energy_and_forces_match_tblites_ase_calculator(molecule):
    from ase import Atoms
    from tblite.ase import TBLite

    numbers, positions = molecule
    energy, forces = xtb_energy_forces(numbers, positions)
    atoms = Atoms(numbers=numbers, positions=positions)
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    assert energy == pytest.approx(atoms.get_potential_energy(), abs=1e-6)
    np.testing.assert_allclose(forces, atoms.get_forces(), atol=1e-6)


def test_failures_are_label_errors_and_are_rejected(molecule):
    numbers, positions = molecule
    squashed = positions.copy()
    squashed[1] = squashed[0] + 0.01  # two atoms on top of each other
    with pytest.raises(LabelError):
        xtb_energy_forces(numbers, squashed, max_iterations=3)
    # absurd forces are rejected, then redrawn; with no attempt left the conformer is dropped
    hot = SamplerSettings(t_min=1000, t_max=1000, max_force=1e-3, max_attempts=2)
    assert sample_conformer(numbers, positions, 0, 1, 0, hot) is None
    fine = sample_conformer(numbers, positions, 0, 1, 0, SamplerSettings())
    assert fine is not None and np.abs(fine.forces).max() <= SamplerSettings().max_force


def test_sampling_is_deterministic_and_temperature_scales_the_distortion(molecule):
    numbers, positions = molecule
    a = sample_conformer(numbers, positions, 0, 7, 3, SamplerSettings())
    b = sample_conformer(numbers, positions, 0, 7, 3, SamplerSettings())
    c = sample_conformer(numbers, positions, 0, 7, 4, SamplerSettings())
    assert np.array_equal(a.positions, b.positions) and a.energy == b.energy
    assert not np.array_equal(a.positions, c.positions)
    shifts = {}
    for t in (100.0, 900.0):
        settings = SamplerSettings(t_min=t, t_max=t)
        shifts[t] = np.mean([np.sqrt(((sample_conformer(numbers, positions, 0, 7, k, settings).positions
                                       - positions) ** 2).mean()) for k in range(4)])
    assert shifts[900.0] / shifts[100.0] == pytest.approx(3.0, rel=0.35)  # sqrt(900/100)


def test_short_dynamics_option_moves_along_forces(molecule):
    numbers, positions = molecule
    settings = SamplerSettings(md_steps=3)
    with_md = sample_conformer(numbers, positions, 0, 7, 0, settings)
    without = sample_conformer(numbers, positions, 0, 7, 0, SamplerSettings())
    assert not np.allclose(with_md.positions, without.positions)
    energy, forces = xtb_energy_forces(numbers, with_md.positions)  # labels are those of the kept frame
    assert energy == pytest.approx(with_md.energy, abs=1e-8)
