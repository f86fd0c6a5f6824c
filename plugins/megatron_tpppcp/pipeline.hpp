// Pipeline parallelism: which blocks each stage holds, and the order in which a stage runs the
// forward and backward passes of a step's micro batches.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace wanhost::plugins::megatron_tpppcp {

// Blocks [first, last) of every stage. `layers` empty: balanced, the first (blocks % stages)
// stages one block more; otherwise the number of blocks of each stage (as Megatron-Bridge's
// pipeline layout lists them), which must be `stages` numbers >= 1 adding up to `blocks`.
// Throws ConfigError naming the numbers (at `pointer`).
std::vector<std::pair<std::int64_t, std::int64_t>> stage_blocks(
    std::int64_t blocks, int stages, const std::vector<std::int64_t>& layers,
    const std::string& pointer);

struct PipelineOp {
  bool forward = true;
  std::int64_t micro_batch = 0;
};

// The 1F1B schedule of stage `stage` of `stages` over `micro_batches` micro batches (Narayanan et
// al. 2021, "Efficient Large-Scale Language Model Training on GPU Clusters Using Megatron-LM",
// section 2.2; megatron/core/pipeline_parallel/schedules.py,
// forward_backward_pipelining_without_interleaving): stages - stage - 1 warm-up forwards, then
// one forward and one backward in turn, then the remaining backwards. At most `stages` micro
// batches are in flight on the first stage, one on the last.
std::vector<PipelineOp> one_f_one_b(int stages, int stage, std::int64_t micro_batches);

}  // namespace wanhost::plugins::megatron_tpppcp
