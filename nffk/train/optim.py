"""Schedule-free AdamW with width transfer of the learning rate in the spirit of muP.

A parameter is *matrix-like* when both its fan-in and its fan-out grow with the width (its size
grows with width^2); its learning rate is lr / m, with m = width / base_width the width
multiplier. Every other parameter (embeddings of species, biases, radial MLPs whose inputs are
a fixed basis, readouts) keeps lr. Readouts divide their output by m (done by the models, see
`nffk.models.base`). With unit-variance initialisation and 1/sqrt(fan_in) in the forward pass,
this makes the update size of every layer independent of the width, so one learning rate tuned
at `base_width` serves all widths.

The roles are found by building the same model at twice the width and comparing each
parameter's size (x4: matrix-like, x2: vector-like, x1: fixed), so any model with a `config`
(and a width knob) gets them without annotations.
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
    """Schedule-free AdamW over the model's parameters, matrix-like ones at lr / width_multiplier."""
    import schedulefree

    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    roles = parameter_roles(model) if mup else {name: "vector" for name, _ in model.named_parameters()}
    multiplier = model.width_multiplier if mup else 1.0
    groups = []
    for role in ROLES:
        params = [p for name, p in model.named_parameters() if roles[name] == role]
        if params:
            scale = 1.0 / multiplier if role == "matrix" else 1.0
            groups.append({"params": params, "lr": lr * scale, "role": role})
    return schedulefree.AdamWScheduleFree(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                                          warmup_steps=int(warmup_steps))
