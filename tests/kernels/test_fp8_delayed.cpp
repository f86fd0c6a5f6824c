// Delayed FP8 scaling (run.fp8 = "delayed", wanhost/kit/fp8.hpp): each operand of a layer (its
// input, its weight, its output's gradient) is scaled by the largest max|x| of its last
// fp8_amax_history() steps, values beyond it saturating; its first use, and its first after
// fp8_forget_history(), by its own max|x|; non-finite values are never recorded. One layer's
// forward and backward over a sequence of steps whose operands have chosen maxima, against
// float64 products of operands quantised with the scales the recipe must have used (kept here
// from the maxima the test chose). On a GPU the cast kernels read and record the histories
// themselves (kernels/fp8_kernels.cu): the same sequence checks them.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "gpu_test_util.hpp"
#include "wanhost/kit/fp8.hpp"

namespace {

using wanhost::testing::rel_err;

struct DelayedOn {
  explicit DelayedOn(int history) {
    wanhost::set_fp8_recipe(wanhost::Fp8Recipe::delayed);
    wanhost::set_fp8_amax_history(history);
    wanhost::fp8_forget_history();
  }
  ~DelayedOn() {
    wanhost::set_fp8_recipe(wanhost::Fp8Recipe::off);
    wanhost::set_fp8_amax_history(16);
  }
};

// x quantised with the scale made from `amax` (the kit's arithmetic: fp32 max|x|, clamped, divided
// by the format's largest value), saturated, and dequantised in float64 on the CPU.
at::Tensor dequantized_with(const at::Tensor& x, float amax, bool gradient) {
  const double top = gradient ? 57344.0 : 448.0;
  const at::Tensor scale = at::scalar_tensor(amax, at::kFloat).clamp_min(1e-12) / top;
  const at::Tensor q = (x.cpu().to(at::kFloat) * scale.reciprocal())
                           .clamp(-top, top)
                           .to(gradient ? at::kFloat8_e5m2 : at::kFloat8_e4m3fn);
  return q.to(at::kDouble) * scale.to(at::kDouble);
}

// max|x| over the finite values, as the history records it.
float finite_amax(const at::Tensor& x) {
  const at::Tensor a = x.cpu().to(at::kFloat).abs();
  return a.masked_fill(a.isfinite().logical_not(), 0.0).max().item<float>();
}

// What the recipe must do with one operand: its own max at its first use, else the largest of
// its last `steps` recorded maxima.
struct History {
  int steps;
  std::vector<float> done;
  bool primed = false;
  float scale_amax(float own) const {
    if (!primed) return own;
    float m = 0.f;
    for (std::size_t i = done.size() - std::min<std::size_t>(done.size(), steps); i < done.size();
         ++i)
      m = std::max(m, done[i]);
    return m;
  }
  void finish(float own) {
    done.push_back(own);
    primed = true;
  }
  void forget() {
    done.clear();
    primed = false;
  }
};

// A step of the sequence: the input's and the output gradient's max|x| (a negative one: that
// maximum with one element set to +infinity), and whether the histories are forgotten first.
struct Step {
  double x_amax, dy_amax;
  bool forget = false;
};

at::Tensor with_amax(const at::Tensor& unit, double amax, const c10::Device& device,
                     at::ScalarType dtype) {
  at::Tensor t = (unit * std::abs(amax)).to(device, dtype);
  if (amax < 0) t.view({-1})[5] = std::numeric_limits<float>::infinity();
  return t;
}

void expect_delayed_steps(const c10::Device& device, at::ScalarType dtype, double tol) {
  constexpr int kHistory = 2;
  DelayedOn on(kHistory);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(29);
  const auto unit = [&](std::vector<std::int64_t> shape) {
    const at::Tensor t = at::randn(shape, gen);
    return t / t.abs().max();
  };
  const at::Tensor x_unit = unit({3, 37, 64}), dy_unit = unit({3, 37, 48});
  const at::Tensor w = (at::randn({48, 64}, gen) * 0.1).to(device);
  // The maxima: a step that saturates (3 after 1), ratios no power of two (other codes, not
  // just another exponent), a history that forgets (1 after 3 only after two steps), a new
  // stage, an infinity that is not recorded.
  const std::vector<Step> steps = {{1, 1e-3}, {3, 2.5e-3}, {1, 1e-3},
                                   {1, 1e-3}, {1, 0.6e-3}, {0.7, 1e-3, true},
                                   {1, 1e-3}, {-1, 1e-3},  {1, 1e-3}};
  History hx{kHistory, {}}, hw{kHistory, {}}, hg{kHistory, {}};
  const auto before = wanhost::fp8_delayed_quantizations();
  wanhost::Fp8WeightCache cache;
  for (std::size_t k = 0; k < steps.size(); ++k) {
    const Step& s = steps[k];
    if (s.forget) {
      wanhost::fp8_forget_history();
      hx.forget(), hw.forget(), hg.forget();
    }
    wanhost::fp8_step_begins(device);
    wanhost::fp8_weights_changed();  // as the trainer: the weight is quantised again each step
    const at::Tensor x = with_amax(x_unit, s.x_amax, device, dtype).requires_grad_(true);
    const at::Tensor dy = with_amax(dy_unit, s.dy_amax, device, dtype);
    const at::Tensor y = wanhost::fp8_linear(x, w, at::Tensor(), cache);
    y.backward(dy);
    const float own_x = finite_amax(x.detach()), own_w = finite_amax(w), own_g = finite_amax(dy);
    const at::Tensor xq =
        dequantized_with(x.detach().reshape({-1, 64}), hx.scale_amax(own_x), false);
    const at::Tensor wq = dequantized_with(w, hw.scale_amax(own_w), false);
    const at::Tensor gq = dequantized_with(dy.reshape({-1, 48}), hg.scale_amax(own_g), true);
    const std::string what = "step " + std::to_string(k + 1);
    if (s.x_amax > 0) {
      EXPECT_LT(rel_err(y.reshape({-1, 48}), xq.mm(wq.t())), tol) << what << ": y";
      EXPECT_LT(rel_err(x.grad().reshape({-1, 64}), gq.mm(wq)), tol) << what << ": dx";
    } else {
      EXPECT_FALSE(at::isfinite(y).all().item<bool>()) << what << ": an infinite input";
    }
    hx.finish(own_x), hw.finish(own_w), hg.finish(own_g);
  }
  // Every step but the first of each stage scaled its three operands from their histories.
  EXPECT_EQ(wanhost::fp8_delayed_quantizations() - before,
            3 * static_cast<std::int64_t>(steps.size() - 2));
}

TEST(Fp8Delayed, ScalesByTheLastStepsMaximaOnTheCpu) {
  expect_delayed_steps(c10::Device(c10::kCPU), at::kFloat, 1e-6);
}

TEST(Fp8Delayed, ScalesByTheLastStepsMaximaOnAGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  // bf16 outputs (2^-9) and the forward product's fast accumulation.
  expect_delayed_steps(c10::Device(c10::kCUDA, 0), at::kBFloat16, 6e-3);
}

// The same layer under tensorwise scaling never reads a history: a check that the sequence
// above tells the recipes apart (step 2 saturates only under delayed scaling).
TEST(Fp8Delayed, TheSequenceTellsTheRecipesApart) {
  DelayedOn on(2);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(31);
  const at::Tensor x1 = at::randn({16, 32}, gen), w = at::randn({16, 32}, gen) * 0.1;
  const at::Tensor x2 = x1 * 3;
  at::NoGradGuard no_grad;
  wanhost::Fp8WeightCache cache;
  wanhost::fp8_step_begins(c10::Device(c10::kCPU));
  wanhost::fp8_linear(x1, w, at::Tensor(), cache);
  wanhost::fp8_step_begins(c10::Device(c10::kCPU));
  const at::Tensor delayed = wanhost::fp8_linear(x2, w, at::Tensor(), cache);
  wanhost::set_fp8_recipe(wanhost::Fp8Recipe::tensorwise);
  const at::Tensor current = wanhost::fp8_linear(x2.clone(), w, at::Tensor(), cache);
  EXPECT_GT(rel_err(delayed, current.to(at::kDouble)), 0.1) << "x2's values beyond 1 saturate";
}

TEST(Fp8Delayed, RecipeAndHistoryBounds) {
  EXPECT_EQ(wanhost::parse_fp8_recipe("delayed"), wanhost::Fp8Recipe::delayed);
  EXPECT_STREQ(wanhost::fp8_recipe_name(wanhost::Fp8Recipe::delayed), "delayed");
  EXPECT_EQ(wanhost::fp8_amax_history(), 16) << "the default";
  EXPECT_THROW(wanhost::set_fp8_amax_history(0), std::invalid_argument);
  EXPECT_THROW(wanhost::set_fp8_amax_history(wanhost::kMaxFp8AmaxHistory + 1),
               std::invalid_argument);
  wanhost::set_fp8_amax_history(wanhost::kMaxFp8AmaxHistory);
  EXPECT_EQ(wanhost::fp8_amax_history(), wanhost::kMaxFp8AmaxHistory);
  wanhost::set_fp8_amax_history(16);
}

}  // namespace
