import pytest
import torch

from nffk import _ext
from nffk.ops import segment_sum
from nffk.ops.segment_sum import segment_sum_reference
from nffk.testing import assert_thread_count_independent

needs_ext = pytest.mark.skipif(not _ext.loaded(), reason="compiled extension not loaded")


def random_ptr(segments, rows, gen):
    cuts = torch.sort(torch.randint(0, rows + 1, (segments - 1,), generator=gen)).values
    return torch.cat([torch.tensor([0]), cuts, torch.tensor([rows])])


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_matches_reference(dtype, seeded):
    for _ in range(10):
        rows, segments, width = (int(torch.randint(0, 200, (), generator=seeded)),
                                 int(torch.randint(1, 40, (), generator=seeded)),
                                 int(torch.randint(1, 9, (), generator=seeded)))
        src = torch.randn(rows, width, dtype=dtype, generator=seeded)
        ptr = random_ptr(segments, rows, seeded)
        expected = segment_sum_reference(src, ptr)
        # Independent oracle: a Python loop over segments.
        loop = torch.stack([src[ptr[s]:ptr[s + 1]].sum(0) for s in range(segments)])
        torch.testing.assert_close(expected, loop)
        torch.testing.assert_close(segment_sum(src, ptr, backend="cpu"), expected)


@needs_ext
def test_deterministic_across_threads(seeded):
    src = torch.randn(5000, 7, generator=seeded)
    ptr = random_ptr(31, 5000, seeded)
    assert_thread_count_independent(lambda: segment_sum(src, ptr, backend="cpu"), thread_counts=(1, 2))


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=needs_ext)])
def test_gradients(backend, seeded):
    src = torch.randn(20, 3, dtype=torch.float64, generator=seeded, requires_grad=True)
    ptr = torch.tensor([0, 5, 5, 12, 20])
    assert torch.autograd.gradcheck(lambda x: segment_sum(x, ptr, backend=backend), src)
    assert torch.autograd.gradgradcheck(lambda x: segment_sum(x, ptr, backend=backend), src)


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=needs_ext)])
def test_opcheck_and_compile(backend, seeded):
    src = torch.randn(12, 4, generator=seeded, requires_grad=True)
    ptr = torch.tensor([0, 4, 12])
    torch.library.opcheck(torch.ops.nffk.segment_sum.default, (src, ptr, backend))
    compiled = torch.compile(lambda x: segment_sum(x, ptr, backend=backend), fullgraph=True)
    torch.testing.assert_close(compiled(src), segment_sum_reference(src, ptr))


def test_bad_input():
    with pytest.raises(ValueError, match="src must be 2-D"):
        segment_sum(torch.zeros(3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="ptr must be a non-empty 1-D int64"):
        segment_sum(torch.zeros(3, 1), torch.tensor([0.0, 3.0]))
    with pytest.raises(ValueError, match="non-decreasing"):
        segment_sum(torch.zeros(3, 1), torch.tensor([0, 2, 1, 3]))
    with pytest.raises(ValueError, match="non-decreasing"):
        segment_sum(torch.zeros(3, 1), torch.tensor([0, 2]))
