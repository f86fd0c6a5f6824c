// The NCCL backend of the SDK communicator for GPU ranks: LibTorch's c10d ProcessGroupNCCL with a
// c10d TCPStore rendezvous at the launch environment's master address. Collectives run on NCCL's
// own streams; Work::wait() orders them before later work on the current stream without blocking
// the host. A collective that exceeds the timeout is reported by c10d's watchdog, which names the
// operation and ends the process (TORCH_NCCL_ASYNC_ERROR_HANDLING).
#pragma once

#include "../launch/launch_env.hpp"
#include "wanhost/communicator.hpp"

namespace wanhost::core {

// Only in CUDA builds (WANHOST_WITH_CUDA); sets the current CUDA device to env.local_rank.
CommunicatorPtr make_nccl_world(const LaunchEnv& env, double init_timeout_s, double timeout_s);

}  // namespace wanhost::core
