#include "communication.hpp"

#include <ATen/ATen.h>

#include "wanhost/errors.hpp"

namespace wanhost::core {

CommunicatorPtr make_world_communicator(const LaunchEnv& env) {
  if (env.world_size == 1) return make_local_communicator();
  throw UsageError("this build runs single-process only: " + std::to_string(env.world_size) +
                   " processes were started (" + env.source +
                   "), but the MPI/NCCL communication backends are not built in yet");
}

bool any_rank(Communicator& world, bool flag) {
  if (world.size() == 1) return flag;
  at::Tensor t = at::scalar_tensor(flag ? 1 : 0, at::kInt).reshape({1});
  world.all_reduce(t, ReduceOp::Max);
  return t.item<int>() != 0;
}

}  // namespace wanhost::core
