"""Triton kernels run compiled on a GPU when there is one, and under the Triton interpreter on
the CPU otherwise. TRITON_INTERPRET must be set before the kernels are defined, i.e. before
`nffk.kernels` is first imported: this conftest runs before any test module of this folder."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

triton = pytest.importorskip("triton", reason="the triton package is not installed")

from nffk import backends  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture
def poisoned(monkeypatch):
    """Every buffer the Triton launchers allocate starts as NaN, so an element a kernel forgets to
    write shows up in the comparison with the reference."""
    kernels = backends.triton_kernels()

    def allocate(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(kernels.tensor_product, "_allocate", allocate)
    monkeypatch.setattr(kernels.spherical_harmonics, "_allocate", allocate)
    return kernels
