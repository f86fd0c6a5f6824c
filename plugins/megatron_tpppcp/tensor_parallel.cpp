#include "tensor_parallel.hpp"

#include <stdexcept>

#include <ATen/ATen.h>

#include "wanhost/errors.hpp"
#include "wanhost/kit/collectives.hpp"
#include "wanhost/kit/fp8.hpp"

namespace wanhost::plugins::megatron_tpppcp {

TensorParallelLinear::TensorParallelLinear(std::int64_t in, std::int64_t out, bool bias,
                                           LinearRole role, CommunicatorPtr group,
                                           bool sequence_parallel)
    : in_(in),
      out_(out),
      role_(role),
      group_(std::move(group)),
      sequence_parallel_(sequence_parallel) {
  if (role_ == LinearRole::Replicated)
    throw std::logic_error("TensorParallelLinear: a replicated layer is a plain linear layer");
  weight_ = register_parameter("weight", at::empty({out, in}));
  if (bias) bias_ = register_parameter("bias", at::empty({out}));
}

void TensorParallelLinear::shard(const std::string& name) {
  if (sharded_) return;
  const int n = group_->size(), r = group_->rank();
  const std::int64_t dim = weight_split_dim();
  const std::int64_t size = dim == 0 ? out_ : in_;
  if (size % n != 0)
    throw ConfigError("/parallelism/megatron_tpppcp/tp",
                      "tensor parallelism over " + std::to_string(n) + " ranks splits " + name +
                          " (" + std::to_string(out_) + " x " + std::to_string(in_) + ") along " +
                          (dim == 0 ? "its " + std::to_string(out_) + " output features"
                                    : "its " + std::to_string(in_) + " input features") +
                          ", which is not a multiple of " + std::to_string(n),
                      "megatron_tpppcp");
  const std::int64_t part = size / n;
  at::NoGradGuard no_grad;
  weight_.set_data(weight_.narrow(dim, r * part, part).clone());
  if (bias_.defined() && bias_split_dim() == 0)
    bias_.set_data(bias_.narrow(0, r * part, part).clone());
  sharded_ = true;
}

// This rank's product: on FP8 products when run.fp8 asks for them (the kit's FP8 linear layer,
// the master weight quantised once per optimizer step), else ATen's linear under autocast.
at::Tensor TensorParallelLinear::local_product(const at::Tensor& x, const at::Tensor& bias) {
  if (fp8_linear_applies(x, weight_)) return fp8_linear(x, weight_, bias, fp8_weight_);
  return at::linear(x, weight_, bias.defined() ? bias : at::Tensor());
}

at::Tensor TensorParallelLinear::forward(const at::Tensor& x) {
  namespace coll = wanhost::collectives;
  if (role_ == LinearRole::ColumnParallel)
    return local_product(sequence_parallel_ ? x : coll::copy_to_group(x, group_), bias_);
  at::Tensor y = sequence_parallel_ ? coll::reduce_scatter_along(local_product(x, {}), 1, group_)
                                    : coll::reduce_from_group(local_product(x, {}), group_);
  return bias_.defined() ? y + bias_.to(y.scalar_type()) : y;
}

}  // namespace wanhost::plugins::megatron_tpppcp
