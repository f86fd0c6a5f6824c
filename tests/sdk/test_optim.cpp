// wanhost::AdamW (LibTorch's fused multi-tensor kernel, per-tensor fallback) against the
// torch.optim.AdamW update written out in float64; gradient norm and clipping.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "wanhost/kit/kernel_options.hpp"
#include "wanhost/kit/optim.hpp"
#include "wanhost/kit/parallelism_base.hpp"

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

// Selects an AdamW path for a scope (kernel_options): LibTorch's fused kernel, the per-tensor
// update or wanhost's kernel; then restores the defaults.
struct AdamWPath {
  // `adamw`: run.kernels.adamw as the manifest names it (fused, loop, wanhost).
  explicit AdamWPath(const std::string& adamw) : name(adamw) {
    wanhost::set_kernel_options(wanhost::parse_kernel_options("auto", adamw, "dgelu"));
  }
  // A literal would otherwise take the bool overload (pointer to bool is a standard conversion,
  // preferred to std::string's): AdamWPath("wanhost") ran LibTorch's fused kernel until
  // 2026-12-05, when the GPU test's gradient check caught it on an H100.
  explicit AdamWPath(const char* adamw) : AdamWPath(std::string(adamw)) {}
  explicit AdamWPath(bool fused) : AdamWPath(std::string(fused ? "fused" : "loop")) {}
  ~AdamWPath() { wanhost::set_kernel_options(wanhost::KernelOptions{}); }
  AdamWPath(const AdamWPath&) = delete;
  AdamWPath& operator=(const AdamWPath&) = delete;
  const std::string name;
};

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
  const AdamWPath loop(false);
  expect_torch_adamw();
}

// AdamW::step with a gradient divisor (how ParallelismBase clips): the update of torch.optim.AdamW
// on the divided gradients, on both the fused kernel (its grad_scale) and the per-tensor path; a
// divisor of 1 changes nothing, bit for bit.
void expect_divided_update(bool fused) {
  const AdamWPath chosen(fused);
  const std::string& path = chosen.name;
  OptimizerConfig c;
  c.weight_decay = 0.1;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  const auto start = at::randn({16, 8}, gen), bias = at::randn({16}, gen);
  std::vector<AdamWParam> p = {{"w", start.clone(), true}, {"b", bias.clone(), false}};
  std::vector<Reference> ref;
  for (const auto& q : p)
    ref.push_back(
        {q.tensor.to(at::kDouble), at::zeros({}, at::kDouble), at::zeros({}, at::kDouble)});
  AdamW opt(p, c);
  const std::vector<double> divisors = {3.5, 1.0, 1.0 + 1e-3};
  for (std::int64_t t = 1; t <= 3; ++t) {
    const double d = divisors[t - 1];
    for (std::size_t i = 0; i < p.size(); ++i) {
      const auto g = at::randn(p[i].tensor.sizes(), gen) * 4;
      p[i].tensor.mutable_grad() = g;
      ref[i].step(g.to(at::kDouble) / d, 1e-2, t, c, p[i].decay);
    }
    opt.step(1e-2, at::scalar_tensor(d, at::kFloat));
  }
  for (std::size_t i = 0; i < p.size(); ++i)
    EXPECT_LT(rel(p[i].tensor, ref[i].p), 1e-6) << p[i].name << " " << path;
  // A divisor of exactly 1 is the plain update, bit for bit.
  std::vector<AdamWParam> a = {{"w", start.clone(), true}}, b = {{"w", start.clone(), true}};
  AdamW with(a, c), without(b, c);
  const auto g = at::randn({16, 8}, gen);
  a[0].tensor.mutable_grad() = g.clone();
  b[0].tensor.mutable_grad() = g.clone();
  with.step(1e-2, at::scalar_tensor(1.0, at::kFloat));
  without.step(1e-2);
  EXPECT_TRUE(a[0].tensor.equal(b[0].tensor)) << path;
}

TEST(AdamW, GradientDivisorIsAppliedInsideTheUpdate) {
  expect_divided_update(true);
  expect_divided_update(false);
}

