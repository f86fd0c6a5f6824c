// The world communicator for this process, chosen from the launch environment.
#pragma once

#include "../launch/launch_env.hpp"
#include "wanhost/communicator.hpp"

namespace wanhost::core {

// One process: the local communicator. Several: the MPI backend on CPU, NCCL on GPUs.
CommunicatorPtr make_world_communicator(const LaunchEnv& env);

// True on every rank if `flag` is true on any rank (keeps decisions such as "stop now" collective).
bool any_rank(Communicator& world, bool flag);

}  // namespace wanhost::core
