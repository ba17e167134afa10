"""Schedule-free AdamW with width transfer of the learning rate in the spirit of muP.

The study (in the standard parametrisation, weights initialised with variance 1/fan_in) divides
the learning rate of matrix-like parameters by the width multiplier m = width / base_width and
divides readouts by m. nffk's layers use e3nn's parametrisation instead: weights are initialised
with unit variance and the forward pass divides by sqrt(fan_in). The same muP scalings of the
*effective* weights (updates of hidden matrices ~ 1/fan_in, readouts initialised ~ 1/fan_in^2
and updated ~ 1/fan_in, input weights and biases unchanged) then read:

- matrix-like parameters (fan-in and fan-out both grow with the width): lr / sqrt(m);
- readouts: output multiplied by 1 / sqrt(m) in the forward pass (done by the models, see
  `nffk.models.base`), learning rate unchanged;
- every other parameter (species embeddings, biases, radial MLPs whose inputs are a fixed
  basis): lr unchanged.

So one learning rate tuned at `base_width` serves all widths. The roles are found by building
the same model at twice the width and comparing each parameter's size (x4: matrix-like, x2:
vector-like, x1: fixed), so any model with a `config` (and a width knob) gets them without
annotations.
"""
from __future__ import annotations

import torch

ROLES = ("matrix", "vector", "fixed")


def parameter_roles(model) -> dict[str, str]:
    """{parameter name: 'matrix' | 'vector' | 'fixed'} by how its size scales with the width."""
    from nffk.models import model_from_config

    with torch.random.fork_rng(devices=[]):  # building the twin must not move the caller's RNG
        twin = model_from_config(model.arch, {**model.config, "width": 2 * model.width})
    sizes = {name: p.numel() for name, p in twin.named_parameters()}
    roles = {}
    for name, p in model.named_parameters():
        if name not in sizes:
            raise ValueError(f"parameter {name} disappears when the width doubles; cannot infer its muP role")
        ratio = sizes[name] / p.numel()
        roles[name] = "matrix" if ratio > 3.0 else "vector" if ratio > 1.5 else "fixed"
    return roles


def make_optimizer(model, lr: float, *, warmup_steps: int = 0, weight_decay: float = 0.0,
                   betas=(0.9, 0.999), mup: bool = True):
    """Schedule-free AdamW over the model's parameters, matrix-like ones at lr / sqrt(width_multiplier)."""
    import schedulefree

    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    roles = parameter_roles(model) if mup else {name: "vector" for name, _ in model.named_parameters()}
    multiplier = model.width_multiplier if mup else 1.0
    groups = []
    for role in ROLES:
        params = [p for name, p in model.named_parameters() if roles[name] == role]
        if params:
            scale = multiplier ** -0.5 if role == "matrix" else 1.0
            groups.append({"params": params, "lr": lr * scale, "role": role})
    return schedulefree.AdamWScheduleFree(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                                          warmup_steps=int(warmup_steps))
