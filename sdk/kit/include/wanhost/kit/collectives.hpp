// Differentiable collectives: the communication of tensor, sequence and context parallelism as
// autograd operations, so that a model's forward pass can use them and backward does the matching
// collective (Megatron-LM's megatron/core/tensor_parallel/mappings.py names the same four pairs;
// docs/parallelism.md). Each takes the communicator of the group the tensor is split over; with a
// group of one rank every function returns its input unchanged.
//
//   forward                     backward
//   copy_to_group       identity                    all-reduce (sum)
//   reduce_from_group   all-reduce (sum)            identity
//   sum_over_group      all-reduce (sum)            all-reduce (sum)
//   gather_along        all-gather along `dim`      this rank's slice
//   all_gather_along    all-gather along `dim`      reduce-scatter (sum) along `dim`
//   reduce_scatter_along  reduce-scatter along `dim`  all-gather along `dim`
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "wanhost/communicator.hpp"

namespace wanhost::collectives {

// Enters a region where each rank computes a different part from the same input (a
// column-parallel layer): the input's gradient is the sum of every rank's part.
at::Tensor copy_to_group(const at::Tensor& x, const CommunicatorPtr& group);
// Leaves such a region: every rank's partial result summed (a row-parallel layer's output).
at::Tensor reduce_from_group(const at::Tensor& x, const CommunicatorPtr& group);
// A sum every rank uses on its own (a statistic over features split across the group, such as
// the sum of squares of an RMSNorm over all heads): gradients are summed both ways.
at::Tensor sum_over_group(const at::Tensor& x, const CommunicatorPtr& group);
// Concatenation of every rank's `x` along `dim` in rank order (equal sizes on every rank), for a
// whole that every rank then uses in the same way (its gradient is the same on every rank, so
// each keeps its slice).
at::Tensor gather_along(const at::Tensor& x, std::int64_t dim, const CommunicatorPtr& group);
// The same concatenation for a whole that each rank uses for its own part of the work (the keys
// and values of context parallelism, whose every rank attends its own queries to all of them):
// the gradient of each rank's slice is the sum of every rank's gradient of it.
at::Tensor all_gather_along(const at::Tensor& x, std::int64_t dim, const CommunicatorPtr& group);
// Every rank's partial sums added up, each rank keeping its equal part along `dim` (a
// row-parallel layer's output going back to a sequence-parallel region).
at::Tensor reduce_scatter_along(const at::Tensor& x, std::int64_t dim,
                                const CommunicatorPtr& group);

}  // namespace wanhost::collectives
