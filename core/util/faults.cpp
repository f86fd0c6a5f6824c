#include "faults.hpp"

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <string>
#include <thread>

#include <ATen/ATen.h>

#include "wanhost/log.hpp"

namespace wanhost::core {
namespace {
int g_fault_rank = 0;
}  // namespace

void set_fault_rank(int rank) {
  g_fault_rank = rank;
}

bool faults_configured() {
  return std::getenv("WANHOST_FAULT") != nullptr;
}

bool fault_active(const char* site, long step) {
  const char* spec = std::getenv("WANHOST_FAULT");
  if (!spec) return false;
  if (const char* only = std::getenv("WANHOST_FAULT_RANK"); only && std::atoi(only) != g_fault_rank)
    return false;
  const std::string s(spec);
  const auto colon = s.rfind(':');
  if (colon == std::string::npos) return false;
  if (s.substr(0, colon) != site) return false;
  const long at = std::atol(s.c_str() + colon + 1);
  return s.back() == '+' ? step >= at : step == at;  // "<site>:<N>+": step N and every later one
}

void fault_point(const char* site, long step) {
  if (fault_active(site, step)) {
    logger()->flush();
    std::raise(SIGKILL);
  }
}

void step_faults(long step, at::Tensor& loss_sum, torch::nn::Module& model) {
  const bool nan_loss = fault_active("step.nan_loss", step);   // a diverged step
  if (nan_loss || fault_active("step.nan_loss_only", step)) {  // ... or its loss alone
    at::NoGradGuard no_grad;
    loss_sum = at::full_like(loss_sum, std::nan(""));
    for (auto& p : model.parameters())
      if (nan_loss && p.grad().defined()) p.mutable_grad().fill_(std::nan(""));
  }
  if (fault_active("step.hang", step)) {  // a rank that stops responding
    logger()->warn("fault injection: rank {} hangs at global step {}", g_fault_rank, step);
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
  }
}

}  // namespace wanhost::core
