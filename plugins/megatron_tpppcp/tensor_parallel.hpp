// Megatron-style tensor-parallel linear layers (Shoeybi et al. 2019, "Megatron-LM", section 3;
// megatron/core/tensor_parallel/layers.py). A layer is built whole (so that a model initialises
// and loads it exactly as on one process) and split over the tensor-parallel group by shard():
//  - column-parallel: each rank keeps rows [r*out/tp, (r+1)*out/tp) of the weight and the bias;
//    the input's gradient is summed over the group (copy_to_group);
//  - row-parallel: each rank keeps columns [r*in/tp, ...) of the weight; the partial products are
//    summed over the group (reduce_from_group) and the whole bias added once after the sum.
// With sequence parallelism (Korthikanti et al. 2022) the input of a column-parallel layer is
// already whole (the model gathered it: ParallelContext::gather_sequence, whose backward sums the
// ranks' gradients), and a row-parallel layer's sum is reduce-scattered along the tokens
// (dimension 1) instead of all-reduced, so that its output is this rank's tokens again.
#pragma once

#include <cstdint>
#include <string>

#include <ATen/core/Tensor.h>

#include "wanhost/communicator.hpp"
#include "wanhost/kit/fp8.hpp"
#include "wanhost/parallel.hpp"

namespace wanhost::plugins::megatron_tpppcp {

class TensorParallelLinear final : public LinearLayer {
 public:
  TensorParallelLinear(std::int64_t in, std::int64_t out, bool bias, LinearRole role,
                       CommunicatorPtr group, bool sequence_parallel);

  at::Tensor forward(const at::Tensor& x) override;

  // Keeps this rank's part of the weight (and bias); `name` is the layer's name for messages.
  // Throws ConfigError when the split dimension is not a multiple of the group size.
  void shard(const std::string& name);
  bool sharded() const { return sharded_; }
  // The dimension of `weight` (0 or 1) and of `bias` (0, or -1: whole) that shard() splits.
  std::int64_t weight_split_dim() const { return role_ == LinearRole::ColumnParallel ? 0 : 1; }
  std::int64_t bias_split_dim() const { return role_ == LinearRole::ColumnParallel ? 0 : -1; }
  LinearRole role() const { return role_; }

 private:
  at::Tensor local_product(const at::Tensor& x, const at::Tensor& bias);

  std::int64_t in_, out_;
  LinearRole role_;
  CommunicatorPtr group_;
  bool sequence_parallel_;
  at::Tensor weight_, bias_;
  bool sharded_ = false;
  Fp8WeightCache fp8_weight_;
};

}  // namespace wanhost::plugins::megatron_tpppcp
