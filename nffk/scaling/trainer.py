"""The training function a sweep calls for each run: `SweepTrainer(data)(spec, run_dir)`.

It turns a `RunSpec` (architecture, width, lmax, data budget, options = `TrainConfig` settings)
into a `TrainConfig` and calls `nffk.train.train`, which resumes from the run's checkpoint when
there is one. Picklable, so `Sweep.run(..., workers=N)` can hand it to worker processes.
"""
from __future__ import annotations

from pathlib import Path


class SweepTrainer:
    def __init__(self, data_root, device: str = "cpu", threads: int | None = None, progress: bool = True):
        self.data_root = str(Path(data_root))
        self.device, self.threads, self.progress = device, threads, progress

    def config(self, spec):
        from nffk.train import TrainConfig

        return TrainConfig.from_dict({**spec.options, "arch": spec.arch, "width": spec.width, "lmax": spec.lmax,
                                      "data_budget": spec.data_budget, "device": self.device,
                                      "threads": self.threads})

    def __call__(self, spec, run_dir) -> dict:
        from nffk.train import train

        return train(self.config(spec), self.data_root, run_dir, run_id=spec.run_id, progress=self.progress)
