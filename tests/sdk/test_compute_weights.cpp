// Compute-dtype copies of master weights made in one pass a step (wanhost/kit/compute_weights.hpp,
// run.kernels.weight_casts=per_step): a fresh copy holds the cast's values and is reused; a copy
// is never used once weights may have changed; the operators that take fp32 masters give the same
// values and gradients with the copies as without. On a CPU the operators compute through ATen
// (compute_weight_differentiable); the GPU's autograd functions ask compute_weight the same way.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "wanhost/kit/compute_weights.hpp"
#include "wanhost/kit/fused.hpp"
#include "wanhost/kit/optim.hpp"

namespace {

using wanhost::compute_weight;
using wanhost::compute_weight_hits;

at::Tensor master(std::vector<std::int64_t> shape, std::uint64_t seed) {
  at::manual_seed(seed);
  return at::randn(shape).requires_grad_(true);
}

bool same(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() && at::equal(a, b);
}

// Each test starts with no copies and leaves none behind.
struct ComputeWeights : ::testing::Test {
  void SetUp() override { wanhost::drop_compute_weights(); }
  void TearDown() override { wanhost::drop_compute_weights(); }
};

TEST_F(ComputeWeights, AFreshCopyHoldsTheCastAndIsReusedStepAfterStep) {
  const auto w = master({24, 16}, 1), b = master({24}, 2);
  wanhost::refresh_compute_weights({w, b}, at::kBFloat16);
  EXPECT_EQ(wanhost::compute_weight_count(), 2);
  EXPECT_EQ(wanhost::compute_weight_bytes(), (24 * 16 + 24) * 2);

  const auto hits = compute_weight_hits();
  const auto first = compute_weight(w, at::kBFloat16);
  EXPECT_TRUE(same(first, w.detach().to(at::kBFloat16)));
  EXPECT_EQ(compute_weight_hits(), hits + 1);
  // Asked again: the same tensor, not another cast.
  EXPECT_EQ(compute_weight(w, at::kBFloat16).data_ptr(), first.data_ptr());
  // A tensor already in the dtype is itself.
  const auto h = w.detach().to(at::kBFloat16);
  EXPECT_EQ(compute_weight(h, at::kBFloat16).data_ptr(), h.data_ptr());

  // An optimizer step changes the masters; the next refresh casts into the same copies.
  {
    at::NoGradGuard no_grad;
    w.mul_(0.5).add_(1.0);
  }
  wanhost::weights_changed();
  wanhost::refresh_compute_weights({w, b}, at::kBFloat16);
  const auto second = compute_weight(w, at::kBFloat16);
  EXPECT_EQ(second.data_ptr(), first.data_ptr());  // a captured CUDA graph keeps its addresses
  EXPECT_TRUE(same(second, w.detach().to(at::kBFloat16)));
  EXPECT_TRUE(same(compute_weight(b, at::kBFloat16), b.detach().to(at::kBFloat16)));
}

TEST_F(ComputeWeights, ACopyIsNeverUsedOnceItsMasterMayHaveChanged) {
  const auto w = master({8, 8}, 3);
  auto fresh = [&] {
    const auto hits = compute_weight_hits();
    const auto got = compute_weight(w, at::kBFloat16);
    EXPECT_TRUE(same(got, w.detach().to(at::kBFloat16)));  // right values either way
    return compute_weight_hits() == hits + 1;
  };
  wanhost::refresh_compute_weights({w}, at::kBFloat16);
  EXPECT_TRUE(fresh());

  // weights_changed(): whatever changed the weights (wanhost's AdamW kernel writes them without
  // moving their version counters).
  wanhost::weights_changed();
  EXPECT_FALSE(fresh());

  // An in-place change through ATen (the version counter moves) without weights_changed().
  wanhost::refresh_compute_weights({w}, at::kBFloat16);
  EXPECT_TRUE(fresh());
  {
    at::NoGradGuard no_grad;
    w.add_(1.0);
  }
  EXPECT_FALSE(fresh());

  // Another storage under the same tensor (a sharding plugin's set_data).
  wanhost::refresh_compute_weights({w}, at::kBFloat16);
  EXPECT_TRUE(fresh());
  {
    at::NoGradGuard no_grad;
    w.set_data(w.detach().clone());
  }
  EXPECT_FALSE(fresh());

  // Another dtype, a tensor that was not refreshed, and after the copies are dropped.
  wanhost::refresh_compute_weights({w}, at::kBFloat16);
  EXPECT_TRUE(same(compute_weight(w, at::kHalf), w.detach().to(at::kHalf)));
  const auto other = master({8, 8}, 4);
  const auto hits = compute_weight_hits();
  EXPECT_TRUE(same(compute_weight(other, at::kBFloat16), other.detach().to(at::kBFloat16)));
  EXPECT_EQ(compute_weight_hits(), hits);
  wanhost::drop_compute_weights();
  EXPECT_EQ(wanhost::compute_weight_count(), 0);
  EXPECT_FALSE(fresh());
}

TEST_F(ComputeWeights, EveryAdamWStepSaysTheWeightsChanged) {
  auto p = master({4, 4}, 5);
  wanhost::OptimizerConfig config;
  wanhost::AdamW adamw(std::vector<wanhost::AdamWParam>{{"p", p, true}}, config);
  p.mutable_grad() = at::ones_like(p);
  const auto before = wanhost::weights_epoch();
  adamw.step(1e-3);
  EXPECT_GT(wanhost::weights_epoch(), before);
  const auto after_first = wanhost::weights_epoch();
  adamw.step(at::full({}, 1e-3), at::Tensor(), at::zeros({}));
  EXPECT_GT(wanhost::weights_epoch(), after_first);
}

// The fused operators, bf16 inputs and fp32 masters on `device`: the same outputs and the same
// gradients, bit for bit, whether their weights come from the copies or are cast at each use; the
// copies are really used (at least one hit for each weight and bias). On a CPU the operators
// compute through ATen (compute_weight_differentiable), on a GPU through their autograd functions
// (compute_weight inside their forward).
void expect_same_with_copies(const c10::Device& device) {
  const std::int64_t dim = 16, hidden = 32, head_dim = 8;
  auto on = [&](at::Tensor t) { return t.to(device).detach().requires_grad_(true); };
  const std::vector<at::Tensor> masters{
      on(master({hidden, dim}, 10)), on(master({hidden}, 11)),  // feed-forward up
      on(master({dim, hidden}, 12)), on(master({dim}, 13)),     // feed-forward down
      on(master({dim, dim}, 14)),    on(master({dim}, 15)),     // q
      on(master({dim, dim}, 16)),    on(master({dim}, 17)),     // k
      on(master({dim}, 18))};                                   // RMSNorm weight
  at::manual_seed(20);
  const auto x0 = at::randn({2, 5, dim}).to(device, at::kBFloat16);
  const auto cos = at::randn({5, head_dim / 2}).to(device);
  const auto sin = at::randn({5, head_dim / 2}).to(device);

  struct Pass {
    std::vector<at::Tensor> out, grads;
  };
  auto pass = [&]() {
    for (const auto& m : masters) m.mutable_grad() = at::Tensor();
    auto x = x0.clone().requires_grad_(true);
    namespace fused = wanhost::fused;
    Pass p;
    p.out.push_back(fused::gelu_feed_forward(x, masters[0], masters[1], masters[2], masters[3]));
    const auto qk =
        fused::shared_input_linears(x, {masters[4], masters[5], masters[6], masters[7]});
    p.out.insert(p.out.end(), qk.begin(), qk.end());
    p.out.push_back(fused::linear(x, masters[4], masters[5]));
    p.out.push_back(fused::rms_norm_rope(qk[1], masters[8], cos, sin, head_dim, 1e-6));
    at::Tensor loss = at::zeros({}, x0.options().dtype(at::kFloat));
    for (std::size_t i = 0; i < p.out.size(); ++i)
      loss = loss + p.out[i].to(at::kFloat).square().mean() * static_cast<double>(i + 1);
    loss.backward();
    p.grads.push_back(x.grad());
    for (const auto& m : masters) p.grads.push_back(m.grad());
    return p;
  };

  const auto per_use = pass();
  wanhost::refresh_compute_weights(masters, at::kBFloat16);
  const auto hits = compute_weight_hits();
  const auto per_step = pass();
  EXPECT_GE(compute_weight_hits() - hits, static_cast<std::int64_t>(masters.size()));
  wanhost::keep_used_compute_weights();
  EXPECT_EQ(wanhost::compute_weight_count(), static_cast<std::int64_t>(masters.size()));

  ASSERT_EQ(per_use.out.size(), per_step.out.size());
  for (std::size_t i = 0; i < per_use.out.size(); ++i)
    EXPECT_TRUE(same(per_use.out[i], per_step.out[i])) << "output " << i;
  ASSERT_EQ(per_use.grads.size(), per_step.grads.size());
  for (std::size_t i = 0; i < per_use.grads.size(); ++i) {
    ASSERT_TRUE(per_step.grads[i].defined()) << "gradient " << i;
    EXPECT_TRUE(same(per_use.grads[i], per_step.grads[i])) << "gradient " << i;
  }
  for (std::size_t i = 1; i < per_step.grads.size(); ++i)
    EXPECT_EQ(per_step.grads[i].scalar_type(), at::kFloat) << "master gradient " << i - 1;
}

TEST_F(ComputeWeights, OperatorsGiveTheSameValuesAndGradientsWithTheCopies) {
  expect_same_with_copies(c10::kCPU);
}

TEST_F(ComputeWeights, OperatorsGiveTheSameValuesAndGradientsWithTheCopiesOnAGpu) {
  if (!wanhost::fused::kernels_built() || !at::hasCUDA())
    GTEST_SKIP() << "needs a CUDA build and a CUDA device";
  expect_same_with_copies(c10::Device(c10::kCUDA, 0));
}

TEST_F(ComputeWeights, CopiesNobodyUsedInTheFirstStepAreDropped) {
  const auto used = master({16, 16}, 30), unused = master({16, 8}, 31);
  wanhost::refresh_compute_weights({used, unused}, at::kBFloat16);
  (void)compute_weight(used, at::kBFloat16);
  wanhost::keep_used_compute_weights();
  EXPECT_EQ(wanhost::compute_weight_count(), 1);
  EXPECT_EQ(wanhost::compute_weight_bytes(), 16 * 16 * 2);

  // Later steps cast only the kept copy; the dropped weight is cast where it is used.
  wanhost::weights_changed();
  wanhost::refresh_compute_weights({used, unused}, at::kBFloat16);
  wanhost::keep_used_compute_weights();  // settled: nothing more is dropped
  EXPECT_EQ(wanhost::compute_weight_count(), 1);
  const auto hits = compute_weight_hits();
  EXPECT_TRUE(same(compute_weight(unused, at::kBFloat16), unused.detach().to(at::kBFloat16)));
  EXPECT_EQ(compute_weight_hits(), hits) << "the unused weight has no copy";
  EXPECT_TRUE(same(compute_weight(used, at::kBFloat16), used.detach().to(at::kBFloat16)));
  EXPECT_EQ(compute_weight_hits(), hits + 1) << "the used weight's copy is kept";

  // A new set of masters (the next stage's model) starts again with copies of all of them.
  const auto next = master({16, 16}, 32);
  wanhost::refresh_compute_weights({used, unused, next}, at::kBFloat16);
  EXPECT_EQ(wanhost::compute_weight_count(), 3);
  // Tensors already in the compute dtype and integer tensors get no copy.
  wanhost::refresh_compute_weights({used, used.detach().to(at::kBFloat16), at::arange(4)},
                                   at::kBFloat16);
  EXPECT_EQ(wanhost::compute_weight_count(), 1);
}

}  // namespace
