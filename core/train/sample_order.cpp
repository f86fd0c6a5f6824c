#include "sample_order.hpp"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "wanhost/random.hpp"

namespace wanhost::core {

SampleOrder::SampleOrder(std::uint64_t seed, std::size_t stage, std::int64_t size)
    : seed_(seed), stage_(stage), size_(size) {}

std::int64_t SampleOrder::at(std::int64_t position) {
  const std::int64_t epoch = position / size_;
  if (epoch != epoch_) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(
        random_key(seed_, static_cast<std::int64_t>(stage_), epoch, RandomStream::Shuffle));
    perm_ = at::randperm(size_, gen, at::TensorOptions().dtype(at::kLong));
    epoch_ = epoch;
  }
  return perm_.data_ptr<std::int64_t>()[position % size_];
}

}  // namespace wanhost::core
