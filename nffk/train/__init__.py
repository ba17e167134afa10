"""nffk.train: training neural force fields the way the scaling study does.

- `loss`: per-atom energy MAE + mean force-error norm on normalised targets.
- `optim`: schedule-free AdamW with muP width transfer of the learning rate.
- `compute`: exact forward-FLOP model per batch (C = 3 x forward), kappa.
- `checkpoint`: atomic checkpoints, `weights_only` loading.
- `ddp`: data-parallel training under torchrun.
- `loop`: `train(config, data, run_dir)`; `cli`: the `nffk train` command.
"""
from nffk.train.config import DEFAULT_LR, TrainConfig  # noqa: F401
from nffk.train.loop import eval_steps, load_splits, train  # noqa: F401
from nffk.train.loss import LossTerms, Normalisation, loss_terms  # noqa: F401
from nffk.train.optim import make_optimizer, parameter_roles  # noqa: F401
