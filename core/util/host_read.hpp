// Reading a small device tensor on the host once its producer has run, as the trainer does once a
// step (the step's numbers). A plain `.cpu()` copies into pageable memory with a synchronous copy,
// and while the training thread sits in it (a whole step when the step is a replayed CUDA graph)
// the prefetch worker's own CUDA calls (pinning, queueing the next step's copies) can wait for it;
// this copies asynchronously into pinned memory on the current stream and waits on an event, which
// leaves other threads' calls alone.
#pragma once

#include <ATen/core/Tensor.h>

namespace wanhost::core {

// `t` on the host, after the work queued before it on the current stream of t's device has run.
// A host tensor is returned as it is.
at::Tensor read_on_host(const at::Tensor& t);

}  // namespace wanhost::core