TEST(GradNorm, ClipDivisorIsTheInverseOfTheClipFactor) {
  auto divisor = [](double norm, double max_norm) {
    return wanhost::clip_divisor(at::scalar_tensor(norm, at::kDouble), max_norm).item<double>();
  };
  EXPECT_FLOAT_EQ(divisor(5.0, 1.0), static_cast<float>(5.000001));  // (norm + 1e-6) / max_norm
  EXPECT_FLOAT_EQ(divisor(5.0, 2.0), static_cast<float>(5.000001 / 2));
  EXPECT_NEAR(divisor(1e-6, 1e-6), 2.0, 1e-6);  // the 1e-6 of torch's rule, where it shows
  EXPECT_EQ(divisor(0.5, 1.0), 1.0);            // below the limit: unchanged
  EXPECT_EQ(divisor(1e6, 0.0), 1.0);            // clipping off
  EXPECT_EQ(divisor(std::nan(""), 1.0), 1.0);   // the host skips or aborts such a step
  EXPECT_EQ(divisor(INFINITY, 1.0), 1.0);
  EXPECT_EQ(wanhost::clip_divisor(at::scalar_tensor(2.0, at::kDouble), 1.0).scalar_type(),
            at::kFloat);
}

// AdamW::step with `skip` (how the host skips a non-finite step without reading it, SDK 2.4): a
// skipped step, even on non-finite gradients, leaves parameters, moments and the step count as
// they were, and the run goes on exactly as if the step had never been taken; skip = 0 is the
// plain update bit for bit. Fused kernel (its found_inf) and per-tensor path.
void expect_skipped_step_changes_nothing(bool fused, const c10::Device& device = at::kCPU) {
  const AdamWPath chosen(fused);
  const std::string path = chosen.name + " on " + device.str();
  OptimizerConfig c;
  c.weight_decay = 0.1;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(17);
  const auto start = at::randn({16, 8}, gen).to(device);
  std::vector<at::Tensor> grads;
  for (int i = 0; i < 3; ++i) grads.push_back(at::randn({16, 8}, gen).to(device));
  const auto on = at::TensorOptions().device(device);
  const auto no = at::scalar_tensor(false, on.dtype(at::kBool)),
             yes = at::scalar_tensor(true, on.dtype(at::kBool));
  std::vector<AdamWParam> a = {{"w", start.clone(), true}}, b = {{"w", start.clone(), true}};
  AdamW skipping(a, c), straight(b, c);
  a[0].tensor.mutable_grad() = grads[0].clone();
  skipping.step(1e-2, at::Tensor(), no);
  b[0].tensor.mutable_grad() = grads[0].clone();
  straight.step(1e-2);
  EXPECT_TRUE(a[0].tensor.equal(b[0].tensor)) << "skip = 0 is the plain update, " << path;
  const auto before = a[0].tensor.clone();
  std::map<std::string, at::Tensor> moments;  // copies: state() hands out the live tensors
  for (const auto& [key, value] : skipping.state()) moments[key] = value.clone();
  a[0].tensor.mutable_grad() = at::full({16, 8}, std::nan(""), on);
  skipping.step(1e-2, at::scalar_tensor(3.0, on.dtype(at::kFloat)), yes);
  EXPECT_TRUE(a[0].tensor.equal(before)) << "a skipped step moved the weights, " << path;
  for (const auto& [key, value] : skipping.state())
    EXPECT_TRUE(value.equal(moments.at(key))) << key << " changed in a skipped step, " << path;
  EXPECT_EQ(skipping.steps(), 1) << path;
  for (int i : {1, 2}) {  // then the same trajectory as a run without the skipped step
    a[0].tensor.mutable_grad() = grads[i].clone();
    skipping.step(1e-2, at::Tensor(), no);
    b[0].tensor.mutable_grad() = grads[i].clone();
    straight.step(1e-2);
  }
  EXPECT_TRUE(a[0].tensor.equal(b[0].tensor)) << "after the skipped step, " << path;
  EXPECT_EQ(skipping.steps(), 3) << path;
  EXPECT_EQ(skipping.state().at("__step__").item<std::int64_t>(), 3) << path;
  // A loaded state's step count is the saved one, skipped steps forgotten.
  skipping.load_state(straight.state());
  EXPECT_EQ(skipping.steps(), 3) << path;
}

TEST(AdamW, SkippedStepChangesNothing) {
  expect_skipped_step_changes_nothing(true);
  expect_skipped_step_changes_nothing(false);
}

