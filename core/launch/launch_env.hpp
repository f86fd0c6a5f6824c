// Where this process sits in a multi-process job: resolved from flags, then torchrun-style
// variables, then OpenMPI's, then Slurm's, in that order of precedence; a single process otherwise.
#pragma once

#include <functional>
#include <optional>
#include <string>

namespace wanhost::core {

struct LaunchFlags {  // values given on the command line (unset: not given)
  std::optional<int> rank, world_size, local_rank;
  std::optional<std::string> master_addr;
  std::optional<int> master_port;
};

struct LaunchEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string source = "single process";  // "flags", "torchrun", "OpenMPI", "Slurm", ...
  std::string describe() const;
};

using EnvLookup = std::function<const char*(const char*)>;

// Throws UsageError naming the variable or flag whose value is not a valid number or is
// inconsistent (rank outside the world, ...).
LaunchEnv resolve_launch_env(const LaunchFlags& flags, const EnvLookup& getenv_fn);

}  // namespace wanhost::core
