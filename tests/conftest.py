import os

import pytest
import torch

# Under pytest-xdist each worker gets one thread so workers do not fight over the cores;
# tests about thread counts set them explicitly.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture
def seeded():
    """A fresh generator per test: inputs are random but each failure is reproducible."""
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))


def poison(shape, dtype, device="cpu"):
    """A buffer full of NaN so that elements a kernel forgets to write show up."""
    return torch.full(shape, float("nan"), dtype=dtype, device=device)
