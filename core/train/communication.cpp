#include "communication.hpp"

#include <ATen/ATen.h>

#include "../comm/mpi_communicator.hpp"
#if WANHOST_WITH_CUDA
#include "../comm/nccl_communicator.hpp"
#endif
#include "../util/host_read.hpp"
#include "wanhost/errors.hpp"

namespace wanhost::core {

CommunicatorPtr make_world_communicator(const LaunchEnv& env, const c10::Device& device,
                                        const CommTimeouts& timeouts) {
  const bool mpi = mpi_init_if_launched();
  if (env.world_size == 1) return make_local_communicator();
  CommunicatorPtr world;
  if (device.is_cuda()) {
#if WANHOST_WITH_CUDA
    world = make_nccl_world(env, timeouts.init_s, timeouts.collective_s);
#endif
  } else {
    if (!mpi)
      throw UsageError(std::to_string(env.world_size) + " CPU processes were started by " +
                       env.source +
                       ", but CPU ranks communicate through OpenMPI: start them with `mpirun -np " +
                       std::to_string(env.world_size) + " wanhost run ...`");
    world = make_mpi_world(timeouts.collective_s);
  }
  if (!world) throw UsageError("no communication backend for device " + device.str());
  if (world->size() != env.world_size || world->rank() != env.rank)
    throw UsageError("the " + world->backend() + " backend sees rank " +
                     std::to_string(world->rank()) + " of " + std::to_string(world->size()) +
                     ", but the launch environment (" + env.source + ") says rank " +
                     std::to_string(env.rank) + " of " + std::to_string(env.world_size));
  return world;
}

bool any_rank(Communicator& world, const c10::Device& device, bool flag) {
  return any_rank(world, device, std::vector<bool>{flag}).front();
}

std::vector<bool> any_rank(Communicator& world, const c10::Device& device,
                           const std::vector<bool>& flags) {
  if (world.size() == 1) return flags;
  // On the device the backend works on (the world was made for it: NCCL on GPUs).
  std::vector<int> values(flags.begin(), flags.end());
  at::Tensor t = at::tensor(values, at::kInt).to(device);
  world.all_reduce(t, ReduceOp::Max);
  const at::Tensor host = read_on_host(t);
  std::vector<bool> any(flags.size());
  for (std::size_t i = 0; i < flags.size(); ++i)
    any[i] = host[static_cast<long>(i)].item<int>() != 0;
  return any;
}

}  // namespace wanhost::core
