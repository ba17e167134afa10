// Declarations of the CPU drivers, registered in csrc/bindings.cpp.
#pragma once
#include <ATen/ATen.h>

#include <tuple>

namespace nffk::cpu {

at::Tensor segment_sum(const at::Tensor& src, const at::Tensor& ptr);

// (senders, receivers, shifts, ptr, distances, vectors); distances/vectors are empty unless asked.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> neighbor_list(
    const at::Tensor& positions, const at::Tensor& system_ptr, const at::Tensor& cells, const at::Tensor& pbc,
    double cutoff, bool self_interaction, bool distances, bool vectors);

}  // namespace nffk::cpu
