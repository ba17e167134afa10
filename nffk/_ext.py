"""Loads the compiled extension `nffk._C` once; nffk keeps working without it."""
import warnings

import torch  # noqa: F401  (loads libtorch, which nffk._C links against)

try:
    from nffk import _C  # noqa: F401  (importing registers the torch.ops.nffk_C kernels)

    ERROR = None
except Exception as err:  # noqa: BLE001 - any load failure means "no extension"
    _C = None
    ERROR = f"{type(err).__name__}: {err}"
    warnings.warn(
        f"nffk: the compiled extension nffk._C could not be loaded ({ERROR}); the 'cpu' and 'cuda' "
        "backends are unavailable and 'auto' uses the pure-torch reference. Rebuild it with "
        "`pip install --no-build-isolation -e .` (or `python setup.py build_ext --inplace`).",
        RuntimeWarning,
        stacklevel=2,
    )


def loaded() -> bool:
    return _C is not None


def with_cuda() -> bool:
    return _C is not None and bool(_C.with_cuda)
