#include "wanhost/kit/compute_weights.hpp"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <atomic>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>

#include "tensor_stamp.hpp"
#include "wanhost/log.hpp"

namespace wanhost {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::atomic<std::uint64_t> g_epoch{0};
std::atomic<std::int64_t> g_hits{0};

struct Copy {
  TensorStamp master;  // at the last cast; weak: a model that goes away takes its masters along
  std::vector<std::int64_t> sizes, strides;
  c10::Device device = c10::kCPU;
  at::Tensor copy;    // undefined once dropped as unused (keep_used_compute_weights)
  bool used = false;  // asked for since it was allocated
};

// The copies of the last refresh, keyed by their masters. `mutex` guards everything: lookups
// also come from autograd's worker threads (blocks recomputed in backward).
struct Copies {
  std::mutex mutex;
  std::unordered_map<const c10::TensorImpl*, Copy> of;
  at::ScalarType dtype = at::kBFloat16;
  std::uint64_t epoch = 0;
  bool settled = false;  // the unused ones were dropped after their first step
};

// Never destroyed, like side_tensors.hpp's tables: it may hold CUDA tensors at exit (a run
// stopped mid-stage), which must not be freed after the CUDA runtime has shut down.
Copies& copies() {
  static Copies& c = *new Copies();
  return c;
}

// The bytes of the copies held (dropped ones not counted).
std::int64_t held_bytes(const Copies& c) {
  std::int64_t n = 0;
  for (const auto& [impl, k] : c.of)
    if (k.copy.defined()) n += static_cast<std::int64_t>(k.copy.nbytes());
  return n;
}

bool castable(const at::Tensor& t, at::ScalarType dtype) {
  return t.defined() && t.is_floating_point() && t.scalar_type() != dtype;
}

// Whether `held` was made for exactly `masters` (tensors, shapes, places) and `dtype`.
bool same_set(const Copies& held, const std::vector<at::Tensor>& masters, at::ScalarType dtype) {
  if (held.dtype != dtype || held.of.size() != masters.size()) return false;
  for (const auto& m : masters) {
    const auto it = held.of.find(m.unsafeGetTensorImpl());
    if (it == held.of.end() || !it->second.master.alive() || it->second.sizes != m.sizes() ||
        it->second.strides != m.strides() || it->second.device != m.device())
      return false;
  }
  return true;
}

// The fresh copy of `w` in `dtype`, or an undefined tensor.
at::Tensor fresh_copy(const at::Tensor& w, at::ScalarType dtype) {
  Copies& c = copies();
  std::lock_guard<std::mutex> lock(c.mutex);
  if (c.dtype != dtype || c.epoch != g_epoch.load()) return at::Tensor();
  const auto it = c.of.find(w.unsafeGetTensorImpl());
  if (it == c.of.end()) return at::Tensor();
  Copy& k = it->second;
  if (!k.copy.defined() || !k.master.matches(w)) return at::Tensor();
  k.used = true;
  g_hits.fetch_add(1);
  return k.copy;
}

// A copy standing for master.to(copy's dtype) in autograd: the copy's values forward, the
// gradient cast back to the master's dtype (ToCopyBackward's rule).
struct CopyOfMaster : torch::autograd::Function<CopyOfMaster> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& master,
                            const at::Tensor& copy) {
    ctx->saved_data["dtype"] = static_cast<std::int64_t>(master.scalar_type());
    return copy;  // an input returned: autograd hands out a view of it, the copy stays as it is
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto dtype = static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt());
    return {grads[0].defined() ? grads[0].to(dtype) : at::Tensor(), at::Tensor()};
  }
};

}  // namespace

void weights_changed() {
  g_epoch.fetch_add(1);
}

std::uint64_t weights_epoch() {
  return g_epoch.load();
}

