import os

import pytest
import torch

from nffk import _ext, backends


def test_extension_loaded_when_required():
    # CI sets NFFK_REQUIRE_EXT=1: there the compiled kernels must be present.
    if os.environ.get("NFFK_REQUIRE_EXT") == "1":
        assert _ext.loaded(), _ext.ERROR


def test_auto_picks_cpu_kernels_when_loaded():
    chosen = backends.resolve("op", "auto", torch.device("cpu"), ("reference", "cpu"))
    assert chosen == ("cpu" if _ext.loaded() else "reference")


def test_auto_skips_backends_the_op_lacks():
    assert backends.resolve("op", "auto", torch.device("cpu"), ("reference",)) == "reference"


def test_named_backend_missing_is_an_error():
    with pytest.raises(backends.BackendUnavailable, match="cuda"):
        backends.resolve("op", "cuda", torch.device("cpu"), ("reference", "cuda"))
    with pytest.raises(backends.BackendUnavailable, match="no 'cpu' implementation"):
        backends.resolve("op", "cpu", torch.device("cpu"), ("reference",))


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="backend must be one of"):
        backends.resolve("op", "fast", torch.device("cpu"), ("reference",))


def test_environment_overrides(monkeypatch):
    monkeypatch.setenv("NFFK_BACKEND", "reference")
    assert backends.resolve("op", "cpu", torch.device("cpu"), ("reference", "cpu")) == "reference"
    monkeypatch.setenv("NFFK_BACKEND", "bogus")
    with pytest.raises(ValueError, match="NFFK_BACKEND"):
        backends.resolve("op", "auto", torch.device("cpu"), ("reference",))
