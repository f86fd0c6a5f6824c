// Delayed FP8 scaling's amax histories (fp8_history.hpp) and the public functions of
// wanhost/kit/fp8.hpp that keep them.
#include "fp8_history.hpp"

#include <array>
#include <atomic>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "wanhost/kit/fp8.hpp"
#include "wanhost/log.hpp"

namespace wanhost {
namespace fp8_history {
namespace {

struct Site {
  at::Tensor ring;  // [history + 2] fp32 on the operand's device
  // The host step count of its first use; none: not yet used (or forgotten: a new stage). A
  // checkpoint's history counts as primed a step before the resumed run's first.
  std::optional<std::int64_t> primed_at;
};
// A layer's three sites, and the weight they were made for: another weight (another model whose
// layer took the cache's address) starts all three afresh.
struct LayerSites {
  c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl> weight{
      c10::intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>()};
  Site of[3];
};
struct Delayed {
  std::mutex mutex;
  std::map<std::string, at::Tensor> steps;  // per device: the step count, int64, 0-dim
  std::int64_t host_steps = 0;  // fp8_step_begins calls (eager steps: a replay advances the
                                // device count only)
  std::map<const void*, LayerSites> layers;  // keyed by the layer's weight cache
  // Histories a checkpoint brought (load_fp8_history_state), keyed by the layer's weight: a
  // layer takes them at its first use.
  std::map<const c10::TensorImpl*, std::array<at::Tensor, 3>> restored;
};
const char* const kRoleNames[3] = {"weight", "input", "gradient"};
// Never destroyed (side_tensors.hpp's reason: CUDA tensors at exit).
Delayed& delayed() {
  static Delayed& d = *new Delayed();
  return d;
}
std::atomic<int> g_history{16};
std::atomic<std::int64_t> g_delayed_quantizations{0};

}  // namespace

std::optional<SiteUse> site_use(const void* cache, Role role, const c10::Device& device,
                                const at::Tensor& weight) {
  if (fp8_recipe() != Fp8Recipe::delayed || cache == nullptr) return std::nullopt;
  Delayed& d = delayed();
  const std::lock_guard<std::mutex> lock(d.mutex);
  const auto step = d.steps.find(device.str());
  if (step == d.steps.end()) {
    static std::atomic<bool> said{false};
    if (!said.exchange(true))
      logger()->warn(
          "run.fp8 = delayed: no training step has begun on {} (fp8_step_begins): operands are "
          "scaled by their own max|x| (tensorwise) until one does",
          device.str());
    return std::nullopt;
  }
  LayerSites& layer = d.layers[cache];
  if (weight.defined() && layer.weight.lock().get() != weight.unsafeGetTensorImpl()) {
    layer = LayerSites();
    layer.weight = weight.getIntrusivePtr();
  }
  const auto len = static_cast<std::int64_t>(g_history.load()) + 2;
  if (weight.defined() && !d.restored.empty()) {
    // A resumed run: the layer's histories as they were at the checkpoint, used at once (the
    // step they were recorded in has completed).
    if (const auto it = d.restored.find(weight.unsafeGetTensorImpl()); it != d.restored.end()) {
      for (int r = 0; r < 3; ++r) {
        if (!it->second[r].defined() || it->second[r].numel() != len) continue;
        layer.of[r].ring = it->second[r].to(device, at::kFloat).contiguous();
        layer.of[r].primed_at = d.host_steps - 1;  // may be -1: still a completed step
      }
      d.restored.erase(it);
    }
  }
  Site& site = layer.of[static_cast<int>(role)];
  if (!site.ring.defined() || site.ring.device() != device || site.ring.numel() != len) {
    site.ring = at::empty({len}, at::TensorOptions().dtype(at::kFloat).device(device));
    site.primed_at.reset();
  }
  SiteUse use{site.ring, step->second, false};
  if (!site.primed_at) {
    site.ring.zero_();  // a new or forgotten history (a new stage) starts empty
    site.primed_at = d.host_steps;
  } else {
    use.from_history = d.host_steps > *site.primed_at;
  }
  return use;
}

namespace {

// The history's current and next slots as device tensors (no host synchronisation).
std::pair<at::Tensor, at::Tensor> history_slots(const SiteUse& u) {
  const std::int64_t len = u.ring.numel();
  const at::Tensor current = at::remainder(u.step, len).reshape({1});
  return {current, at::remainder(current + 1, len)};
}

}  // namespace

at::Tensor history_scale(const SiteUse& u, double min_amax, double top) {
  const auto [current, next] = history_slots(u);
  const at::Tensor slot = at::arange(u.ring.numel(), u.step.options());
  const at::Tensor past = u.ring.masked_fill((slot == current) | (slot == next), 0.0);
  return past.max().clamp_min(min_amax) / top;
}

void record_amax(const SiteUse& u, const at::Tensor& x) {
  const auto [current, next] = history_slots(u);
  const at::Tensor a = x.abs().to(at::kFloat);
  const at::Tensor amax = a.masked_fill(a.isfinite().logical_not(), 0.0).max().reshape({1});
  u.ring.index_put_({current}, at::maximum(u.ring.index({current}), amax));
  u.ring.index_put_({next}, at::zeros({1}, u.ring.options()));
}

void count_delayed_quantization() {
  g_delayed_quantizations.fetch_add(1);
}

}  // namespace fp8_history

using fp8_history::delayed;
using fp8_history::Delayed;
using fp8_history::g_delayed_quantizations;
using fp8_history::g_history;
using fp8_history::kRoleNames;
using fp8_history::Site;

void set_fp8_amax_history(int steps) {
  if (steps < 1 || steps > kMaxFp8AmaxHistory)
    throw std::invalid_argument("the FP8 amax history must be 1.." +
                                std::to_string(kMaxFp8AmaxHistory) + " steps, got " +
                                std::to_string(steps));
  g_history.store(steps);
}
int fp8_amax_history() {
  return g_history.load();
}

void fp8_step_begins(const c10::Device& device) {
  if (fp8_recipe() != Fp8Recipe::delayed) return;
  Delayed& d = delayed();
  const std::lock_guard<std::mutex> lock(d.mutex);
  at::Tensor& step = d.steps[device.str()];
  if (!step.defined())
    step = at::zeros({}, at::TensorOptions().dtype(at::kLong).device(device));
  else
    step.add_(1);  // on the current stream: a captured step advances it on every replay
  ++d.host_steps;
}

void fp8_forget_history() {
  Delayed& d = delayed();
  const std::lock_guard<std::mutex> lock(d.mutex);
  for (auto& [cache, layer] : d.layers)
    for (Site& site : layer.of) site.primed_at.reset();
  d.restored.clear();  // a checkpoint's histories belong to the stage it was saved in
}

std::map<std::string, at::Tensor> fp8_history_state(
    const std::vector<std::pair<std::string, at::Tensor>>& weights, const c10::Device& device) {
  std::map<std::string, at::Tensor> out;
  if (fp8_recipe() != Fp8Recipe::delayed) return out;
  std::map<const c10::TensorImpl*, std::string> name_of;
  for (const auto& [name, w] : weights) name_of[w.unsafeGetTensorImpl()] = name;
  Delayed& d = delayed();
  const std::lock_guard<std::mutex> lock(d.mutex);
  const auto step = d.steps.find(device.str());
  if (step == d.steps.end()) return out;
  for (const auto& [cache, layer] : d.layers) {
    const auto named = name_of.find(layer.weight.lock().get());
    if (named == name_of.end()) continue;
    for (int r = 0; r < 3; ++r)
      if (layer.of[r].ring.defined() && layer.of[r].primed_at)
        out[named->second + "/fp8_amax_" + kRoleNames[r]] = layer.of[r].ring.cpu();
  }
  if (!out.empty()) out["fp8_step"] = step->second.reshape({1}).cpu();
  return out;
}

std::size_t load_fp8_history_state(const std::map<std::string, at::Tensor>& state,
                                   const std::vector<std::pair<std::string, at::Tensor>>& weights,
                                   const c10::Device& device) {
  const auto step = state.find("fp8_step");
  if (step == state.end()) return 0;
  Delayed& d = delayed();
  const std::lock_guard<std::mutex> lock(d.mutex);
  std::size_t layers = 0;
  for (const auto& [name, w] : weights) {
    std::array<at::Tensor, 3> rings;
    bool any = false;
    for (int r = 0; r < 3; ++r) {
      const auto it = state.find(name + "/fp8_amax_" + kRoleNames[r]);
      if (it == state.end()) continue;
      rings[r] = it->second;
      any = true;
    }
    if (!any) continue;
    d.restored[w.unsafeGetTensorImpl()] = rings;
    ++layers;
  }
  // The count of the checkpoint's last step: the next fp8_step_begins advances it.
  d.steps[device.str()] =
      step->second.reshape({}).to(at::TensorOptions().dtype(at::kLong).device(device)).clone();
  return layers;
}

std::int64_t fp8_delayed_quantizations() {
  return g_delayed_quantizations.load();
}

}  // namespace wanhost
