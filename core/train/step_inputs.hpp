// The inputs of an optimizer step (this rank's noised micro batches) and the prefetcher that
// makes them one step ahead on a worker thread, so the GPU does not wait for the host's data
// work (reading or generating samples, collating, drawing noise, copying to the device) between
// steps. Randomness is a function of (seed, global step, sample position), so inputs made ahead
// are the very inputs the step would have made itself: runs with and without prefetching give
// the same losses.
#pragma once

#include <array>
#include <functional>
#include <future>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include <c10/core/Device.h>

#include "wanhost/scheduler.hpp"

namespace wanhost::core {

// The tensors of a noised batch, named for messages: the one list that the prefetcher (what goes
// to the device) and the step graphs (what a replay copies into the captured step) walk.
template <class Noised>  // NoisedBatch or const NoisedBatch
auto batch_tensors(Noised& nb) {
  using T = std::conditional_t<std::is_const_v<Noised>, const at::Tensor, at::Tensor>;
  return std::array<std::pair<const char*, T*>, 7>{{{"latents", &nb.noisy.latents},
                                                    {"text", &nb.noisy.text},
                                                    {"text_lengths", &nb.noisy.text_lengths},
                                                    {"timesteps", &nb.timesteps},
                                                    {"sigmas", &nb.sigmas},
                                                    {"target", &nb.target},
                                                    {"weights", &nb.weights}}};
}

struct StepInputs {
  long stage_step = -1, global_step = -1;  // the step they are for (make sets them; take checks)
  std::vector<NoisedBatch> micro;          // on the training device
  double tokens = 0, flops = 0;            // this rank's share, for the throughput metrics
  // This rank's micro batches (packs) and their tokens after the model's per-sample padding of
  // packed batches to ParallelContext::token_multiple (= tokens for dense batches).
  double packs = 0, padded_tokens = 0;
  // Host seconds the prefetcher spent on these inputs (metrics input_make_s, input_to_device_s):
  // making them (reading or drawing samples, collating, noise) and handing them to the device
  // (pinning the host tensors, queueing the copies).
  double make_s = 0, to_device_s = 0;
};

class StepPrefetcher {
 public:
  // make(stage_step, global_step) builds a step's inputs with host tensors (the CPU); it runs on
  // the worker thread when `ahead`, never twice at the same time. `last_stage_step`: the stage's
  // last step (nothing is made beyond it).
  using Make = std::function<StepInputs(long stage_step, long global_step)>;
  // `lengths_on_host`: the batches' text_lengths stay on the host (pinned on a GPU), where a
  // model of SDK 2.4 or newer reads them to plan its shapes (wanhost/batch.hpp): a device copy
  // would have to be read back, which waits for the device.
  StepPrefetcher(Make make, const c10::Device& device, long last_stage_step, bool ahead,
                 bool lengths_on_host = false);
  ~StepPrefetcher();  // waits for the step being made (make may use objects the caller owns)
  StepPrefetcher(const StepPrefetcher&) = delete;
  StepPrefetcher& operator=(const StepPrefetcher&) = delete;

  // The inputs of the given step on the device, usable on the caller's current stream; then
  // starts making the next step's (when ahead). Steps are taken in order, one after another. Errors
  // of make are thrown here. `wait_s`: host seconds this call waited for the inputs (the whole
  // making time when not ahead).
  StepInputs take(long stage_step, long global_step, double* wait_s = nullptr);

 private:
  struct Ready;  // inputs on the device, and on the worker the copies' stream and event
  std::unique_ptr<Ready> make_on_device(long stage_step, long global_step, bool on_worker);

  Make make_;
  c10::Device device_;
  long last_;
  bool ahead_, lengths_on_host_;
  std::future<std::unique_ptr<Ready>> pending_;  // the next step's, being made on the worker
};

}  // namespace wanhost::core
