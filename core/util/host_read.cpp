#include "host_read.hpp"

#include <ATen/ATen.h>
#include <c10/core/Event.h>
#include <c10/core/impl/VirtualGuardImpl.h>

namespace wanhost::core {

at::Tensor read_on_host(const at::Tensor& t) {
  if (t.device().is_cpu()) return t;
  at::Tensor host = at::empty(t.sizes(), t.options().device(at::kCPU).pinned_memory(true));
  host.copy_(t, /*non_blocking=*/true);
  const c10::impl::VirtualGuardImpl impl(t.device().type());
  c10::Event copied(t.device().type());
  copied.record(impl.getStream(t.device()));
  copied.synchronize();
  return host;
}

}  // namespace wanhost::core
