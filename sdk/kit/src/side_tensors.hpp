// Kit-internal: a tensor per object, kept beside the object instead of in it. Kit classes that
// plugins built against kit 1.x derive from or hold (ParallelismBase, AdamW) cannot gain a member
// without changing their layout, so state added in a kit minor lives here, keyed by the object.
// An instance is never destroyed, its mutex included: it may hold CUDA tensors at exit (which must
// not be freed after the CUDA runtime has shut down), and an owner may be destroyed during the
// exit's static destruction. Owners drop their entry in their (out-of-line) destructors.
#pragma once

#include <map>
#include <mutex>
#include <utility>

#include <ATen/core/Tensor.h>

namespace wanhost {

class SideTensors {
 public:
  // A table that lives until the process ends (see above).
  static SideTensors& make() { return *new SideTensors(); }

  // The owner's tensor; undefined when it has none.
  at::Tensor get(const void* owner) {
    const std::lock_guard<std::mutex> lock(mutex_);
    const auto it = tensors_.find(owner);
    return it == tensors_.end() ? at::Tensor() : it->second;
  }
  // The owner's tensor, dropped from the table.
  at::Tensor take(const void* owner) {
    const std::lock_guard<std::mutex> lock(mutex_);
    const auto it = tensors_.find(owner);
    if (it == tensors_.end()) return {};
    at::Tensor t = std::move(it->second);
    tensors_.erase(it);
    return t;
  }
  // Sets the owner's tensor; an undefined one drops the entry.
  void set(const void* owner, at::Tensor t) {
    const std::lock_guard<std::mutex> lock(mutex_);
    if (t.defined())
      tensors_[owner] = std::move(t);
    else
      tensors_.erase(owner);
  }

 private:
  SideTensors() = default;
  std::mutex mutex_;
  std::map<const void*, at::Tensor> tensors_;
};

}  // namespace wanhost
