import pytest

from nffk.testing import toy_dataset


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    """A small dataset folder (Morse pair potential, H/C/O clusters): 128 training structures."""
    return toy_dataset(tmp_path_factory.mktemp("toy") / "data", num_structures=160, seed=0)
