#include "step_graphs.hpp"

#include <bit>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <utility>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#if WANHOST_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include "../util/step_graph.hpp"
#include "wanhost/log.hpp"

namespace wanhost::core {
namespace {

// Seen keys kept while waiting for their second step: a warm-up makes a new key every step.
constexpr std::size_t kMaxSeenKeys = 256;

// Whether `e`, or an exception nested in it (a plugin boundary wraps what a plugin throws,
// core/plugin/plugin_call.hpp), is LibTorch's out-of-memory error.
bool out_of_device_memory(const std::exception& e) {
  if (dynamic_cast<const c10::OutOfMemoryError*>(&e) != nullptr) return true;
  try {
    std::rethrow_if_nested(e);
  } catch (const std::exception& inner) {
    return out_of_device_memory(inner);
  } catch (...) {
  }
  return false;
}

}  // namespace

std::optional<std::string> step_graph_key(const StepInputs& in, const Model& model,
                                          std::optional<double> baked_lr) {
  std::ostringstream key;
  // The learning rate's exact bits where the update bakes it in.
  if (baked_lr) key << "lr " << std::bit_cast<std::uint64_t>(*baked_lr);
  for (const NoisedBatch& b : in.micro) {
    if (b.noisy.packed()) return std::nullopt;  // host-side layouts (segments) not in the key
    const std::optional<std::string> model_key = model.graph_key(b.noisy);
    if (!model_key) return std::nullopt;
    key << " | " << *model_key;
    for (const auto& [name, t] : batch_tensors(b)) {
      key << ' ' << name;
      if (!t->defined()) continue;
      key << t->sizes() << t->strides() << t->scalar_type() << t->device();
      if (t->device().is_cpu()) key << (t->is_pinned() ? "pinned" : "pageable");
    }
  }
  return key.str();
}

void copy_step_inputs(StepInputs& into, const StepInputs& from) {
  if (into.micro.size() != from.micro.size())
    throw std::logic_error("copy_step_inputs: " + std::to_string(from.micro.size()) +
                           " micro batches into " + std::to_string(into.micro.size()));
  for (std::size_t i = 0; i < into.micro.size(); ++i) {
    const auto to = batch_tensors(into.micro[i]);
    const auto values = batch_tensors(std::as_const(from.micro[i]));
    for (std::size_t k = 0; k < to.size(); ++k) {
      at::Tensor& t = *to[k].second;
      const at::Tensor& v = *values[k].second;
      if (t.defined() != v.defined() ||
          (t.defined() && (t.sizes() != v.sizes() || t.strides() != v.strides() ||
                           t.scalar_type() != v.scalar_type() || t.device() != v.device())))
        throw std::logic_error("copy_step_inputs: micro batch " + std::to_string(i) + "'s " +
                               to[k].first + " differs from the captured one");
      if (t.defined()) t.copy_(v, /*non_blocking=*/!t.device().is_cpu());
    }
  }
  into.stage_step = from.stage_step;
  into.global_step = from.global_step;
  into.tokens = from.tokens;
  into.flops = from.flops;
  into.packs = from.packs;
  into.padded_tokens = from.padded_tokens;
}

struct StepGraphs::Entry {
  StepInputs inputs;  // the captured tensors: every replay reads these
  at::Tensor counts;  // the captured host counts (pinned on a GPU)
  at::Tensor out;     // the captured result: every replay writes it
  std::function<void()> replay;
};

StepGraphs::StepGraphs(const c10::Device& device, std::size_t max_graphs, Capture capture)
    : device_(device), max_graphs_(max_graphs), capture_(std::move(capture)) {
  if (!capture_) {
    // One pool for the stage's graphs: they never run at the same time, and what a graph needs
    // beyond its own replay (inputs, results) is held by its entry, so no other capture reuses it.
    const StepGraph::Pool pool = StepGraph::new_pool();
    const c10::Device dev = device_;
    capture_ = [dev, pool](const std::function<void()>& fn) {
      StepGraph::Options o;
      o.warmup = 0;  // the key's eager step was the warm-up
      o.on_current_stream = true;
      o.pool = pool;
      o.other_threads = true;  // the input prefetcher keeps copying
      auto graph = std::make_shared<StepGraph>(dev, fn, o);
      return std::function<void()>([graph] { graph->replay(); });
    };
  }
}

StepGraphs::~StepGraphs() = default;

void StepGraphs::turn_off() {
  on_ = false;
  graphs_.clear();
  seen_.clear();
#if WANHOST_WITH_CUDA
  // The graphs' pool goes back to the device: the eager steps from here on may need it (a GPU
  // whose memory held a graph's pool beside a step's activations only just).
  if (device_.is_cuda()) c10::cuda::CUDACachingAllocator::emptyCache();
#endif
}

at::Tensor StepGraphs::run(const std::optional<std::string>& key, StepInputs in,
                           const at::Tensor& counts, const Launch& launch) {
  if (!on_ || !key) return launch(in, counts);
  if (auto it = graphs_.find(*key); it != graphs_.end()) {
    Entry& e = *it->second;
    copy_step_inputs(e.inputs, in);
    e.counts.copy_(counts);
    e.replay();
    ++replays_;
    return e.out;
  }
  int& seen = seen_[*key];
  if (seen == 0 || graphs_.size() >= max_graphs_) {
    ++seen;
    if (seen_.size() > kMaxSeenKeys) seen_.clear();
    if (graphs_.empty()) return launch(in, counts);
    // A new key's eager step beside the captured graphs, whose pool keeps a step's activations
    // reserved: on a GPU of less memory (an 80 GB H100 at stage 1 of the 1.3B recipe: 21.6 GB
    // of weights, gradients and AdamW state, a 38 GB pool, a step's ~32 GB) it may not fit. Then
    // the graphs go, and the step runs again eagerly: its work stopped at an allocation of its
    // forward or backward (the update, the step's last part, allocates next to nothing), and a
    // step starts by zeroing the gradients, so the second run is the step. Eager from here on:
    // capturing keys again would trade each new key for a recapture of the others.
    try {
      return launch(in, counts);
    } catch (const std::exception& ex) {
      if (!out_of_device_memory(ex)) throw;
      const std::size_t dropped = graphs_.size();
      turn_off();
      logger()->warn(
          "run.cuda_graphs: a step of a new key ran out of device memory beside the {} captured "
          "graph(s) of this stage, whose pool holds a step's activations: the graphs are dropped "
          "and this stage's steps run eagerly from here on (this step runs again). Steps of one "
          "key keep graphs on: fixed text rows (stages[].text_rows) and, for wan21_dit, "
          "model.wan21_dit.collapsed_rows_from = \"text_rows\" (docs/training.md)",
          dropped);
      return launch(in, counts);
    }
  }
  // The key's second step: capture it with its own inputs, then replay it (a capture runs
  // nothing).
  auto e = std::make_unique<Entry>();
  e->inputs = std::move(in);
  e->counts = counts;
  seen_.erase(*key);
  try {
#if WANHOST_WITH_CUDA
    // The eager steps' cached blocks go back to the device, for the graph's pool to take.
    if (device_.is_cuda()) c10::cuda::CUDACachingAllocator::emptyCache();
#endif
    Entry& entry = *e;
    // `launch` copied: a stand-in capture (tests) calls the step again on every replay.
    entry.replay = capture_([&entry, launch] { entry.out = launch(entry.inputs, entry.counts); });
  } catch (const std::exception& ex) {
    turn_off();
    logger()->warn(
        "run.cuda_graphs: this stage's steps run eagerly from here on: {} (the step runs "
        "eagerly; nothing of the capture ran)",
        ex.what());
    return launch(e->inputs, e->counts);
  }
  ++captures_;
  Entry& entry = *graphs_.emplace(*key, std::move(e)).first->second;
  entry.replay();
  ++replays_;
  return entry.out;
}

}  // namespace wanhost::core
