#include "pipeline.hpp"

#include <algorithm>

#include "wanhost/errors.hpp"

namespace wanhost::plugins::megatron_tpppcp {

std::vector<std::pair<std::int64_t, std::int64_t>> stage_blocks(
    std::int64_t blocks, int stages, const std::vector<std::int64_t>& layers,
    const std::string& pointer) {
  auto fail = [&](const std::string& what) { throw ConfigError(pointer, what, "megatron_tpppcp"); };
  std::vector<std::int64_t> counts;
  if (layers.empty()) {
    if (blocks < stages)
      fail(std::to_string(stages) +
           " pipeline stages need at least as many blocks; the model has " +
           std::to_string(blocks));
    for (int s = 0; s < stages; ++s) counts.push_back(blocks / stages + (s < blocks % stages));
  } else {
    if (static_cast<int>(layers.size()) != stages)
      fail("lists " + std::to_string(layers.size()) + " stage(s) but pp is " +
           std::to_string(stages));
    std::int64_t sum = 0;
    for (std::size_t s = 0; s < layers.size(); ++s) {
      if (layers[s] < 1)
        fail("stage " + std::to_string(s) + " has " + std::to_string(layers[s]) +
             " blocks; every stage needs at least one");
      sum += layers[s];
    }
    if (sum != blocks)
      fail("the stages hold " + std::to_string(sum) + " blocks in all; the model has " +
           std::to_string(blocks));
    counts = layers;
  }
  std::vector<std::pair<std::int64_t, std::int64_t>> out;
  std::int64_t first = 0;
  for (auto c : counts) {
    out.emplace_back(first, first + c);
    first += c;
  }
  return out;
}

std::vector<PipelineOp> one_f_one_b(int stages, int stage, std::int64_t micro_batches) {
  const std::int64_t warmup = std::min<std::int64_t>(stages - stage - 1, micro_batches);
  std::vector<PipelineOp> ops;
  for (std::int64_t j = 0; j < warmup; ++j) ops.push_back({true, j});
  for (std::int64_t k = 0; k < micro_batches - warmup; ++k) {
    ops.push_back({true, warmup + k});
    ops.push_back({false, k});
  }
  for (std::int64_t k = micro_batches - warmup; k < micro_batches; ++k) ops.push_back({false, k});
  return ops;
}

}  // namespace wanhost::plugins::megatron_tpppcp
