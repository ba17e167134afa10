// Uninitialised CPU output tensors for kernels that write all of a large fresh buffer.
#pragma once
#include <ATen/ATen.h>

namespace nffk::cpu {

// An uninitialised tensor. From a megabyte on, its memory is a 2 MiB-aligned anonymous mapping
// with huge-page advice, and a freed one is kept for the next output of about its size (see
// mapped_outputs.cpp); smaller ones come from torch's allocator. The storage stays resizable:
// growing it moves it to torch's allocator.
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options);

// The op nffk_C::release_outputs: unmaps the kept mappings of freed outputs; returns their bytes.
int64_t release_outputs();

// The op nffk_C::empty_output (nffk/ops/_outputs.py): the same for a dtype and a shape.
at::Tensor empty_output_op(at::IntArrayRef sizes, at::ScalarType dtype);

}  // namespace nffk::cpu
