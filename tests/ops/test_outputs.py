"""Output buffers of the compiled kernels: large CPU ones come from the extension's pool of
huge-page mappings (csrc/cpu/mapped_outputs.cpp) and are reused after they are freed, so kernels
must write every element of memory that still holds an earlier tensor's numbers."""
import sys

import pytest
import torch

from nffk import _ext
from nffk.ops import _outputs
from nffk.ops.tensor_product import KERNELS, TensorProductPlan

pytestmark = pytest.mark.skipif(not _ext.loaded(), reason="the compiled extension is not built")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the pool maps memory on Linux only")


def test_small_and_large_buffers_have_the_asked_shape_and_dtype():
    like = torch.zeros(1, dtype=torch.float64)
    for shape in [(3, 5), (0, 7), (600, 300)]:
        out = _outputs.new(shape, like)
        assert out.shape == shape and out.dtype == torch.float64 and out.is_contiguous()
        out.fill_(1.5)
        assert bool((out == 1.5).all())


def test_the_op_rejects_negative_sizes():
    with pytest.raises(RuntimeError, match="negative size"):
        torch.ops.nffk_C.empty_output([3, -1], torch.float32)


@linux_only
def test_a_freed_large_buffer_is_reused_and_every_element_rewritten():
    plan = TensorProductPlan("32x0e+32x1o", "0e+1o", "32x0e+32x1o+32x1e", [
        (0, 0, 0, "uvu", True), (1, 0, 1, "uvu", True), (1, 1, 2, "uvu", True)])
    batch = 2048  # 2048 x 224 float32: 1.8 MB, from the pool
    gen = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(batch, plan.dim_in1, generator=gen), torch.randn(batch, plan.dim_in2, generator=gen)
    w = torch.randn(batch, plan.weight_numel, generator=gen)
    old = _outputs.new((batch, plan.dim_out), x1)
    old.fill_(float("nan"))
    address = old.data_ptr()
    del old
    out = KERNELS["cpu"].forward(plan, x1, x2, w, False)
    assert out.data_ptr() == address, "the freed mapping was not reused"
    expected = KERNELS["reference"].forward(plan, x1.double(), x2.double(), w.double(), False)
    assert torch.isfinite(out).all()
    assert torch.allclose(out.double(), expected, rtol=1e-5, atol=1e-5)


@linux_only
def test_pooled_tensors_resize_and_pickle():
    out = _outputs.new((1024, 512), torch.zeros(1))
    out.fill_(2.0)
    out.resize_(2048, 512)  # grows: moves to torch's allocator
    assert bool((out[:1024] == 2.0).all())
    assert torch.equal(torch.load(_roundtrip(out[:1024]), weights_only=True), out[:1024])


def _roundtrip(t):
    import io
    buffer = io.BytesIO()
    torch.save(t, buffer)
    buffer.seek(0)
    return buffer


@linux_only
def test_empty_cache_hands_kept_mappings_back_and_the_pool_still_works():
    from nffk.ops import empty_cache
    like = torch.zeros(1)
    freed = _outputs.new((1 << 20,), like)  # 4 MiB, from the pool
    del freed  # kept by the pool
    assert empty_cache() >= 4 << 20
    assert empty_cache() == 0  # nothing left to hand back
    again = _outputs.new((1 << 20,), like)
    again.fill_(2.0)
    assert bool((again == 2.0).all())
    del again
    assert empty_cache() >= 4 << 20
