// The order in which a stage visits its data: an endless stream of epochs, each a seeded
// permutation of the data source's indices. Position p of the stream is a pure function of
// (seed, stage, p), so any rank can find its samples and a resumed run continues exactly.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace wanhost::core {

class SampleOrder {
 public:
  SampleOrder(std::uint64_t seed, std::size_t stage, std::int64_t size);
  // The data-source index at stream position `position`.
  std::int64_t at(std::int64_t position);

 private:
  std::uint64_t seed_;
  std::size_t stage_;
  std::int64_t size_;
  std::int64_t epoch_ = -1;
  at::Tensor perm_;
};

}  // namespace wanhost::core
