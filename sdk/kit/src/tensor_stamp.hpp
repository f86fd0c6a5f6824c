// Kit-internal: which tensor, at which address and version, a cache made its copy of
// (compute_weights.cpp's bf16 copies, fp8.cpp's quantised inputs). The tensor is held weakly: a
// freed tensor matches nothing, and since its TensorImpl's memory stays held while stamped, no
// new tensor takes its address in the meantime. In-place writes through ATen move the version;
// a new storage under the same tensor (set_data) moves the address.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>
#include <c10/util/intrusive_ptr.h>

namespace wanhost {

class TensorStamp {
 public:
  TensorStamp() = default;
  explicit TensorStamp(const at::Tensor& t)
      : impl_(t.getIntrusivePtr()), data_(t.data_ptr()), version_(t._version()) {}

  // `t` is the stamped tensor, at the same address and version.
  bool matches(const at::Tensor& t) const {
    return impl_.lock().get() == t.unsafeGetTensorImpl() && data_ == t.data_ptr() &&
           version_ == t._version();
  }
  // The stamped tensor still exists.
  bool alive() const { return !impl_.expired(); }

 private:
  c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl> impl_{
      c10::intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>()};
  const void* data_ = nullptr;
  std::uint32_t version_ = 0;
};

}  // namespace wanhost