// The same with LibTorch's fused CUDA kernel (scripts/device/fp8.sh PARTS=tests runs it).
TEST(AdamW, SkippedStepChangesNothingOnAGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  expect_skipped_step_changes_nothing(true, at::kCUDA);
  expect_skipped_step_changes_nothing(false, at::kCUDA);
}

// AdamW::step with the learning rate as a device tensor (kit 1.6; what a step captured as a CUDA
// graph reads on every replay): the update of step(double) bit for bit, over steps of changing
// learning rates, with a gradient divisor (the clip) and a skip. On the CPU with learning rates
// float32 holds exactly (the tensor is float32; the CPU kernel computes with a double learning
// rate); on a GPU with any learning rate, since the fused CUDA kernel rounds a host learning rate
// to float32 too (LibTorch's fused_adam_utils.cuh: lr_opmath).
void expect_device_lr_gives_host_lrs_update(bool fused, const c10::Device& device,
                                            const std::vector<double>& lrs) {
  const AdamWPath chosen(fused);
  const std::string path = chosen.name + " on " + device.str();
  OptimizerConfig c;
  c.weight_decay = 0.1;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(23);
  const auto on = at::TensorOptions().device(device);
  std::vector<AdamWParam> a = {{"w", at::randn({16, 8}, gen).to(device), true},
                               {"b", at::randn({16}, gen).to(device), false}};
  std::vector<AdamWParam> b = {{"w", a[0].tensor.clone(), true}, {"b", a[1].tensor.clone(), false}};
  AdamW host(a, c), dev(b, c);
  const auto no = at::scalar_tensor(false, on.dtype(at::kBool));
  for (std::size_t t = 0; t < lrs.size(); ++t) {
    const auto divisor =
        at::scalar_tensor(1.0 + 0.5 * static_cast<double>(t), on.dtype(at::kFloat));
    for (std::size_t i = 0; i < a.size(); ++i) {
      const auto g = at::randn(a[i].tensor.sizes(), gen).to(device);
      a[i].tensor.mutable_grad() = g.clone();
      b[i].tensor.mutable_grad() = g.clone();
    }
    host.step(lrs[t], divisor, no);
    dev.step(at::scalar_tensor(lrs[t], on.dtype(at::kFloat)), divisor, no);
    for (std::size_t i = 0; i < a.size(); ++i)
      ASSERT_TRUE(a[i].tensor.equal(b[i].tensor))
          << a[i].name << " after step " << t + 1 << " (lr " << lrs[t] << "), " << path;
  }
  for (const auto& [key, value] : host.state())
    EXPECT_TRUE(value.equal(dev.state().at(key))) << key << ", " << path;
  // A skipped step is skipped with a device learning rate too.
  const auto before = b[0].tensor.clone();
  b[0].tensor.mutable_grad() = at::full({16, 8}, std::nan(""), on);
  b[1].tensor.mutable_grad() = at::zeros({16}, on);
  dev.step(at::scalar_tensor(lrs[0], on.dtype(at::kFloat)), at::Tensor(),
           at::scalar_tensor(true, on.dtype(at::kBool)));
  EXPECT_TRUE(b[0].tensor.equal(before)) << path;
  EXPECT_EQ(dev.steps(), static_cast<std::int64_t>(lrs.size())) << path;
  EXPECT_THROW(dev.step(at::zeros({2}, on), at::Tensor(), at::Tensor()), std::invalid_argument);
}

TEST(AdamW, DeviceLearningRateGivesTheHostLearningRatesUpdate) {
  // Multiples of 2^-12: float32 holds them exactly; a warm-up's rising steps.
  const std::vector<double> lrs = {1.0 / 4096, 3.0 / 4096, 5.0 / 4096, 7.0 / 4096, 7.0 / 4096};
  expect_device_lr_gives_host_lrs_update(true, at::kCPU, lrs);
  expect_device_lr_gives_host_lrs_update(false, at::kCPU, lrs);
}

TEST(AdamW, DeviceLearningRateGivesTheHostLearningRatesUpdateOnAGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  // Learning rates float32 does not hold (a warm-up towards 1e-4): the fused kernel rounds both.
  std::vector<double> lrs;
  for (int t = 1; t <= 6; ++t) lrs.push_back(1e-4 * t / 7.0);
  expect_device_lr_gives_host_lrs_update(true, at::kCUDA, lrs);
}

