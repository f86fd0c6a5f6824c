#include "step_inputs.hpp"

#include <chrono>
#include <optional>
#include <stdexcept>
#include <string>

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/Event.h>
#include <c10/core/Stream.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include "../util/device_timing.hpp"

namespace wanhost::core {
namespace {

// Every tensor of a noised batch that goes to the device (the batch's own host fields stay as
// they are; text_lengths too when `lengths_on_host`).
template <typename Fn>
void for_each_tensor(NoisedBatch& nb, bool lengths_on_host, Fn fn) {
  for (auto [name, t] : batch_tensors(nb))
    if (t->defined() && !(lengths_on_host && t == &nb.noisy.text_lengths)) fn(*t);
}

}  // namespace

struct StepPrefetcher::Ready {
  StepInputs inputs;
  std::optional<c10::Event> copied;  // recorded after the worker's copies (GPU)
};

StepPrefetcher::StepPrefetcher(Make make, const c10::Device& device, long last_stage_step,
                               bool ahead, bool lengths_on_host)
    : make_(std::move(make)),
      device_(device),
      last_(last_stage_step),
      ahead_(ahead),
      lengths_on_host_(lengths_on_host) {}

StepPrefetcher::~StepPrefetcher() {
  if (pending_.valid()) pending_.wait();  // its error, if any, is of a step nobody asked for
}

// On the worker (GPU): the host tensors are pinned and copied asynchronously on a stream of the
// pool, and an event marks the end of the copies; the training stream waits for that event, not
// the host. Inline: plain copies on the current stream, as a step without prefetching does.
std::unique_ptr<StepPrefetcher::Ready> StepPrefetcher::make_on_device(long stage_step,
                                                                      long global_step,
                                                                      bool on_worker) {
  using Clock = std::chrono::steady_clock;
  auto r = std::make_unique<Ready>();
  const auto t0 = Clock::now();
  r->inputs = make_(stage_step, global_step);
  r->inputs.make_s = seconds_since(t0);
  if (device_.is_cpu()) return r;
  const auto t1 = Clock::now();
  // Pinned text_lengths either way: the model's own copy to the device need not wait for it, and
  // a step made inline has the same key as one made on the worker (run.cuda_graphs).
  auto pin_lengths = [&](NoisedBatch& nb) {
    at::Tensor& lengths = nb.noisy.text_lengths;
    if (lengths_on_host_ && lengths.defined() && lengths.is_cpu()) lengths = lengths.pin_memory();
  };
  if (!on_worker) {
    for (auto& nb : r->inputs.micro) {
      for_each_tensor(nb, lengths_on_host_, [&](at::Tensor& t) { t = t.to(device_); });
      pin_lengths(nb);
    }
    r->inputs.to_device_s = seconds_since(t1);
    return r;
  }
  const c10::DeviceGuard device_guard(device_);  // this thread's current device
  const c10::impl::VirtualGuardImpl impl(device_.type());
  const c10::Stream stream = impl.getStreamFromGlobalPool(device_, /*isHighPriority=*/false);
  const c10::StreamGuard stream_guard(stream);
  // (A tensor a plugin already made on a GPU is only moved to this device if need be.)
  for (auto& nb : r->inputs.micro) {
    for_each_tensor(nb, lengths_on_host_, [&](at::Tensor& t) {
      t = t.is_cpu() ? t.pin_memory().to(device_, /*non_blocking=*/true) : t.to(device_);
    });
    pin_lengths(nb);
  }
  r->copied.emplace(device_.type());
  r->copied->record(stream);
  r->inputs.to_device_s = seconds_since(t1);
  return r;
}

StepInputs StepPrefetcher::take(long stage_step, long global_step, double* wait_s) {
  const auto t0 = std::chrono::steady_clock::now();
  // The step made ahead, or (first step of a stage, prefetching off) this step, made here.
  std::unique_ptr<Ready> r = pending_.valid()
                                 ? pending_.get()
                                 : make_on_device(stage_step, global_step, /*on_worker=*/false);
  if (wait_s) *wait_s = seconds_since(t0);
  if (r->inputs.stage_step != stage_step || r->inputs.global_step != global_step)
    throw std::logic_error(
        "step prefetcher: steps must be taken in order; inputs made for stage step " +
        std::to_string(r->inputs.stage_step) + " handed to stage step " +
        std::to_string(stage_step));
  if (r->copied) {
    // The step's stream waits for the copies; the tensors were allocated on the copy stream, so
    // the allocator must also know the step's stream uses them before it hands their memory on.
    const c10::impl::VirtualGuardImpl impl(device_.type());
    const c10::Stream current = impl.getStream(device_);
    r->copied->block(current);
    for (auto& nb : r->inputs.micro)
      for_each_tensor(nb, lengths_on_host_, [&](at::Tensor& t) { t.record_stream(current); });
  }
  if (ahead_ && stage_step + 1 <= last_) {
    pending_ = std::async(std::launch::async, [this, s = stage_step + 1, g = global_step + 1] {
      return make_on_device(s, g, /*on_worker=*/true);
    });
  }
  return std::move(r->inputs);
}

}  // namespace wanhost::core