void refresh_compute_weights(const std::vector<at::Tensor>& all, at::ScalarType dtype) {
  std::vector<at::Tensor> masters;
  for (const auto& t : all)
    if (castable(t, dtype)) masters.push_back(t);
  Copies& c = copies();
  std::lock_guard<std::mutex> lock(c.mutex);
  if (!same_set(c, masters, dtype)) {
    c.of.clear();  // the old copies go before the new ones are allocated
    c.settled = false;
    for (const auto& m : masters) {
      Copy k;
      k.master = TensorStamp(m);
      k.sizes = m.sizes().vec();
      k.strides = m.strides().vec();
      k.device = m.device();
      k.copy = at::empty_like(m, m.options().dtype(dtype));
      c.of.emplace(m.unsafeGetTensorImpl(), std::move(k));
    }
    c.dtype = dtype;
  }
  // One multi-tensor copy per (device, source dtype): the fast path wants one dtype a list.
  std::map<std::tuple<c10::DeviceType, c10::DeviceIndex, at::ScalarType>,
           std::pair<std::vector<at::Tensor>, std::vector<at::Tensor>>>
      groups;
  for (const auto& m : masters) {
    Copy& k = c.of.at(m.unsafeGetTensorImpl());
    if (!k.copy.defined()) continue;
    auto& g = groups[{m.device().type(), m.device().index(), m.scalar_type()}];
    g.first.push_back(k.copy);
    g.second.push_back(m.detach());
    k.master = TensorStamp(m);
  }
  {
    at::NoGradGuard no_grad;
    for (auto& [place, lists] : groups) at::_foreach_copy_(lists.first, lists.second);
  }
  c.epoch = g_epoch.load();
}

void keep_used_compute_weights() {
  Copies& c = copies();
  std::lock_guard<std::mutex> lock(c.mutex);
  if (c.settled) return;
  c.settled = true;
  std::int64_t kept = 0;
  for (auto& [impl, k] : c.of) {
    if (!k.copy.defined()) continue;
    if (k.used) {
      ++kept;
      continue;
    }
    k.copy = at::Tensor();
  }
  if (c.of.empty()) return;
  const auto others = static_cast<std::int64_t>(c.of.size()) - kept;
  logger()->info(
      "weight casts: {} master weights cast to {} in one pass a step ({:.1f} MiB of copies{}; "
      "run.kernels.weight_casts=per_step)",
      kept, c10::toString(c.dtype), static_cast<double>(held_bytes(c)) / (1 << 20),
      others == 0 ? std::string()
                  : fmt::format("; none for {} others, not read in {} (FP8 layers, layers under "
                                "autocast)",
                                others, c10::toString(c.dtype)));
}

void drop_compute_weights() {
  Copies& c = copies();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.of.clear();
  c.settled = false;
}

std::int64_t compute_weight_count() {
  Copies& c = copies();
  std::lock_guard<std::mutex> lock(c.mutex);
  std::int64_t n = 0;
  for (const auto& [impl, k] : c.of) n += k.copy.defined() ? 1 : 0;
  return n;
}

std::int64_t compute_weight_bytes() {
  Copies& c = copies();
  std::lock_guard<std::mutex> lock(c.mutex);
  return held_bytes(c);
}

at::Tensor compute_weight(const at::Tensor& w, at::ScalarType dtype) {
  if (!w.defined() || w.scalar_type() == dtype) return w;
  auto copy = fresh_copy(w, dtype);
  return copy.defined() ? copy : w.to(dtype);
}

at::Tensor compute_weight_differentiable(const at::Tensor& w, at::ScalarType dtype) {
  if (!w.defined() || w.scalar_type() == dtype) return w;
  auto copy = fresh_copy(w, dtype);
  if (!copy.defined()) return w.to(dtype);
  if (!at::GradMode::is_enabled() || !w.requires_grad()) return copy;
  return CopyOfMaster::apply(w, copy);
}

std::int64_t compute_weight_hits() {
  return g_hits.load();
}

}  // namespace wanhost