// run.kernels.adamw = wanhost (kernels/adamw_kernels.hpp) against LibTorch's fused AdamW on a
// GPU: the same parameters and moments (to float rounding: the same operations in the same order,
// compiled apart) over steps with and without weight decay, a clip divisor, a host and a device
// LR and a skipped step; more tensors than one launch takes, sizes with tails, a tensor whose
// address is not 16-byte aligned (the scalar path); and its gradients left as they were (LibTorch's
// kernel writes them back divided).
TEST(AdamW, WanhostKernelMatchesLibTorchsFusedOnAGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  OptimizerConfig c;
  c.beta2 = 0.95;
  c.weight_decay = 0.1;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(31);
  const auto gpu = at::TensorOptions().device(at::kCUDA);
  std::vector<at::Tensor> starts;
  for (int i = 0; i < 600; ++i) starts.push_back(at::randn({1 + (i * 37) % 300}, gen));
  starts.push_back(at::randn({1000, 333}, gen));     // 333000: many chunks, a tail
  const auto unaligned = [&](const at::Tensor& t) {  // 4 bytes past a 16-byte boundary
    return at::empty({t.numel() + 1}, gpu).narrow(0, 1, t.numel()).copy_(t);
  };
  starts.push_back(at::randn({4099}, gen));
  std::vector<AdamWParam> ours, theirs;
  for (std::size_t i = 0; i < starts.size(); ++i) {
    const bool last = i + 1 == starts.size();
    const bool decay = i % 3 != 0;
    ours.push_back(
        {"p" + std::to_string(i), last ? unaligned(starts[i]) : starts[i].to(gpu), decay});
    theirs.push_back({"p" + std::to_string(i), starts[i].to(gpu), decay});
  }
  ASSERT_NE(reinterpret_cast<std::uintptr_t>(ours.back().tensor.data_ptr()) % 16, 0u);
  AdamW a(ours, c), b(theirs, c);
  const auto no = at::scalar_tensor(0.0, gpu.dtype(at::kFloat));
  const auto yes = at::scalar_tensor(1.0, gpu.dtype(at::kFloat));
  for (int t = 0; t < 4; ++t) {
    std::vector<at::Tensor> grads;
    for (const auto& s : starts) grads.push_back(at::randn(s.sizes(), gen).to(gpu));
    for (std::size_t i = 0; i < starts.size(); ++i) {
      const bool last = i + 1 == starts.size();
      ours[i].tensor.mutable_grad() = last ? unaligned(grads[i]) : grads[i].clone();
      theirs[i].tensor.mutable_grad() = grads[i].clone();
    }
    const double lr = 1e-3 * (t + 1) / 3.0;
    const auto divisor = at::scalar_tensor(1.0 + t, gpu.dtype(at::kFloat));
    const auto skip = t == 3 ? yes : no;
    {
      const AdamWPath wanhost("wanhost");
      ASSERT_TRUE(wanhost::kernel_options().wanhost_adamw) << "the path chosen is not wanhost's";
      if (t == 2)
        a.step(at::scalar_tensor(lr, gpu.dtype(at::kFloat)), divisor, skip);
      else
        a.step(lr, divisor, skip);
    }
    b.step(lr, divisor, skip);
    double worst = 0;
    for (std::size_t i = 0; i < starts.size(); ++i) {
      worst = std::max(worst, rel(ours[i].tensor, theirs[i].tensor));
      ASSERT_TRUE(ours[i].tensor.grad().equal(grads[i]))
          << "gradient " << i << " changed, step " << t;
    }
    EXPECT_LT(worst, 1e-6) << "step " << t;
    for (const auto& [key, value] : a.state())
      EXPECT_LT(rel(value, b.state().at(key)), 1e-6) << key << ", step " << t;
  }
  EXPECT_EQ(a.steps(), 3);
}

