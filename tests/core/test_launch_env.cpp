// The launch environment (core/launch/launch_env.hpp) with a fake environment: single process,
// torchrun, OpenMPI and Slurm variables, their precedence under flags, and invalid values.
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "launch/launch_env.hpp"
#include "wanhost/errors.hpp"

namespace {

using wanhost::UsageError;
using wanhost::core::LaunchEnv;
using wanhost::core::LaunchFlags;
using wanhost::core::resolve_launch_env;

using Vars = std::map<std::string, std::string>;

LaunchEnv resolve(const Vars& vars, const LaunchFlags& flags = {}) {
  return resolve_launch_env(flags, [&vars](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  });
}

// The UsageError message of resolving `vars` (fails the test when nothing is thrown).
std::string usage_error(const Vars& vars, const LaunchFlags& flags = {}) {
  try {
    resolve(vars, flags);
  } catch (const UsageError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a UsageError";
  return {};
}

const Vars kTorchrun = {{"RANK", "3"},
                        {"WORLD_SIZE", "8"},
                        {"LOCAL_RANK", "1"},
                        {"LOCAL_WORLD_SIZE", "2"},
                        {"MASTER_ADDR", "10.0.0.7"},
                        {"MASTER_PORT", "23456"}};
const Vars kOpenMpi = {{"OMPI_COMM_WORLD_RANK", "5"},
                       {"OMPI_COMM_WORLD_SIZE", "16"},
                       {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                       {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"}};
const Vars kSlurm = {{"SLURM_PROCID", "6"},
                     {"SLURM_NTASKS", "8"},
                     {"SLURM_LOCALID", "2"},
                     {"SLURM_NTASKS_PER_NODE", "4(x2)"},
                     {"SLURM_NODELIST", "node[01-04]"}};

Vars merged(std::initializer_list<Vars> parts) {
  Vars v;
  for (const auto& p : parts)  // later parts override earlier ones
    for (const auto& [k, value] : p) v[k] = value;
  return v;
}

TEST(LaunchEnv, NothingSetIsASingleProcess) {
  const LaunchEnv e = resolve({});
  EXPECT_EQ(e.rank, 0);
  EXPECT_EQ(e.world_size, 1);
  EXPECT_EQ(e.local_rank, 0);
  EXPECT_EQ(e.local_world_size, 1);
  EXPECT_EQ(e.master_addr, "127.0.0.1");
  EXPECT_EQ(e.master_port, 29500);
  EXPECT_EQ(e.source, "single process");
  EXPECT_EQ(e.describe(),
            "rank 0/1, local rank 0/1, rendezvous 127.0.0.1:29500 (from single process)");
}

TEST(LaunchEnv, EmptyVariablesCountAsUnset) {
  const LaunchEnv e = resolve({{"RANK", ""}, {"WORLD_SIZE", ""}, {"MASTER_PORT", ""}});
  EXPECT_EQ(e.source, "single process");
  EXPECT_EQ(e.master_port, 29500);
}

TEST(LaunchEnv, Torchrun) {
  const LaunchEnv e = resolve(kTorchrun);
  EXPECT_EQ(e.source, "torchrun");
  EXPECT_EQ(e.rank, 3);
  EXPECT_EQ(e.world_size, 8);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.local_world_size, 2);
  EXPECT_EQ(e.master_addr, "10.0.0.7");
  EXPECT_EQ(e.master_port, 23456);
}

TEST(LaunchEnv, TorchrunNeedsRankAndWorldSize) {
  // RANK alone is not a launch: nothing else set means a single process.
  EXPECT_EQ(resolve({{"RANK", "0"}}).source, "single process");
  // Without LOCAL_WORLD_SIZE every process counts as local.
  const LaunchEnv e = resolve({{"RANK", "1"}, {"WORLD_SIZE", "2"}});
  EXPECT_EQ(e.local_rank, 0);
  EXPECT_EQ(e.local_world_size, 2);
}

TEST(LaunchEnv, OpenMpi) {
  const LaunchEnv e = resolve(kOpenMpi);
  EXPECT_EQ(e.source, "OpenMPI");
  EXPECT_EQ(e.rank, 5);
  EXPECT_EQ(e.world_size, 16);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.local_world_size, 4);
  EXPECT_EQ(e.master_addr, "127.0.0.1");
  EXPECT_EQ(e.master_port, 29500);
}

TEST(LaunchEnv, Slurm) {
  const LaunchEnv e = resolve(kSlurm);
  EXPECT_EQ(e.source, "Slurm");
  EXPECT_EQ(e.rank, 6);
  EXPECT_EQ(e.world_size, 8);
  EXPECT_EQ(e.local_rank, 2);
  EXPECT_EQ(e.local_world_size, 4);  // "4(x2)": 4 tasks on each of 2 nodes
  EXPECT_EQ(e.master_addr, "node01");
}

TEST(LaunchEnv, SlurmNodeLists) {
  auto master = [](const std::string& list, const char* var = "SLURM_NODELIST") {
    Vars v = kSlurm;
    v.erase("SLURM_NODELIST");
    v[var] = list;
    return resolve(v).master_addr;
  };
  EXPECT_EQ(master("node[01-04]"), "node01");
  EXPECT_EQ(master("gpu[7,9-11]"), "gpu7");
  EXPECT_EQ(master("alpha,beta"), "alpha");
  EXPECT_EQ(master("single"), "single");
  EXPECT_EQ(master("a1,b[2-3]"), "a1");
  EXPECT_EQ(master("c[5-6],d7"), "c5");
  // The step's node list wins over the job's.
  Vars v = kSlurm;
  v["SLURM_STEP_NODELIST"] = "step[3-4]";
  EXPECT_EQ(resolve(v).master_addr, "step3");
  // MASTER_ADDR / MASTER_PORT win over what Slurm implies.
  v["MASTER_ADDR"] = "head";
  v["MASTER_PORT"] = "4000";
  EXPECT_EQ(resolve(v).master_addr, "head");
  EXPECT_EQ(resolve(v).master_port, 4000);
}

TEST(LaunchEnv, PrecedenceTorchrunOverOpenMpiOverSlurm) {
  EXPECT_EQ(resolve(merged({kTorchrun, kOpenMpi, kSlurm})).source, "torchrun");
  EXPECT_EQ(resolve(merged({kTorchrun, kOpenMpi, kSlurm})).rank, 3);
  EXPECT_EQ(resolve(merged({kOpenMpi, kSlurm})).source, "OpenMPI");
  EXPECT_EQ(resolve(merged({kOpenMpi, kSlurm})).rank, 5);
  EXPECT_EQ(resolve(kSlurm).source, "Slurm");
}

TEST(LaunchEnv, FlagsOverEverything) {
  LaunchFlags f;
  f.rank = 1;
  f.world_size = 2;
  f.local_rank = 1;
  f.master_addr = "flaghost";
  f.master_port = 1111;
  const LaunchEnv e = resolve(merged({kTorchrun, kOpenMpi, kSlurm}), f);
  EXPECT_EQ(e.rank, 1);
  EXPECT_EQ(e.world_size, 2);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.master_addr, "flaghost");
  EXPECT_EQ(e.master_port, 1111);
  EXPECT_EQ(e.source, "flags over torchrun");
  // A single flag overrides one value and keeps the rest of the launcher's.
  LaunchFlags port;
  port.master_port = 2222;
  const LaunchEnv p = resolve(kSlurm, port);
  EXPECT_EQ(p.rank, 6);
  EXPECT_EQ(p.master_addr, "node01");
  EXPECT_EQ(p.master_port, 2222);
  EXPECT_EQ(p.source, "flags over Slurm");
  // Flags alone.
  LaunchFlags alone;
  alone.rank = 2;
  alone.world_size = 4;
  alone.local_rank = 0;
  const LaunchEnv a = resolve({}, alone);
  EXPECT_EQ(a.source, "flags");
  EXPECT_EQ(a.rank, 2);
  EXPECT_EQ(a.world_size, 4);
}

TEST(LaunchEnv, NonNumericValuesNameTheVariable) {
  EXPECT_EQ(usage_error({{"RANK", "abc"}, {"WORLD_SIZE", "4"}}), "RANK='abc' is not an integer");
  EXPECT_EQ(usage_error({{"RANK", "0"}, {"WORLD_SIZE", "4x"}}),
            "WORLD_SIZE='4x' is not an integer");
  EXPECT_EQ(usage_error({{"OMPI_COMM_WORLD_RANK", " 1"}, {"OMPI_COMM_WORLD_SIZE", "2"}}),
            "OMPI_COMM_WORLD_RANK=' 1' is not an integer");
  EXPECT_EQ(usage_error(merged({kSlurm, {{"SLURM_LOCALID", "first"}}})),
            "SLURM_LOCALID='first' is not an integer");
  EXPECT_EQ(usage_error(merged({kSlurm, {{"SLURM_NTASKS_PER_NODE", "four"}}})),
            "SLURM_NTASKS_PER_NODE='four' is not an integer");
  EXPECT_EQ(usage_error({{"MASTER_PORT", "http"}}), "MASTER_PORT='http' is not an integer");
  EXPECT_EQ(usage_error({{"RANK", "-1"}, {"WORLD_SIZE", "4"}}), "RANK=-1 must be at least 0");
  EXPECT_EQ(usage_error({{"RANK", "0"}, {"WORLD_SIZE", "0"}}), "WORLD_SIZE=0 must be at least 1");
}

TEST(LaunchEnv, RankOutsideTheWorldNamesTheVariables) {
  std::string msg = usage_error({{"RANK", "4"}, {"WORLD_SIZE", "4"}});
  EXPECT_NE(msg.find("RANK=4"), std::string::npos) << msg;
  EXPECT_NE(msg.find("WORLD_SIZE=4"), std::string::npos) << msg;
  EXPECT_NE(msg.find("outside the world of 4 processes"), std::string::npos) << msg;
  msg = usage_error(merged({kSlurm, {{"SLURM_PROCID", "8"}}}));
  EXPECT_NE(msg.find("SLURM_PROCID=8"), std::string::npos) << msg;
  EXPECT_NE(msg.find("SLURM_NTASKS=8"), std::string::npos) << msg;
  // Given by flags, the message names the flags.
  LaunchFlags f;
  f.rank = 2;
  f.world_size = 2;
  msg = usage_error({}, f);
  EXPECT_NE(msg.find("--rank=2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--world-size=2"), std::string::npos) << msg;
  // A flag that shrinks the world of a launcher is caught too.
  LaunchFlags w;
  w.world_size = 3;
  msg = usage_error(kTorchrun, w);
  EXPECT_NE(msg.find("RANK=3"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--world-size=3"), std::string::npos) << msg;
}

TEST(LaunchEnv, InconsistentLocalRank) {
  const std::string msg = usage_error(merged({kTorchrun, {{"LOCAL_RANK", "2"}}}));
  EXPECT_NE(msg.find("LOCAL_RANK=2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("LOCAL_WORLD_SIZE=2"), std::string::npos) << msg;
}

TEST(LaunchEnv, PortOutOfRange) {
  EXPECT_NE(usage_error({{"MASTER_PORT", "65536"}}).find("MASTER_PORT=65536 is not a port"),
            std::string::npos);
  EXPECT_EQ(resolve({{"MASTER_PORT", "65535"}}).master_port, 65535);
  EXPECT_EQ(usage_error({{"MASTER_PORT", "0"}}), "MASTER_PORT=0 must be at least 1");
  LaunchFlags f;
  f.master_port = 70000;
  std::string msg = usage_error({}, f);
  EXPECT_NE(msg.find("--master-port=70000 is not a port"), std::string::npos) << msg;
  f.master_port = 0;
  msg = usage_error({}, f);
  EXPECT_NE(msg.find("--master-port=0 is not a port"), std::string::npos) << msg;
}

}  // namespace
