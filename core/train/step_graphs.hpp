// Whole training steps replayed as CUDA graphs (run.cuda_graphs; docs/performance.md, "Whole-step
// CUDA graphs"). A step's device work (zero the gradients, forward and backward of every micro
// batch, the gradient norm and clip, the reduction of the step's numbers, the update) is captured
// once per key and replayed for every later step of that key, with the new step's input values
// copied into the captured input tensors first: one launch instead of ~1000, so the GPU never
// waits for the host between kernels.
//
// The key is everything that decides the step's kernels and shapes: each micro batch's tensor
// shapes, dtypes and devices, what the model says it chose from the batch's values on the host
// (Model::graph_key, SDK 2.5) and, where the update takes the learning rate as a host number
// (parallelism plugins before SDK 2.6), the learning rate: a step of another one, e.g. in a
// warm-up, is then another key and runs eagerly. From SDK 2.6 the update reads it on the device,
// copied in with the step's other host numbers, and a warm-up's steps are replayed. A key is
// captured on its second step (the first ran eagerly and made every cache, workspace and piece of
// optimizer state a capture needs) and at most `max_graphs` keys are; a capture that fails turns
// graphs off for the rest of the stage (the step runs eagerly, nothing of the capture ran).
#pragma once

#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include "step_inputs.hpp"
#include "wanhost/model.hpp"

namespace wanhost::core {

// The key of a step (see above), or nullopt when the model cannot promise that its work depends
// only on the key (packed batches, lengths on the device, a model of an SDK before 2.5).
// `baked_lr`: the learning rate when the update bakes it into the captured step (nullopt when
// it reads it on the device).
std::optional<std::string> step_graph_key(const StepInputs& in, const Model& model,
                                          std::optional<double> baked_lr);

// Copies the values of `from` into `into`'s tensors, which keep their storage (a captured step
// reads them there). Host tensors (a pinned text_lengths) are copied on the host, device tensors
// asynchronously on the current stream. Throws std::logic_error when the two differ in a shape,
// dtype, device or in the number of micro batches (their keys would have differed).
void copy_step_inputs(StepInputs& into, const StepInputs& from);

class StepGraphs {
 public:
  // The device part of a step, launched without reading anything back: `counts` is a pinned host
  // tensor of the step's numbers (the learning rate among them) the step copies to the device (a
  // captured copy reads it again on each replay). Returns the device tensor the host reads after
  // the step (a replay writes it again).
  using Launch = std::function<at::Tensor(const StepInputs& in, const at::Tensor& counts)>;
  // Captures `fn` (its first and only call records the step) and returns what replays it; the
  // default captures a CUDA graph on the current stream (util/step_graph.hpp). Tests give one
  // that calls fn again (the bookkeeping and the input copies are the same).
  using Capture = std::function<std::function<void()>(const std::function<void()>& fn)>;

  StepGraphs(const c10::Device& device, std::size_t max_graphs, Capture capture = {});
  ~StepGraphs();
  StepGraphs(const StepGraphs&) = delete;
  StepGraphs& operator=(const StepGraphs&) = delete;

  // Runs one step: eagerly (`launch(in, counts)`) when its key is new or graphs are off, else by
  // replaying (after capturing, the first time) the key's graph with the inputs copied in. The
  // host reads nothing.
  at::Tensor run(const std::optional<std::string>& key, StepInputs in, const at::Tensor& counts,
                 const Launch& launch);

  bool on() const { return on_; }
  // Whether run() would replay a step of `key` (its graph is captured): the trainer profiles such
  // a step as a replay, and any other step eagerly (a capture under the profiler is not a step).
  bool replays(const std::optional<std::string>& key) const {
    return on_ && key && graphs_.count(*key) > 0;
  }
  long captures() const { return captures_; }
  long replays() const { return replays_; }

 private:
  struct Entry;
  // Graphs off for the rest of the stage: every graph dropped, their memory given back.
  void turn_off();
  c10::Device device_;
  std::size_t max_graphs_;
  Capture capture_;
  bool on_ = true;
  long captures_ = 0, replays_ = 0;
  std::map<std::string, int> seen_;  // eager steps per key not (yet) captured
  std::map<std::string, std::unique_ptr<Entry>> graphs_;
};

}  // namespace wanhost::core
