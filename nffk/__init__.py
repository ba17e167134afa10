"""nffk: neural force field kernels, an equivariance engine for PyTorch."""
from nffk import _ext  # noqa: F401  (loads the compiled kernels, warns once if it cannot)
from nffk import o3, ops  # noqa: F401

__version__ = "0.1.0"
