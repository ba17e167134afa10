"""Synthetic sweeps drawn from known laws: to test the fits, try the report, and exercise the
sweep bookkeeping without training a model.

`SyntheticTrainer` is a stand-in for the real `train_fn(spec, run_dir)`: it "trains" by writing
the validation records a run obeying L(N, D) = E + A N^-alpha + B D^-beta (times log-normal
noise) would log, checkpoints after every record, and resumes from its checkpoint when called
again, exactly as a real training function must. Noise is a function of (seed, run, step), so an
interrupted and resumed run logs the same numbers as one that ran straight through.
"""
from __future__ import annotations

import os
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from nffk.scaling.runlog import MetricsLog, atomic_write_json, read_json
from nffk.scaling.sweep import Sweep, make_grid


@dataclass(frozen=True)
class Law:
    """L(N, D) = E + A N^-alpha + B D^-beta."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float

    def loss(self, N, D):
        N = np.asarray(N, dtype=np.float64)
        D = np.asarray(D, dtype=np.float64)
        return self.E + self.A * N ** -self.alpha + self.B * D ** -self.beta

    @property
    def a(self) -> float:
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    @property
    def gamma(self) -> float:
        return self.alpha * self.beta / (self.alpha + self.beta)


def law_with(alpha: float, beta: float, E: float = 0.05, share: float = 0.3, N_ref: float = 1e5,
             D_ref: float = 1e6) -> Law:
    """A law whose N and D terms each contribute `share` to the loss at (N_ref, D_ref)."""
    return Law(E=E, A=share * N_ref ** alpha, alpha=alpha, B=share * D_ref ** beta, beta=beta)


# Exponents in the spirit of the study (more built-in symmetry, steeper laws); not measurements.
DEMO_LAWS = {
    "MPNN": law_with(0.28, 0.31),
    "EGNN": law_with(0.39, 0.39),
    "Equivariant-lmax1": law_with(0.55, 0.6),
    "Equivariant-lmax2": law_with(0.8, 0.75),
}
DEMO_ARCHITECTURES = ["MPNN", "EGNN", ("Equivariant", 1), ("Equivariant", 2)]
DEMO_WIDTHS = [16, 32, 64, 128, 256]
# forward FLOPs per parameter per atom (the study's kappa) and a made-up throughput per architecture
DEMO_KAPPA = {"MPNN": 2.3, "EGNN": 28.0, "Equivariant": 74.0}
DEMO_FLOPS_PER_SECOND = {"MPNN": 4e10, "EGNN": 2e10, "Equivariant": 5e9}


def demo_params(spec) -> int:
    """Parameter count of a made-up model: quadratic in width, more for higher lmax."""
    per_width2 = {"MPNN": 15.0, "EGNN": 10.0}.get(spec.arch, 6.0 * (1 + (spec.lmax or 0)))
    return int(per_width2 * spec.width ** 2 + 50 * spec.width)


class SyntheticCrash(RuntimeError):
    """Raised by SyntheticTrainer at a requested validation point, to test failure handling."""


class SyntheticTrainer:
    """A picklable `train_fn(spec, run_dir)` writing metrics from known laws (see module doc).

    laws: {architecture label or name: Law}; n_evals validation points log-spaced over the
    last 99 % of the run; dataset_atoms: atoms in one pass when spec.data_budget is None;
    sleep: seconds per validation point (to make runs slow enough to interrupt);
    calls_log: a file each call appends "pid run_id first_eval" to; crash_at: {run_id: eval
    index} raising SyntheticCrash after that record is written, before its checkpoint.
    """

    def __init__(self, laws=None, *, noise: float = 0.02, n_evals: int = 24, atoms_per_step: int = 1728,
                 dataset_atoms: int = 4_000_000, seed: int = 0, kappa=None, flops_per_second=None,
                 params_fn=demo_params, sleep: float = 0.0, calls_log=None, crash_at=None, durable: bool = False):
        self.laws = dict(DEMO_LAWS if laws is None else laws)
        self.noise = noise
        self.n_evals = n_evals
        self.atoms_per_step = atoms_per_step
        self.dataset_atoms = dataset_atoms
        self.seed = seed
        self.kappa = dict(DEMO_KAPPA if kappa is None else kappa)
        self.flops_per_second = dict(DEMO_FLOPS_PER_SECOND if flops_per_second is None else flops_per_second)
        self.params_fn = params_fn
        self.sleep = sleep
        self.calls_log = None if calls_log is None else str(calls_log)
        self.crash_at = dict(crash_at or {})
        self.durable = durable

    def _lookup(self, table: dict, spec, what: str):
        for key in (spec.label, spec.arch):
            if key in table:
                return table[key]
        raise ValueError(f"SyntheticTrainer has no {what} for architecture {spec.label!r} (has {sorted(table)})")

    def eval_steps(self, total_steps: int) -> list[int]:
        steps = np.geomspace(max(1, total_steps / 100), total_steps, self.n_evals)
        return sorted(set(int(round(s)) for s in steps))

    def __call__(self, spec, run_dir) -> dict:
        run_dir = Path(run_dir)
        law = self._lookup(self.laws, spec, "law")
        kappa = self._lookup(self.kappa, spec, "kappa")
        speed = self._lookup(self.flops_per_second, spec, "throughput")
        N = self.params_fn(spec)
        atoms = spec.data_budget or self.dataset_atoms
        total_steps = max(1, atoms // self.atoms_per_step)
        steps = self.eval_steps(total_steps)
        checkpoint = run_dir / "checkpoint.json"
        log = MetricsLog(run_dir, durable=self.durable)
        first = 0
        if checkpoint.exists():  # resume: forget what was logged after the checkpoint
            state = read_json(checkpoint)
            first = state["eval"] + 1
            log.rewind(state["step"])
        else:
            log.rewind(-1)
        if self.calls_log:
            with open(self.calls_log, "a") as handle:
                handle.write(f"{os.getpid()} {spec.run_id} {first}\n")
        run_key = zlib.crc32(spec.run_id.encode())
        jitter = 1.0 + 0.05 * np.random.default_rng([self.seed, run_key]).standard_normal()
        for index in range(first, len(steps)):
            step = steps[index]
            D = step * self.atoms_per_step
            rng = np.random.default_rng([self.seed, run_key, step])
            val = float(law.loss(N, D) * np.exp(self.noise * rng.standard_normal()))
            flops = 3.0 * kappa * N * D
            log.append({"run": spec.run_id, "arch": spec.arch, "width": spec.width, "lmax": spec.lmax,
                        "step": step, "params": N, "atoms_seen": D, "flops": flops,
                        "wall": flops / speed * abs(jitter),
                        "val_loss": val, "train_loss": val * float(np.exp(0.5 * self.noise * rng.standard_normal()))})
            if self.crash_at.get(spec.run_id) == index:
                raise SyntheticCrash(f"simulated crash of {spec.run_id} at validation point {index}")
            if self.sleep:
                time.sleep(self.sleep)
            atomic_write_json(checkpoint, {"eval": index, "step": step}, durable=self.durable)
        return {"total_steps": total_steps, "params": N}


def write_synthetic_sweep(root, laws=None, architectures=None, widths=None, data_budgets=(None,),
                          verbose: bool = False, **trainer_options) -> Sweep:
    """A complete sweep directory drawn from known laws (default: DEMO_LAWS over DEMO_WIDTHS)."""
    trainer = SyntheticTrainer(laws, **trainer_options)
    specs = make_grid(architectures or DEMO_ARCHITECTURES, widths or DEMO_WIDTHS, data_budgets)
    laws_meta = {label: asdict(law) for label, law in trainer.laws.items()}
    sweep = Sweep(root, specs, meta={"synthetic": {"laws": laws_meta, "noise": trainer.noise, "seed": trainer.seed}})
    start = time.perf_counter()
    sweep.run(trainer, verbose=verbose)
    sweep.record_timing("training", time.perf_counter() - start)
    return sweep
