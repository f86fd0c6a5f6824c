// The world communicator for this process, chosen from the launch environment and the device.
#pragma once

#include <c10/core/Device.h>

#include <vector>

#include "../launch/launch_env.hpp"
#include "wanhost/communicator.hpp"

namespace wanhost::core {

struct CommTimeouts {
  double init_s = 300;        // rendezvous / first contact
  double collective_s = 600;  // any single collective or point-to-point operation
};

// One process: the local communicator. Several: NCCL when `device` is a GPU (CUDA builds), the
// OpenMPI backend on CPU (the processes must come from mpirun). Checks that the backend sees the
// same rank and world size as the launch environment.
CommunicatorPtr make_world_communicator(const LaunchEnv& env, const c10::Device& device,
                                        const CommTimeouts& timeouts);

// True on every rank if `flag` is true on any rank (keeps decisions such as "stop now" collective).
bool any_rank(Communicator& world, const c10::Device& device, bool flag);
// The same for several flags in one collective.
std::vector<bool> any_rank(Communicator& world, const c10::Device& device,
                           const std::vector<bool>& flags);

}  // namespace wanhost::core
