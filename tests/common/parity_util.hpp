// Helpers shared by the parity and CLI tests of the model plugins (wan21_dit, wan_vae, umt5):
// running the built `wanhost`, comparing tensors, reading reference files.
#pragma once

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

namespace wanhost::testing {

struct CliResult {
  int code;            // exit status (-1 when it did not exit normally)
  std::string output;  // stdout and stderr together
};

// Runs `<build>/bin/wanhost args` through the shell.
inline CliResult run_wanhost(const std::string& args) {
  const std::string cmd = std::string(WANHOST_BINARY_DIR) + "/bin/wanhost " + args + " 2>&1";
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  char buf[4096];
  while (p && fgets(buf, sizeof buf, p)) out += buf;
  const int status = p ? pclose(p) : -1;
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

// ||got - want|| / ||want||, computed in float64.
inline double rel_l2(const at::Tensor& got, const at::Tensor& want) {
  const at::Tensor w = want.to(at::kDouble);
  return ((got.to(at::kDouble) - w).norm() / w.norm()).item<double>();
}

inline bool exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

inline nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path);
  return nlohmann::json::parse(in);
}

// The reference tensors are tiny: one LibTorch thread is fastest and keeps timings sane on a
// loaded machine. Register once per test program with WANHOST_ONE_THREAD_TESTS().
class OneThread : public ::testing::Environment {
 public:
  void SetUp() override { at::set_num_threads(1); }
};

}  // namespace wanhost::testing

#define WANHOST_ONE_THREAD_TESTS()                              \
  [[maybe_unused]] static auto* const wanhost_one_thread_env_ = \
      ::testing::AddGlobalTestEnvironment(new ::wanhost::testing::OneThread)
