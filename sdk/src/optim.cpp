#include "wanhost/optim.hpp"

#include <cmath>
#include <stdexcept>

#include <ATen/ATen.h>

namespace wanhost {

AdamW::AdamW(std::vector<std::pair<std::string, at::Tensor>> params, const OptimizerConfig& config,
             bool decay_1d)
    : config_(config) {
  for (auto& [name, p] : params)
    slots_.push_back({name, p, at::zeros_like(p, at::MemoryFormat::Contiguous),
                      at::zeros_like(p, at::MemoryFormat::Contiguous),
                      decays(name, p.dim(), decay_1d)});
}

AdamW::AdamW(std::vector<AdamWParam> params, const OptimizerConfig& config) : config_(config) {
  // State in the parameter's dtype (fp32 master weights by default make this fp32); fp32 state
  // for bf16 parameters would change the reference bf16 path.
  for (auto& p : params)
    slots_.push_back({p.name, p.tensor, at::zeros_like(p.tensor, at::MemoryFormat::Contiguous),
                      at::zeros_like(p.tensor, at::MemoryFormat::Contiguous), p.decay});
}

bool AdamW::decays(const std::string& name, std::int64_t dims, bool decay_1d) {
  const bool one_d =
      dims <= 1 || (name.size() >= 4 && name.compare(name.size() - 4, 4, "bias") == 0);
  return decay_1d || !one_d;
}

void AdamW::step(double lr) {
  at::NoGradGuard no_grad;
  ++step_;
  const double b1 = config_.beta1, b2 = config_.beta2;
  const double bias1 = 1.0 - std::pow(b1, static_cast<double>(step_));
  const double bias2 = 1.0 - std::pow(b2, static_cast<double>(step_));
  const double step_size = lr / bias1;
  const double bias2_sqrt = std::sqrt(bias2);
  for (auto& s : slots_) {
    at::Tensor g = s.param.grad();
    if (!g.defined()) continue;
    if (g.scalar_type() != s.param.scalar_type()) g = g.to(s.param.scalar_type());
    if (s.decay && config_.weight_decay != 0.0) s.param.mul_(1.0 - lr * config_.weight_decay);
    s.exp_avg.lerp_(g, 1.0 - b1);
    s.exp_avg_sq.mul_(b2).addcmul_(g, g, 1.0 - b2);
    at::Tensor denom = (s.exp_avg_sq.sqrt() / bias2_sqrt).add_(config_.eps);
    s.param.addcdiv_(s.exp_avg, denom, -step_size);
  }
}

std::map<std::string, at::Tensor> AdamW::state() const {
  std::map<std::string, at::Tensor> out;
  for (const auto& s : slots_) {
    out[s.name + ".exp_avg"] = s.exp_avg;
    out[s.name + ".exp_avg_sq"] = s.exp_avg_sq;
  }
  out["__step__"] = at::scalar_tensor(step_, at::kLong);
  return out;
}

void AdamW::load_state(const std::map<std::string, at::Tensor>& state) {
  std::string problems;
  auto get = [&](const std::string& key, const at::Tensor& like) -> const at::Tensor* {
    auto it = state.find(key);
    if (it == state.end()) {
      problems += "\n  missing " + key;
      return nullptr;
    }
    if (it->second.sizes() != like.sizes()) {
      problems += "\n  " + key + " has shape " + c10::str(it->second.sizes()) + ", expected " +
                  c10::str(like.sizes());
      return nullptr;
    }
    return &it->second;
  };
  for (auto& s : slots_) {
    const at::Tensor* m = get(s.name + ".exp_avg", s.exp_avg);
    const at::Tensor* v = get(s.name + ".exp_avg_sq", s.exp_avg_sq);
    if (m && v) {
      s.exp_avg.copy_(*m);
      s.exp_avg_sq.copy_(*v);
    }
  }
  auto it = state.find("__step__");
  if (it == state.end()) problems += "\n  missing __step__";
  if (!problems.empty())
    throw std::runtime_error("optimizer state does not match the parameters:" + problems);
  step_ = it->second.item<std::int64_t>();
}

std::int64_t AdamW::state_bytes() const {
  std::int64_t n = 0;
  for (const auto& s : slots_)
    n += 2 * s.exp_avg.numel() * static_cast<std::int64_t>(s.exp_avg.element_size());
  return n;
}

at::Tensor grad_norm_squared(const std::vector<at::Tensor>& params) {
  at::Tensor total;
  for (const auto& p : params) {
    const at::Tensor& g = p.grad();
    if (!g.defined()) continue;
    at::Tensor sq = g.to(at::kDouble).pow(2).sum();
    total = total.defined() ? total + sq : sq;
  }
  if (!total.defined()) total = at::zeros({}, at::TensorOptions().dtype(at::kDouble));
  return total;
}

void clip_gradients(const std::vector<at::Tensor>& params, double max_norm, double total_norm) {
  if (max_norm <= 0 || !std::isfinite(total_norm)) return;
  const double coef = max_norm / (total_norm + 1e-6);
  if (coef >= 1.0) return;
  at::NoGradGuard no_grad;
  for (const auto& p : params)
    if (p.grad().defined()) p.grad().mul_(coef);
}

}  // namespace wanhost
