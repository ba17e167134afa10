// Declarations of the CPU drivers, registered in csrc/bindings.cpp.
#pragma once
#include <ATen/ATen.h>

namespace nffk::cpu {

at::Tensor segment_sum(const at::Tensor& src, const at::Tensor& ptr);

}  // namespace nffk::cpu
