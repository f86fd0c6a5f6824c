#include "launch_env.hpp"

#include <charconv>
#include <cstring>

#include "wanhost/errors.hpp"

namespace wanhost::core {
namespace {

int parse_int(const char* text, const std::string& what, int min_value) {
  int v = 0;
  const char* end = text + std::strlen(text);
  auto [p, ec] = std::from_chars(text, end, v);
  if (ec != std::errc() || p != end || text == end)
    throw UsageError(what + "='" + text + "' is not an integer");
  if (v < min_value)
    throw UsageError(what + "=" + std::to_string(v) + " must be at least " +
                     std::to_string(min_value));
  return v;
}

// Slurm's SLURM_STEP_NODELIST / SLURM_NODELIST: "node[01-04,07]" -> "node01"; "a,b" -> "a".
std::string first_slurm_host(std::string list) {
  auto comma = list.find(',');
  auto bracket = list.find('[');
  if (bracket != std::string::npos && (comma == std::string::npos || bracket < comma)) {
    std::string prefix = list.substr(0, bracket);
    std::string rest = list.substr(bracket + 1);
    std::size_t n = rest.find_first_of(",-]");
    return prefix + rest.substr(0, n);
  }
  return list.substr(0, comma);
}

}  // namespace

std::string LaunchEnv::describe() const {
  return "rank " + std::to_string(rank) + "/" + std::to_string(world_size) + ", local rank " +
         std::to_string(local_rank) + "/" + std::to_string(local_world_size) + ", rendezvous " +
         master_addr + ":" + std::to_string(master_port) + " (from " + source + ")";
}

LaunchEnv resolve_launch_env(const LaunchFlags& flags, const EnvLookup& env) {
  LaunchEnv le;
  auto var = [&](const char* name, int min_value) -> std::optional<int> {
    const char* v = env(name);
    if (!v || !*v) return std::nullopt;
    return parse_int(v, name, min_value);
  };
  auto str = [&](const char* name) -> std::optional<std::string> {
    const char* v = env(name);
    if (!v || !*v) return std::nullopt;
    return std::string(v);
  };

  // Each launcher as a whole: the first one whose world size and rank are set wins.
  struct Source {
    const char* name;
    const char *rank, *world, *local_rank, *local_world;
  };
  static const Source sources[] = {
      {"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"},
      {"OpenMPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
       "OMPI_COMM_WORLD_LOCAL_SIZE"},
      {"Slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE"},
  };
  // Where each value came from, so that an inconsistency names the variables or flags.
  std::string rank_from = "rank", world_from = "world size", local_rank_from = "local rank",
              local_world_from = "local world size", port_from = "port";
  for (const auto& s : sources) {
    auto r = var(s.rank, 0);
    auto w = var(s.world, 1);
    if (!r || !w) continue;
    le.rank = *r;
    le.world_size = *w;
    rank_from = s.rank;
    world_from = s.world;
    le.local_rank = var(s.local_rank, 0).value_or(0);
    local_rank_from = s.local_rank;
    // SLURM_NTASKS_PER_NODE may read "4(x2)"; take the leading number.
    // Slurm sets SLURM_NTASKS_PER_NODE only with --ntasks-per-node; SLURM_TASKS_PER_NODE always.
    const char* lw_name = s.local_world;
    if (std::string(s.name) == "Slurm" && !(env(lw_name) && *env(lw_name)))
      lw_name = "SLURM_TASKS_PER_NODE";
    if (const char* lw = env(lw_name); lw && *lw) {
      std::string t(lw);
      t = t.substr(0, t.find_first_of("(,"));  // "4(x2)" or "2,1": this node's count comes first
      le.local_world_size = parse_int(t.c_str(), lw_name, 1);
      local_world_from = lw_name;
    } else {
      le.local_world_size = le.world_size;
      local_world_from = s.world;
    }
    le.source = s.name;
    if (std::string(s.name) == "Slurm") {
      if (auto nodes =
              str("SLURM_STEP_NODELIST") ? str("SLURM_STEP_NODELIST") : str("SLURM_NODELIST"))
        le.master_addr = first_slurm_host(*nodes);
    }
    break;
  }
  if (auto a = str("MASTER_ADDR")) le.master_addr = *a;
  if (auto p = var("MASTER_PORT", 1)) le.master_port = *p, port_from = "MASTER_PORT";

  bool any_flag = false;
  if (flags.rank) le.rank = *flags.rank, rank_from = "--rank", any_flag = true;
  if (flags.world_size)
    le.world_size = *flags.world_size, world_from = "--world-size", any_flag = true;
  if (flags.local_rank)
    le.local_rank = *flags.local_rank, local_rank_from = "--local-rank", any_flag = true;
  if (flags.master_addr) le.master_addr = *flags.master_addr, any_flag = true;
  if (flags.master_port)
    le.master_port = *flags.master_port, port_from = "--master-port", any_flag = true;
  if (any_flag) le.source = le.source == "single process" ? "flags" : "flags over " + le.source;

  auto is = [](const std::string& from, int v) { return from + "=" + std::to_string(v); };
  if (le.world_size < 1) throw UsageError(is(world_from, le.world_size) + " must be at least 1");
  if (le.rank < 0 || le.rank >= le.world_size)
    throw UsageError(is(rank_from, le.rank) + " is outside the world of " +
                     std::to_string(le.world_size) + " processes (" +
                     is(world_from, le.world_size) + "; from " + le.source + ")");
  if (le.local_rank < 0 || le.local_rank >= std::max(le.local_world_size, 1) ||
      le.local_rank > le.rank)
    throw UsageError(is(local_rank_from, le.local_rank) + " is inconsistent with " +
                     is(rank_from, le.rank) + " and " + is(local_world_from, le.local_world_size) +
                     " (from " + le.source + ")");
  if (le.master_port < 1 || le.master_port > 65535)
    throw UsageError(is(port_from, le.master_port) + " is not a port (1-65535)");
  return le;
}

}  // namespace wanhost::core
