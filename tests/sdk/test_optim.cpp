// wanhost::AdamW (LibTorch's fused multi-tensor kernel, per-tensor fallback) against the
// torch.optim.AdamW update written out in float64; gradient norm and clipping.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "wanhost/kit/kernel_options.hpp"
#include "wanhost/kit/optim.hpp"

namespace {

using wanhost::AdamW;
using wanhost::AdamWParam;
using wanhost::OptimizerConfig;

// torch.optim.AdamW in float64: decoupled decay, bias-corrected moments.
struct Reference {
  at::Tensor p, m, v;
  void step(const at::Tensor& g, double lr, std::int64_t t, const OptimizerConfig& c, bool decay) {
    const auto gd = g.to(at::kDouble);
    if (decay) p = p * (1 - lr * c.weight_decay);
    m = c.beta1 * m + (1 - c.beta1) * gd;
    v = c.beta2 * v + (1 - c.beta2) * gd * gd;
    const double b1 = 1 - std::pow(c.beta1, t), b2 = 1 - std::pow(c.beta2, t);
    p = p - lr / b1 * m / (at::sqrt(v) / std::sqrt(b2) + c.eps);
  }
};

double rel(const at::Tensor& a, const at::Tensor& b) {
  const auto x = a.to(at::kDouble), y = b.to(at::kDouble);
  return ((x - y).norm() / y.norm()).item<double>();
}

// Five steps of wanhost::AdamW against the float64 reference of torch.optim.AdamW above.
void expect_torch_adamw() {
  OptimizerConfig c;
  c.beta1 = 0.9;
  c.beta2 = 0.95;
  c.eps = 1e-8;
  c.weight_decay = 0.1;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  // A matrix (decayed), a bias (not decayed), one without a gradient, one of another shape.
  std::vector<AdamWParam> params = {{"w", at::randn({16, 8}, gen), true},
                                    {"b", at::randn({16}, gen), false},
                                    {"frozen", at::randn({4}, gen), true},
                                    {"w2", at::randn({3, 5, 7}, gen), true}};
  const auto frozen_before = params[2].tensor.clone();
  std::vector<Reference> ref;
  for (auto& p : params)
    ref.push_back(
        {p.tensor.to(at::kDouble), at::zeros({}, at::kDouble), at::zeros({}, at::kDouble)});
  AdamW opt(params, c);
  for (std::int64_t t = 1; t <= 5; ++t) {
    const double lr = 1e-2 * t;
    for (std::size_t i = 0; i < params.size(); ++i) {
      if (params[i].name == "frozen") continue;
      const auto g = at::randn(params[i].tensor.sizes(), gen);
      params[i].tensor.mutable_grad() = g;
      ref[i].step(g, lr, t, c, params[i].decay);
    }
    opt.step(lr);
  }
  EXPECT_EQ(opt.steps(), 5);
  for (std::size_t i = 0; i < params.size(); ++i) {
    if (params[i].name == "frozen") continue;
    EXPECT_LT(rel(params[i].tensor, ref[i].p), 1e-6) << params[i].name;
  }
  EXPECT_TRUE(params[2].tensor.equal(frozen_before)) << "a parameter without gradient moved";
  // The state is what a checkpoint stores: moments per parameter and the step.
  const auto state = opt.state();
  EXPECT_LT(rel(state.at("w.exp_avg"), ref[0].m), 1e-6);
  EXPECT_LT(rel(state.at("w.exp_avg_sq"), ref[0].v), 1e-6);
  EXPECT_EQ(state.at("__step__").item<std::int64_t>(), 5);
}

TEST(AdamW, MatchesTorchAdamWWithAndWithoutDecay) {
  expect_torch_adamw();
}

// The per-tensor update (run.kernels.adamw=loop, and the fallback when LibTorch's fused kernel
// refuses) against the same reference: its own bias correction and decoupled decay.
TEST(AdamW, PerTensorUpdateMatchesTorchAdamW) {
  wanhost::KernelOptions loop;
  loop.fused_adamw = false;
  wanhost::set_kernel_options(loop);
  expect_torch_adamw();
  wanhost::set_kernel_options(wanhost::KernelOptions{});
}

TEST(AdamW, ResumedStateContinuesTheSameTrajectory) {
  OptimizerConfig c;
  c.weight_decay = 0.01;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(9);
  const auto start = at::randn({32, 4}, gen);
  std::vector<at::Tensor> grads;
  for (int i = 0; i < 6; ++i) grads.push_back(at::randn({32, 4}, gen));
  auto run = [&](bool resume) {
    std::vector<AdamWParam> p = {{"w", start.clone(), true}};
    AdamW opt(p, c);
    for (int i = 0; i < 3; ++i) {
      p[0].tensor.mutable_grad() = grads[i];
      opt.step(1e-3);
    }
    if (resume) {
      const auto state = opt.state();
      std::vector<AdamWParam> q = {{"w", p[0].tensor.clone(), true}};
      AdamW again(q, c);
      again.load_state(state);
      for (int i = 3; i < 6; ++i) {
        q[0].tensor.mutable_grad() = grads[i];
        again.step(1e-3);
      }
      return q[0].tensor;
    }
    for (int i = 3; i < 6; ++i) {
      p[0].tensor.mutable_grad() = grads[i];
      opt.step(1e-3);
    }
    return p[0].tensor;
  };
  EXPECT_TRUE(run(true).equal(run(false)));
}

// Which parameters get weight decay. The Megatron reference (decay_1d = false) decays matrices
// only: no biases and no 1-D parameters (norm weights, tables); the AutoModel one decays all.
TEST(AdamW, DecayRuleOfBothReferences) {
  using wanhost::AdamW;
  EXPECT_TRUE(AdamW::decays("blocks.0.attn1.to_q.weight", 2, false));
  EXPECT_TRUE(AdamW::decays("patch_embedding.weight", 5, false));
  EXPECT_FALSE(AdamW::decays("blocks.0.attn1.to_q.bias", 1, false));
  EXPECT_FALSE(AdamW::decays("blocks.0.attn1.norm_q.weight", 1, false));
  EXPECT_FALSE(AdamW::decays("condition_embedder.time_embedder.linear_1.bias", 1, false));
  for (const auto& [name, dims] : std::vector<std::pair<std::string, std::int64_t>>{
           {"blocks.0.attn1.to_q.weight", 2}, {"blocks.0.attn1.to_q.bias", 1}, {"norm.weight", 1}})
    EXPECT_TRUE(AdamW::decays(name, dims, true)) << name;
}

TEST(GradNorm, SquaredNormAndClipping) {
  std::vector<at::Tensor> params = {at::zeros({3}), at::zeros({2, 2}), at::zeros({5})};
  params[0].mutable_grad() = at::tensor({3.0f, 0.0f, 4.0f});
  params[1].mutable_grad() = at::full({2, 2}, 1.0f);
  // params[2] has no gradient.
  const double sq = wanhost::grad_norm_squared(params).item<double>();
  EXPECT_NEAR(sq, 25.0 + 4.0, 1e-9);
  wanhost::clip_gradients(params, 1.0, at::scalar_tensor(std::sqrt(sq), at::kDouble));
  const double after = wanhost::grad_norm_squared(params).item<double>();
  EXPECT_NEAR(std::sqrt(after), 1.0, 1e-5);
  // Below the limit, max_norm 0 (off) and a non-finite norm: unchanged, bit for bit.
  const at::Tensor before = params[0].grad().clone();
  wanhost::clip_gradients(params, 10.0, at::scalar_tensor(1.0, at::kDouble));
  wanhost::clip_gradients(params, 0.0, at::scalar_tensor(1e6, at::kDouble));
  wanhost::clip_gradients(params, 1.0, at::scalar_tensor(std::nan(""), at::kDouble));
  EXPECT_TRUE(params[0].grad().equal(before));
  EXPECT_NEAR(wanhost::grad_norm_squared(params).item<double>(), after, 1e-12);
  EXPECT_NEAR(wanhost::grad_norm_squared({at::zeros({2})}).item<double>(), 0.0, 0.0);
}

}  // namespace