// ParallelismBase clips inside the next optimizer step: the same update as clipping the
// gradients first (clip_gradients) and stepping; a clip whose step was skipped (non-finite
// step) is replaced by the next one, and a step with no clip before it is not clipped.
class OptimizerHalf : public wanhost::ParallelismBase {
 public:
  explicit OptimizerHalf(std::vector<AdamWParam> params)
      : ParallelismBase("test", GradReset::Drop) {
    set_optimized(std::move(params));
  }
  using ParallelismBase::clip_by_global_norm;
  wanhost::ParallelLayout layout(int) const override { return {}; }
  void setup(wanhost::ParallelContext&) override {}
  void attach(wanhost::Model&) override {}
  wanhost::StepLoss forward_backward(wanhost::Model&, const std::vector<wanhost::NoisedBatch>&,
                                     const wanhost::LossFn&) override {
    return {};
  }
  at::Tensor reduce_and_clip_gradients(double max_norm) override {
    return clip_by_global_norm(max_norm);
  }
  std::map<std::string, at::Tensor> full_weights(wanhost::Model&) override { return {}; }
  void save_state(wanhost::Model&, const std::string&) override {}
  void load_state(wanhost::Model&, const std::string&) override {}
};

TEST(ParallelismBase, ClipsInsideTheNextOptimizerStep) {
  OptimizerConfig c;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(13);
  const auto start = at::randn({8, 4}, gen);
  std::vector<at::Tensor> grads;
  for (int i = 0; i < 4; ++i) grads.push_back(at::randn({8, 4}, gen) * (i == 1 ? 10 : 0.01));
  // Steps 0 (below the limit), 1 (clipped), 2 (clipped, its step skipped; then step 3's gradient
  // is clipped by its own norm), 3 with no clip at all before the step.
  std::vector<AdamWParam> p = {{"w", start.clone(), true}};
  OptimizerHalf half(p);
  half.configure_optimizer(c);
  std::vector<AdamWParam> q = {{"w", start.clone(), true}};
  AdamW manual(q, c);
  auto set = [](std::vector<AdamWParam>& ps, const at::Tensor& g) {
    ps[0].tensor.mutable_grad() = g.clone();
  };
  for (int i : {0, 1}) {
    set(p, grads[i]);
    const at::Tensor norm = half.reduce_and_clip_gradients(1.0);
    EXPECT_NEAR(norm.item<double>(), grads[i].norm().item<double>(), 1e-5);
    half.optimizer_step(1e-2);
    set(q, grads[i]);
    wanhost::clip_gradients({q[0].tensor}, 1.0, norm);
    manual.step(1e-2);
    EXPECT_LT(rel(p[0].tensor, q[0].tensor), 1e-6) << "step " << i;
  }
  set(p, grads[1] * 7);  // a step the host skips: clipped, never stepped
  half.reduce_and_clip_gradients(1.0);
  set(p, grads[2] * 100);
  const at::Tensor norm = half.reduce_and_clip_gradients(1.0);
  half.optimizer_step(1e-2);
  set(q, grads[2] * 100);
  wanhost::clip_gradients({q[0].tensor}, 1.0, norm);
  manual.step(1e-2);
  EXPECT_LT(rel(p[0].tensor, q[0].tensor), 1e-6) << "the step after a skipped one";
  set(p, grads[1] * 3);  // no clip before this step: the update of the raw gradient
  half.optimizer_step(1e-2);
  set(q, grads[1] * 3);
  manual.step(1e-2);
  EXPECT_LT(rel(p[0].tensor, q[0].tensor), 1e-6) << "a step with no clip before it";
}

// optimizer_step_unless (SDK 2.4) on the kit's base: a skipped step takes its pending clip with
// it, and the next step is the one of a run that never had the skipped step.
TEST(ParallelismBase, SkipsOnTheDeviceWithItsClip) {
  OptimizerConfig c;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(19);
  const auto start = at::randn({8, 4}, gen), g0 = at::randn({8, 4}, gen) * 10,
             g1 = at::randn({8, 4}, gen) * 10;
  std::vector<AdamWParam> p = {{"w", start.clone(), true}}, q = {{"w", start.clone(), true}};
  OptimizerHalf skipping(p), straight(q);
  skipping.configure_optimizer(c);
  straight.configure_optimizer(c);
  p[0].tensor.mutable_grad() = g0.clone();
  skipping.reduce_and_clip_gradients(1.0);
  skipping.optimizer_step_unless(1e-2, at::scalar_tensor(true, at::kBool));
  EXPECT_TRUE(p[0].tensor.equal(start));
  for (auto* run : {&skipping, &straight}) {
    auto& params = run == &skipping ? p : q;
    params[0].tensor.mutable_grad() = g1.clone();
    run->reduce_and_clip_gradients(1.0);
    run->optimizer_step_unless(1e-2, at::scalar_tensor(false, at::kBool));
  }
  EXPECT_TRUE(p[0].tensor.equal(q[0].tensor));
}

