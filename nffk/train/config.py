"""Settings of one training run (JSON-able; stored in every checkpoint)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from nffk.models import ARCHITECTURES, FORCE_MODES

# Learning rates tuned at each architecture's base width (ForceFieldModel.base_width) on the
# default QM9-xTB data (see README, "Training"); muP carries them to every width.
DEFAULT_LR = {"MPNN": 1e-1, "EGNN": 1e-1, "Equivariant": 1e-1}
DTYPES = ("float32", "float64")


@dataclass
class TrainConfig:
    arch: str
    width: int
    lmax: int | None = None
    forces: str = "direct"  # "direct" (equivariant force head, as in the study) or "conservative" (-dE/dx)
    data_budget: int | None = None  # atoms of the training split to use (a prefix of molecules); None: all
    batch_size: int = 16  # structures per global batch (split across processes)
    lr: float | None = None  # None: DEFAULT_LR of the architecture
    warmup_fraction: float = 0.05  # linear warm-up over this fraction of the steps (schedule-free)
    weight_decay: float = 0.0
    clip: float = 1.0  # gradient-norm clipping
    mup: bool = True
    cutoff: float = 4.0  # Å; small organic molecules (QM9): 5 Å costs ~25 % more edges
    num_basis: int = 8
    n_evals: int = 16  # validation points, log-spaced over the last 99 % of the steps
    val_structures: int = 256  # validation structures (a fixed sample of the val split); 0: all
    val_batch_size: int = 64
    seed: int = 0  # model initialisation and data order
    dtype: str = "float32"
    device: str = "cpu"
    num_workers: int = 0  # DataLoader workers building graphs
    threads: int | None = None  # torch intra-op threads (None: leave as is)
    checkpoint_seconds: float = 120.0  # also checkpoint between validation points this often
    model_options: dict = field(default_factory=dict)  # extra model arguments (e.g. radial_hidden)

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}, got {self.arch!r}")
        if self.forces not in FORCE_MODES:
            raise ValueError(f"forces must be one of {FORCE_MODES}, got {self.forces!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        for name in ("width", "batch_size", "n_evals", "val_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.data_budget is not None and (not isinstance(self.data_budget, int) or self.data_budget < 1):
            raise ValueError(f"data_budget must be None or an int >= 1 (atoms), got {self.data_budget!r}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if not self.clip > 0 or not self.cutoff > 0:
            raise ValueError(f"clip and cutoff must be > 0, got {self.clip} and {self.cutoff}")
        if self.val_structures < 0:
            raise ValueError(f"val_structures must be >= 0, got {self.val_structures}")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.arch]

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training settings {unknown} (known: {sorted(known)})")
        return cls(**data)

    def identity(self) -> dict:
        """What a resumed run must share with the run it resumes: everything but where it runs,
        with the learning rate resolved (a changed default must not pass unnoticed)."""
        kept = {k: v for k, v in self.as_dict().items() if k not in ("device", "num_workers", "threads",
                                                                     "checkpoint_seconds")}
        return {**kept, "lr": self.learning_rate}
