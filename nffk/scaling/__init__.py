"""nffk.scaling: from logged training points to scaling laws.

- `points`: load validation points (N, D, C, wall-clock, loss) from sweep directories.
- `fit`: compute frontier L(C), loss surface L(N, D), bootstrap intervals, compute-optimal
  allocation, isoFLOP profiles.
- `report`: report.md, report.json and plots for one or more sweeps (`nffk report`).
- `sweep`: the grid of runs, resumable and shardable across processes and machines.
- `runlog`: the files a run writes (metrics.jsonl, run.json), crash-safe.
- `synthetic`: sweeps drawn from known laws, and a stand-in training function.
"""
from nffk.scaling.fit import (FitError, bootstrap, compute_optimal, fit_frontier, fit_loss_surface,  # noqa: F401
                              isoflop_profiles, lower_envelope)
from nffk.scaling.points import Points, load_points, load_sweeps  # noqa: F401
from nffk.scaling.runlog import MetricsLog  # noqa: F401
from nffk.scaling.sweep import RunSpec, Sweep, make_grid, merge, parse_shard  # noqa: F401