// optimizer_step_unless_device_lr (SDK 2.6) on the kit's base: the update of
// optimizer_step_unless with the same learning rate, its pending clip included, and its skip.
TEST(ParallelismBase, DeviceLearningRateStepIsTheHostOnes) {
  OptimizerConfig c;
  c.weight_decay = 0.1;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(29);
  const auto start = at::randn({8, 4}, gen);
  std::vector<AdamWParam> p = {{"w", start.clone(), true}}, q = {{"w", start.clone(), true}};
  OptimizerHalf host(p), dev(q);
  host.configure_optimizer(c);
  dev.configure_optimizer(c);
  const double lr = 3.0 / 1024;  // float32 holds it exactly
  for (int t = 0; t < 3; ++t) {
    const auto g = at::randn({8, 4}, gen) * (t == 1 ? 10 : 1);  // step 1 clipped
    const auto skip = at::scalar_tensor(t == 2, at::kBool);     // step 2 skipped
    p[0].tensor.mutable_grad() = g.clone();
    q[0].tensor.mutable_grad() = g.clone();
    host.reduce_and_clip_gradients(1.0);
    dev.reduce_and_clip_gradients(1.0);
    host.optimizer_step_unless(lr * (t + 1), skip);
    dev.optimizer_step_unless_device_lr(at::scalar_tensor(lr * (t + 1), at::kFloat), skip);
    EXPECT_TRUE(p[0].tensor.equal(q[0].tensor)) << "step " << t;
  }
  EXPECT_FALSE(q[0].tensor.equal(start));
}

// The SDK's own optimizer_step_unless, for plugins without the kit's base: it reads `skip` and
// calls optimizer_step unless it is nonzero.
TEST(Parallelism, DefaultStepUnlessReadsSkipOnTheHost) {
  struct Counting final : OptimizerHalf {
    using OptimizerHalf::OptimizerHalf;
    int steps = 0;
    void optimizer_step(double) override { ++steps; }
    void optimizer_step_unless(double lr, const at::Tensor& skip) override {
      Parallelism::optimizer_step_unless(lr, skip);  // the SDK default under test
    }
  };
  Counting counting(std::vector<AdamWParam>{});
  counting.optimizer_step_unless(1e-2, at::scalar_tensor(1.0, at::kFloat));
  EXPECT_EQ(counting.steps, 0);
  counting.optimizer_step_unless(1e-2, at::scalar_tensor(0.0, at::kFloat));
  counting.optimizer_step_unless(1e-2, at::Tensor());
  EXPECT_EQ(counting.steps, 2);
}

// The SDK's own optimizer_step_unless_device_lr (2.6), for plugins without the kit's base: it
// reads the learning rate on the host and calls optimizer_step_unless with it.
TEST(Parallelism, DefaultDeviceLearningRateStepReadsTheRateOnTheHost) {
  struct Recording final : OptimizerHalf {
    using OptimizerHalf::OptimizerHalf;
    std::vector<std::pair<double, bool>> calls;  // (lr, skip given)
    void optimizer_step_unless(double lr, const at::Tensor& skip) override {
      calls.emplace_back(lr, skip.defined() && skip.item<double>() != 0);
    }
    void optimizer_step_unless_device_lr(const at::Tensor& lr, const at::Tensor& skip) override {
      Parallelism::optimizer_step_unless_device_lr(lr, skip);  // the SDK default under test
    }
  };
  Recording recording(std::vector<AdamWParam>{});
  recording.optimizer_step_unless_device_lr(at::scalar_tensor(0.25, at::kFloat),
                                            at::scalar_tensor(true, at::kBool));
  recording.optimizer_step_unless_device_lr(at::scalar_tensor(0.5, at::kFloat), at::Tensor());
  EXPECT_EQ(recording.calls, (std::vector<std::pair<double, bool>>{{0.25, true}, {0.5, false}}));
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
