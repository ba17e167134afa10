"""Conformers away from equilibrium, drawn deterministically from (seed, molecule, conformer).

Why this sampler. A force field learns forces from structures where forces are not zero, so
each QM9 equilibrium geometry is distorted the way heat distorts it. The proper tool, normal
mode sampling, needs a Hessian per molecule (6n xTB calls), which would cost more than the
labels themselves; a short ab-initio molecular dynamics run costs one xTB call per step. The
default is therefore *thermal displacement*: every atom moves by an independent isotropic
Gaussian with standard deviation

    sigma_i = amplitude * sqrt(T / 300 K) * (m_C / m_i) ** (1/4)

`sqrt(T)` is equipartition (the mean squared displacement of a harmonic mode grows with kT);
the mass factor sits between the classical limit (amplitude independent of mass) and the
quantum zero-point limit (proportional to m^(-1/2)) so hydrogens, whose X-H bends are soft
and light, move about twice as far as carbons. `amplitude` (Å for carbon at 300 K) was
calibrated on 60 random QM9 molecules so that GFN2-xTB forces at 300 K have an RMS of about
1 eV/Å, like molecular dynamics data sets such as rMD17 (at 1 K the RMS is 0.26 eV/Å: QM9's
B3LYP minima are not GFN2-xTB minima; at 1000 K it is 2.2 eV/Å). Each conformer draws its own temperature, log-uniform between
`t_min` and `t_max`, so the data covers small and large distortions alike.

With `md_steps > 0`, the displaced structure then starts `md_steps` steps of velocity-Verlet
dynamics with GFN2-xTB forces and Maxwell-Boltzmann velocities at T, and the last frame is
kept: displacements become correlated along soft modes, at (md_steps + 1) xTB calls per
structure.

A structure is rejected when xTB fails or any force exceeds `max_force` (atoms pushed into
each other); it is redrawn with the next attempt number, up to `max_attempts` times.
"""
from dataclasses import asdict, dataclass

import numpy as np
from ase.data import atomic_masses
from ase.units import fs, kB

from nffk.data.xtb import LabelError, xtb_energy_forces

# Keeps the random streams of the sampler apart from those of the splits.
SAMPLING_STREAM = 0x5A3B1E


@dataclass(frozen=True)
class SamplerSettings:
    t_min: float = 50.0           # K
    t_max: float = 1000.0         # K
    amplitude: float = 0.02       # Å, displacement RMS per Cartesian component of carbon at 300 K
    md_steps: int = 0             # velocity-Verlet steps with xTB forces after the displacement
    timestep: float = 0.5         # fs
    max_force: float = 25.0       # eV/Å; larger forces mean atoms were pushed into each other
    max_attempts: int = 5

    def validate(self) -> "SamplerSettings":
        if not 0 < self.t_min <= self.t_max:
            raise ValueError(f"temperatures must satisfy 0 < t_min <= t_max, got {self.t_min}, {self.t_max}")
        if self.amplitude < 0 or self.md_steps < 0 or self.timestep <= 0:
            raise ValueError("amplitude and md_steps must be >= 0 and timestep > 0")
        if self.max_force <= 0 or self.max_attempts < 1:
            raise ValueError("max_force must be > 0 and max_attempts >= 1")
        return self

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Conformer:
    positions: np.ndarray   # float64 [n, 3] Å
    energy: float           # eV
    forces: np.ndarray      # float64 [n, 3] eV/Å
    temperature: float      # K
    rejected: int           # attempts rejected before this one


def conformer_rng(seed: int, molecule: int, conformer: int, attempt: int) -> np.random.Generator:
    return np.random.default_rng([SAMPLING_STREAM, seed, molecule, conformer, attempt])


def displacement_sigma(numbers: np.ndarray, temperature: float, amplitude: float) -> np.ndarray:
    masses = atomic_masses[numbers]
    return amplitude * np.sqrt(temperature / 300.0) * (atomic_masses[6] / masses) ** 0.25


def _dynamics(numbers, positions, energy, forces, temperature, rng, settings):
    """Velocity Verlet in ASE units (Å, eV, amu); returns the last frame."""
    masses = atomic_masses[numbers][:, None]
    velocities = rng.normal(size=positions.shape) * np.sqrt(kB * temperature / masses)
    velocities -= (masses * velocities).sum(0) / masses.sum()  # no centre-of-mass drift
    dt = settings.timestep * fs
    for _ in range(settings.md_steps):
        positions = positions + velocities * dt + 0.5 * (forces / masses) * dt * dt
        energy, new_forces = xtb_energy_forces(numbers, positions)
        velocities = velocities + 0.5 * (forces + new_forces) / masses * dt
        forces = new_forces
    return positions, energy, forces


def sample_conformer(numbers: np.ndarray, equilibrium: np.ndarray, seed: int, molecule: int,
                     conformer: int, settings: SamplerSettings) -> Conformer | None:
    """One labelled conformer of a molecule, or None if every attempt was rejected."""
    for attempt in range(settings.max_attempts):
        rng = conformer_rng(seed, molecule, conformer, attempt)
        temperature = float(np.exp(rng.uniform(np.log(settings.t_min), np.log(settings.t_max))))
        sigma = displacement_sigma(numbers, temperature, settings.amplitude)
        positions = equilibrium + rng.normal(size=equilibrium.shape) * sigma[:, None]
        try:
            energy, forces = xtb_energy_forces(numbers, positions)
            if settings.md_steps:
                positions, energy, forces = _dynamics(numbers, positions, energy, forces,
                                                      temperature, rng, settings)
        except LabelError:
            continue
        if np.abs(forces).max() > settings.max_force:
            continue
        return Conformer(positions, energy, forces, temperature, attempt)
    return None
