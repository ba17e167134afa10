"""Sweep presets of `nffk scale`: which dataset, which architectures and widths, which settings.

| preset | dataset | grid | meant for |
| --- | --- | --- | --- |
| `smoke` | 64 QM9-xTB structures | MPNN, EGNN, Equivariant lmax 1 x 2 tiny widths | the tests (about a minute) |
| `default` | QM9-xTB, 8,192 structures | MPNN, EGNN, Equivariant lmax 1 and 2 x 5 widths | the README's main job: < 20 min on 2 cores |
| `lmax` | QM9-xTB, 8,192 structures | Equivariant lmax 1..6 x 4 widths | the irrep-order ladder (hours on a CPU) |
| `large` | QM9-xTB, 100,000 structures | MPNN, EGNN x 6 widths, Equivariant lmax 1..4 x 5 widths | a GPU or a cluster (`--shard`) |

Widths of the default preset were planned from steps/s measured on a 2-core machine (README,
"Scaling study"): a full pass of the largest models costs about as much as all the small ones
together, and two workers share the runs. With the cpu kernels (fused conv) the whole preset,
dataset included, takes under 10 minutes there; five widths per architecture leave three
interior models whose points the frontier fits may use.

`grid_from_json` reads a user's own grid: {"architectures": ["MPNN", ["Equivariant", 2], ...],
"widths": [...] or {label: [...]}, "data_budgets": [null, 20000], "options": {...}}.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from nffk.scaling.sweep import make_grid
from nffk.train.config import DEFAULT_LR, TrainConfig


@dataclass
class Preset:
    name: str
    description: str
    data_root: str
    data_structures: int
    architectures: list
    widths: dict  # label -> widths
    options: dict = field(default_factory=dict)  # TrainConfig settings shared by every run
    data_budgets: tuple = (None,)
    report: dict = field(default_factory=dict)  # write_report settings

    def labels(self) -> list[str]:
        from nffk.scaling.points import arch_label

        return [arch_label(*((a, None) if isinstance(a, str) else a)) for a in self.architectures]


def _options(**overrides) -> dict:
    base = TrainConfig("MPNN", 1)
    keys = ("batch_size", "cutoff", "n_evals", "val_structures", "forces", "warmup_fraction", "clip", "seed")
    return {**{k: getattr(base, k) for k in keys}, **overrides}


ARCH_LADDER = ["MPNN", "EGNN", ("Equivariant", 1), ("Equivariant", 2)]

PRESETS = {
    "smoke": Preset(
        "smoke", "a tiny sweep to check the pipeline end to end (about a minute)",
        "data/qm9-xtb-smoke", 64, ["MPNN", "EGNN", ("Equivariant", 1)],
        {"MPNN": [4, 8], "EGNN": [4, 8], "Equivariant-lmax1": [2, 4]},
        _options(batch_size=4, n_evals=5, val_structures=8, val_batch_size=8),
        report={"n_boot": 20}),
    "default": Preset(
        "default", "the ladder of symmetry on QM9-xTB: MPNN, EGNN, Equivariant lmax 1 and 2, five widths each",
        "data/qm9-xtb", 8192, ARCH_LADDER,
        {"MPNN": [8, 16, 32, 64, 128], "EGNN": [8, 16, 32, 64, 128], "Equivariant-lmax1": [2, 4, 8, 16, 32],
         "Equivariant-lmax2": [2, 4, 8, 16, 32]},
        _options(), report={"n_boot": 100}),
    "lmax": Preset(
        "lmax", "Equivariant at every irrep order lmax = 1..6 (the second ladder; hours on a CPU)",
        "data/qm9-xtb", 8192, [("Equivariant", l) for l in range(1, 7)],
        {f"Equivariant-lmax{l}": [4, 8, 16, 32] for l in range(1, 7)}, _options()),
    "large": Preset(
        "large", "more data and wider models, for a GPU or many machines (--shard k/n)",
        "data/qm9-xtb-100k", 100_000, ["MPNN", "EGNN"] + [("Equivariant", l) for l in range(1, 5)],
        {"MPNN": [32, 64, 128, 256, 512, 1024], "EGNN": [32, 64, 128, 256, 512, 1024],
         **{f"Equivariant-lmax{l}": [8, 16, 32, 64, 128] for l in range(1, 5)}},
        _options(batch_size=32, n_evals=24, val_structures=1024)),
}


def _entry(entry) -> dict:
    """A make_grid architecture entry ('MPNN', ('Equivariant', 2) or a dict) as a dict."""
    if isinstance(entry, str):
        return {"arch": entry, "lmax": None}
    if isinstance(entry, (list, tuple)):
        return {"arch": entry[0], "lmax": entry[1]}
    return dict(entry)


def with_learning_rates(architectures, options: dict) -> list:
    """Architecture entries (dicts) carrying their tuned learning rate, unless the options set one."""
    entries = []
    for entry in map(_entry, architectures):
        extra = dict(entry.get("options", {}))
        if "lr" not in options and "lr" not in extra:
            extra["lr"] = DEFAULT_LR[entry["arch"]]
        entries.append({**entry, "options": extra})
    return entries


def parse_architecture(text: str):
    """'MPNN', 'EGNN', 'Equivariant-lmax2' or 'Equivariant:2' -> a make_grid entry."""
    for separator in ("-lmax", ":"):
        if separator in text:
            name, lmax = text.split(separator, 1)
            try:
                return (name, int(lmax))
            except ValueError:
                raise ValueError(f"cannot read the irrep order in architecture {text!r}") from None
    return text


def grid_for(preset: Preset, archs=None, widths=None, data_budgets=None, options=None):
    """The RunSpecs of a preset, optionally with other architectures, widths, data budgets or options."""
    from nffk.models import ARCHITECTURES
    from nffk.scaling.points import arch_label

    architectures = [parse_architecture(a) for a in archs] if archs else list(preset.architectures)
    for entry in architectures:
        name = entry if isinstance(entry, str) else entry[0]
        if name not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {name!r} (choose from {sorted(ARCHITECTURES)})")
        if name == "Equivariant" and isinstance(entry, str):
            raise ValueError("give Equivariant with its irrep order, e.g. Equivariant-lmax2")
    if widths:
        chosen_widths = list(widths)
    else:
        chosen_widths = {}
        for entry in map(_entry, architectures):
            label = arch_label(entry["arch"], entry["lmax"])
            if label not in preset.widths:
                raise ValueError(f"the {preset.name} preset has no widths for {label}: give them with --widths")
            chosen_widths[label] = preset.widths[label]
    merged = {**preset.options, **(options or {})}
    budgets = tuple(data_budgets) if data_budgets else preset.data_budgets
    return make_grid(with_learning_rates(architectures, merged), chosen_widths, budgets, merged)


def grid_from_json(path) -> tuple[list, dict]:
    """(RunSpecs, options) from a user's grid file (see the module docstring)."""
    doc = json.loads(Path(path).read_text())
    if not isinstance(doc, dict) or "architectures" not in doc:
        raise ValueError(f"{path}: a grid file is a JSON object with 'architectures' (and 'widths', "
                         "'data_budgets', 'options')")
    options = {**_options(), **doc.get("options", {})}
    architectures = [parse_architecture(a) if isinstance(a, str) else a for a in doc["architectures"]]
    specs = make_grid(with_learning_rates(architectures, options), doc.get("widths"),
                      tuple(doc.get("data_budgets") or (None,)), options)
    return specs, options
