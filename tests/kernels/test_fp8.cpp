// FP8 linear layers (wanhost/kit/fp8.hpp): the quantisation, the three products of one layer
// against float64 products of the dequantised operands written out here (which operand, which
// scale, which transpose: the CPU emulation and, on a GPU, at::_scaled_mm), the distance from the
// unquantised layer, and the weight copy made once per optimizer step.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "gpu_test_util.hpp"
#include "wanhost/kit/fp8.hpp"
#include "wanhost/kit/kernel_options.hpp"
#include "wanhost/kit/layers.hpp"

namespace {

using wanhost::testing::rel_err;

// Sets run.fp8 for one test.
struct Fp8On {
  Fp8On() { wanhost::set_fp8_recipe(wanhost::Fp8Recipe::tensorwise); }
  ~Fp8On() { wanhost::set_fp8_recipe(wanhost::Fp8Recipe::off); }
};

at::Tensor dequantized(const wanhost::Fp8Quantized& q) {
  return q.q.to(at::kDouble).cpu() * q.scale.to(at::kDouble).cpu();
}

TEST(Fp8, QuantizationUsesTheFormatsRange) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  const at::Tensor x = at::randn({64, 48}, gen) * 3;
  for (const bool gradient : {false, true}) {
    const auto q = wanhost::fp8_quantize(x, gradient);
    EXPECT_EQ(q.q.scalar_type(), gradient ? at::kFloat8_e5m2 : at::kFloat8_e4m3fn);
    const double top = gradient ? 57344.0 : 448.0;
    // The largest |x| lands on the largest value of the format.
    EXPECT_DOUBLE_EQ(q.q.to(at::kDouble).abs().max().item<double>(), top);
    const double scale = x.abs().max().item<double>() / top;  // fp32 arithmetic in the kit
    EXPECT_NEAR(q.scale.item<double>(), scale, 1e-6 * scale);
    // Round to nearest with 3 (E4M3) or 2 (E5M2) mantissa bits: each element within half a unit
    // in the last place, 2^-4 or 2^-3 of its magnitude (subnormals: absolute half-unit).
    const at::Tensor err = (dequantized(q) - x.to(at::kDouble)).abs();
    const double rel = gradient ? 0.125 : 0.0625;
    const double sub =
        (gradient ? std::ldexp(1.0, -17) : std::ldexp(1.0, -10)) * q.scale.item<double>();
    EXPECT_TRUE((err <= x.to(at::kDouble).abs() * rel + sub).all().item<bool>());
  }
  // An all-zero operand: a finite scale and zeros.
  const auto z = wanhost::fp8_quantize(at::zeros({16, 16}), false);
  EXPECT_TRUE(std::isfinite(z.scale.item<double>()));
  EXPECT_EQ(z.q.to(at::kFloat).abs().sum().item<double>(), 0.0);
}

// y = x W^T + b, dx = dy W, dW = dy^T x with each operand quantised as the recipe says (x, W:
// E4M3; dy: E5M2), in float64 on the dequantised operands.
struct Expected {
  at::Tensor y, dx, dw, db;
};
Expected expected(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                  const at::Tensor& dy) {
  const auto rows = x.reshape({-1, x.size(-1)});
  const auto dy_rows = dy.reshape({-1, dy.size(-1)});
  const at::Tensor xq = dequantized(wanhost::fp8_quantize(rows, false));
  const at::Tensor wq = dequantized(wanhost::fp8_quantize(w.detach(), false));
  const at::Tensor gq = dequantized(wanhost::fp8_quantize(dy_rows, true));
  Expected e;
  e.y = (xq.mm(wq.t()) + b.to(at::kDouble).cpu()).view(dy.sizes());
  e.dx = gq.mm(wq).view(x.sizes());
  e.dw = gq.t().mm(xq);
  e.db = dy_rows.to(at::kDouble).sum(0).cpu();
  return e;
}

// One layer's forward and backward on `device` in `dtype`, against the products above. 37 x 3
// token rows by default: not a multiple of 16, so the weight-gradient product runs on padded
// operands.
struct LayerShape {
  std::int64_t batch = 3, tokens = 37, in = 64, out = 48;
};
void expect_products(const c10::Device& device, at::ScalarType dtype, double tol,
                     const LayerShape& s = {}) {
  Fp8On on;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
  const at::Tensor x0 = at::randn({s.batch, s.tokens, s.in}, gen);
  const at::Tensor dy0 = at::randn({s.batch, s.tokens, s.out}, gen) * 1e-3;
  const at::Tensor w = (at::randn({s.out, s.in}, gen) * 0.1).to(device).requires_grad_(true);
  const at::Tensor b = (at::randn({s.out}, gen) * 0.1).to(device, dtype).requires_grad_(true);
  const at::Tensor x = x0.to(device, dtype).requires_grad_(true);
  const at::Tensor dy = dy0.to(device, dtype);
  ASSERT_TRUE(wanhost::fp8_linear_applies(x, w));
  wanhost::Fp8WeightCache cache;
  const at::Tensor y = wanhost::fp8_linear(x, w, b, cache);
  EXPECT_EQ(y.scalar_type(), dtype);
  y.backward(dy);
  const Expected e = expected(x.detach(), w, b.detach(), dy);
  EXPECT_LT(rel_err(y, e.y), tol) << "y";
  EXPECT_LT(rel_err(x.grad(), e.dx), tol) << "dx";
  EXPECT_EQ(w.grad().scalar_type(), at::kFloat) << "the master weight's gradient in its dtype";
  EXPECT_LT(rel_err(w.grad(), e.dw), tol) << "dW";
  EXPECT_LT(rel_err(b.grad(), e.db), tol) << "db";
}

TEST(Fp8, ProductsUseTheRightOperandsOnTheCpu) {
  expect_products(at::kCPU, at::kFloat, 1e-6);
}

TEST(Fp8Gpu, ScaledProductsMatchTheEmulation) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  // bf16 output rounding (2^-9) and fast accumulation in the forward product.
  expect_products(c10::Device(c10::kCUDA, 0), at::kBFloat16, 6e-3);
  // Many 64 x 64 tiles of the cast kernel's 16-byte variant: 2002 token rows (padded to 2016),
  // 256 and 192 columns.
  expect_products(c10::Device(c10::kCUDA, 0), at::kBFloat16, 6e-3, {2, 1001, 256, 192});
}

// run.fp8_fast_accumulation reaches the gradient products: with each choice a layer's input and
// weight gradients are bit for bit at::_scaled_mm's of the same quantised operands with the
// accumulation the choice names, and the weight gradient (4096 tokens summed) differs between
// fast and precise accumulation (the flag changes something).
TEST(Fp8Gpu, FastAccumulationReachesTheGradientProductsOnAGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  using wanhost::Fp8FastAccumulation;
  Fp8On on;
  const c10::Device gpu(c10::kCUDA, 0);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(47);
  const std::int64_t m = 4096, in = 256, out = 192;
  const at::Tensor x0 = at::randn({m, in}, gen).to(gpu, at::kBFloat16);
  const at::Tensor dy = (at::randn({m, out}, gen) * 1e-2).to(gpu, at::kBFloat16);
  const at::Tensor w = (at::randn({out, in}, gen) * 0.05).to(gpu);
  const auto xq = wanhost::fp8_quantize(x0, false),
             xtq = wanhost::fp8_quantize(x0.t().contiguous(), false);
  const auto dyq = wanhost::fp8_quantize(dy, true),
             dytq = wanhost::fp8_quantize(dy.t().contiguous(), true);
  const auto wtq = wanhost::fp8_quantize(w.t().contiguous(), false);
  std::map<Fp8FastAccumulation, at::Tensor> dws;
  for (const auto which : {Fp8FastAccumulation::forward, Fp8FastAccumulation::input_gradients,
                           Fp8FastAccumulation::all}) {
    wanhost::set_fp8_fast_accumulation(which);
    const std::string what = wanhost::fp8_fast_accumulation_name(which);
    const at::Tensor weight = w.clone().requires_grad_(true);
    const at::Tensor x = x0.clone().requires_grad_(true);
    wanhost::Fp8WeightCache cache;
    wanhost::fp8_linear(x, weight, at::Tensor(), cache).backward(dy);
    const bool fast_dx = which != Fp8FastAccumulation::forward,
               fast_dw = which == Fp8FastAccumulation::all;
    const at::Tensor want_dx = at::_scaled_mm(dyq.q, wtq.q.t(), dyq.scale, wtq.scale, std::nullopt,
                                              std::nullopt, at::kBFloat16, fast_dx);
    const at::Tensor want_dw = at::_scaled_mm(dytq.q, xtq.q.t(), dytq.scale, xtq.scale,
                                              std::nullopt, std::nullopt, at::kFloat, fast_dw);
    EXPECT_TRUE(at::equal(x.grad(), want_dx)) << what << ": input gradient";
    EXPECT_TRUE(at::equal(weight.grad(), want_dw)) << what << ": weight gradient";
    dws[which] = weight.grad();
  }
  wanhost::set_fp8_fast_accumulation(Fp8FastAccumulation::forward);
  EXPECT_FALSE(at::equal(dws[Fp8FastAccumulation::all], dws[Fp8FastAccumulation::forward]))
      << "fast and precise accumulation of 4096 terms gave the same bits";
}

// The one-pass cast kernels (kernels/fp8_kernels.cu) against ATen's arithmetic on the same GPU,
// bit for bit: fp32 and bf16 inputs, both formats, matrices that are no multiple of the 64 x 64
// tiles; 1542 columns and an operand off 16-byte alignment take the general kernel, 1536 aligned
// columns the 16-byte one; the scale the kernels make (max|x| by their own pass: one block, many
// blocks with unrolled 16-byte loads, an operand read element by element) against ATen's
// formula. (The transposed copies and column sums are checked by the products above.)
TEST(Fp8Gpu, CastKernelMatchesAtenBitForBit) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  const c10::Device gpu(c10::kCUDA, 0);
  for (const auto& shape : std::vector<std::vector<std::int64_t>>{{203, 1542}, {2048, 1536}}) {
    const at::Tensor x0 = at::randn(shape, gen) * 7;
    for (const auto dtype : {at::kFloat, at::kBFloat16}) {
      for (const bool unaligned : {false, true}) {
        for (const bool gradient : {false, true}) {
          at::Tensor x = x0.to(gpu, dtype);
          if (unaligned)  // the same values two elements past a 16-byte boundary
            x = at::cat({at::zeros({2}, x.options()), x.flatten()})
                    .narrow(0, 2, x.numel())
                    .view(x.sizes());
          const std::string what = "shape " + std::to_string(shape[0]) + "x" +
                                   std::to_string(shape[1]) + ", " + c10::toString(dtype) +
                                   (unaligned ? ", unaligned" : "") +
                                   (gradient ? ", gradient" : "");
          const auto q = wanhost::fp8_quantize(x, gradient);
          const at::Tensor want = (x.to(at::kFloat) * q.scale.reciprocal()).to(q.q.scalar_type());
          EXPECT_TRUE(at::equal(q.q.view(at::kByte), want.view(at::kByte))) << what;
          // The kernels make the scale themselves, with ATen's arithmetic.
          const double top = gradient ? 57344.0 : 448.0;
          const at::Tensor scale = x.abs().amax().to(at::kFloat).clamp_min(1e-12) / top;
          EXPECT_TRUE(at::equal(q.scale, scale))
              << what << ": " << q.scale.item<float>() << " vs " << scale.item<float>();
        }
      }
    }
  }
  // An all-zero operand (the clamp) and one with a NaN (a NaN scale, as ATen's clamp keeps it).
  const auto zero = wanhost::fp8_quantize(at::zeros({64, 32}, gpu), false);
  EXPECT_EQ(zero.scale.item<float>(), static_cast<float>(1e-12) * static_cast<float>(1.0 / 448.0));
  EXPECT_EQ(at::count_nonzero(zero.q.view(at::kByte)).item<std::int64_t>(), 0);
  at::Tensor with_nan = at::ones({64, 32}, gpu);
  with_nan[3][5] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(std::isnan(wanhost::fp8_quantize(with_nan, true).scale.item<float>()));
}

// FP8 is an approximation of the layer, not another layer: within a few percent of the fp32
// product (E4M3 rounds each operand by up to 6 %, E5M2 by up to 12 %; the errors of a sum's
// terms are independent, so the sum's relative error stays near one term's).
TEST(Fp8, CloseToTheUnquantisedLayer) {
  Fp8On on;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  const at::Tensor x = at::randn({256, 128}, gen).requires_grad_(true);
  const at::Tensor w = (at::randn({96, 128}, gen) * 0.05).requires_grad_(true);
  const at::Tensor dy = at::randn({256, 96}, gen);
  wanhost::Fp8WeightCache cache;
  wanhost::fp8_linear(x, w, at::Tensor(), cache).backward(dy);
  const at::Tensor dx = x.grad().clone(), dw = w.grad().clone();
  const at::Tensor y = wanhost::fp8_linear(x, w, at::Tensor(), cache).detach();
  const at::Tensor xr = x.detach().to(at::kDouble), wr = w.detach().to(at::kDouble);
  const double ey = rel_err(y, xr.mm(wr.t())), edx = rel_err(dx, dy.to(at::kDouble).mm(wr)),
               edw = rel_err(dw, dy.to(at::kDouble).t().mm(xr));
  std::printf("[ figures ] FP8 tensorwise vs fp32: y %.4f, dx %.4f, dW %.4f\n", ey, edx, edw);
  // Seen 0.037, 0.058, 0.059 (E5M2 gradients keep a bit less than E4M3).
  EXPECT_LT(ey, 0.05);
  EXPECT_LT(edx, 0.08);
  EXPECT_LT(edw, 0.08);
  EXPECT_GT(ey, 1e-4) << "no quantisation happened";
}

TEST(Fp8, WeightIsQuantisedOncePerStep) {
  Fp8On on;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(13);
  const at::Tensor w = at::randn({32, 16}, gen);
  wanhost::Fp8WeightCache cache;
  const void* first = cache.of(w).q.data_ptr();
  EXPECT_EQ(cache.of(w).q.data_ptr(), first) << "the same step reuses its copy";
  w.mul_(2);  // an in-place update (an optimizer step) bumps the version
  const auto& updated = cache.of(w);
  EXPECT_NEAR(updated.scale.item<double>(), w.abs().max().item<double>() / 448, 1e-9);
  const void* second = updated.q.data_ptr();
  wanhost::fp8_weights_changed();  // a step began: even an unchanged version is made again
  EXPECT_NE(cache.of(w).q.data_ptr(), second);
  // The transposed copy is the transpose.
  const auto& c = cache.of(w);
  EXPECT_TRUE(at::equal(c.qt.view(at::kByte), c.q.view(at::kByte).t().contiguous()));
}

// Layers reading the same input share its quantisation, never past a change of the input: an
// in-place update (a new version) is quantised again.
TEST(Fp8, InputsAreQuantisedAgainWhenTheyChange) {
  Fp8On on;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(19);
  const at::Tensor x = at::randn({8, 32}, gen), w = at::randn({16, 32}, gen);
  wanhost::Fp8WeightCache cache;
  at::NoGradGuard g;
  const at::Tensor y1 = wanhost::fp8_linear(x, w, at::Tensor(), cache);
  EXPECT_TRUE(at::equal(wanhost::fp8_linear(x, w, at::Tensor(), cache), y1));
  x.mul_(2);  // powers of two scale exactly: the same codes, twice the scale
  EXPECT_TRUE(at::allclose(wanhost::fp8_linear(x, w, at::Tensor(), cache), 2 * y1, 1e-6, 0))
      << "a changed input reused its old quantisation";
}

// An input that recurs after other inputs came between (every block's cross-attention reads the
// same text context) is quantised the second time it comes and then taken as it is, the same
// values, until it changes.
TEST(Fp8, ARecurringInputIsQuantisedTwiceNotEveryTime) {
  Fp8On on;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(23);
  const at::Tensor context = at::randn({8, 32}, gen), w = at::randn({16, 32}, gen);
  const at::Tensor w_other = at::randn({16, 32}, gen);
  wanhost::Fp8WeightCache cache, other_cache;
  at::NoGradGuard g;
  const auto before = wanhost::fp8_input_quantizations();
  const at::Tensor first = wanhost::fp8_linear(context, w, at::Tensor(), cache);
  constexpr int kBlocks = 5;
  for (int block = 0; block < kBlocks; ++block) {
    const at::Tensor hidden = at::randn({8, 32}, gen);  // a new input of every block
    wanhost::fp8_linear(hidden, w_other, at::Tensor(), other_cache);
    EXPECT_TRUE(at::equal(wanhost::fp8_linear(context, w, at::Tensor(), cache), first))
        << "block " << block;
  }
  // The context at the start and in the first block, and each block's own input.
  EXPECT_EQ(wanhost::fp8_input_quantizations() - before, 2 + kBlocks);
  context.mul_(2);  // a new version: quantised again (powers of two scale exactly)
  EXPECT_TRUE(
      at::allclose(wanhost::fp8_linear(context, w, at::Tensor(), cache), 2 * first, 1e-6, 0))
      << "a changed input reused its old quantisation";
  EXPECT_EQ(wanhost::fp8_input_quantizations() - before, 3 + kBlocks);
}

// Only the roles of a block's large layers go to FP8; embedders (replicated) never do, and
// nothing does with run.fp8 off.
TEST(Fp8, LayersByRoleAndRecipe) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(17);
  const at::Tensor x = at::randn({4, 32}, gen);
  auto block = wanhost::make_replicated_linear(32, 16, true, wanhost::LinearRole::ColumnParallel);
  auto embed = wanhost::make_replicated_linear(32, 16, true, wanhost::LinearRole::Replicated);
  at::Tensor exact_block, exact_embed;
  {
    at::NoGradGuard g;
    exact_block = block->forward(x);
    exact_embed = embed->forward(x);
  }
  Fp8On on;
  at::NoGradGuard g;
  EXPECT_FALSE(at::equal(block->forward(x), exact_block)) << "a block layer stayed exact";
  EXPECT_TRUE(at::equal(embed->forward(x), exact_embed)) << "an embedder was quantised";
  EXPECT_FALSE(wanhost::fp8_linear_applies(at::randn({4, 24}), at::randn({16, 24})))
      << "24 input features are not a multiple of 16";
}

// run.kernels.fp8_gelu and fp8_input_gradients for one scope.
struct Fp8GeluOption {
  explicit Fp8GeluOption(const char* name, const char* input_gradients = "separate") {
    wanhost::set_kernel_options(
        wanhost::parse_kernel_options("auto", "fused", "dgelu", "per_use", name, input_gradients));
  }
  ~Fp8GeluOption() { wanhost::set_kernel_options(wanhost::KernelOptions{}); }
};

// The FP8 feed-forward operator (run.kernels.fp8_gelu = fused, through the kit's
// gelu_feed_forward) against the two FP8 layers with ATen's GELU between them (separate): the
// output and every gradient bit for bit, fp32 master weights and biases as a training run has
// them, and the operator really taken (one input quantised instead of two: gelu(pre) never
// reaches the layers' input quantisation).
void expect_fused_feed_forward_as_layers(const c10::Device& device, at::ScalarType dtype,
                                         std::int64_t tokens, std::int64_t in, std::int64_t hidden,
                                         std::int64_t out) {
  Fp8On on;
  at::manual_seed(29);
  auto up = wanhost::make_replicated_linear(in, hidden, true, wanhost::LinearRole::ColumnParallel);
  auto down = wanhost::make_replicated_linear(hidden, out, true, wanhost::LinearRole::RowParallel);
  up->to(device);
  down->to(device);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(31);
  const at::Tensor x0 = at::randn({2, tokens, in}, gen);
  const at::Tensor dy = (at::randn({2, tokens, out}, gen) * 1e-2).to(device, dtype);
  struct Result {
    at::Tensor y, dx;
    std::vector<at::Tensor> grads;
    std::int64_t quantized_inputs = 0;
  };
  const auto run = [&](const char* option) {
    Fp8GeluOption scope(option);
    for (auto* layer : {up.get(), down.get()})
      for (auto& p : layer->parameters()) p.mutable_grad() = at::Tensor();
    const at::Tensor x = x0.to(device, dtype).requires_grad_(true);
    const auto before = wanhost::fp8_input_quantizations();
    Result r;
    r.y = wanhost::gelu_feed_forward(*up, *down, x);
    r.y.backward(dy);
    r.quantized_inputs = wanhost::fp8_input_quantizations() - before;
    r.dx = x.grad();
    for (auto* layer : {up.get(), down.get()})
      for (const auto& p : layer->parameters()) r.grads.push_back(p.grad());
    return r;
  };
  const Result separate = run("separate"), fused = run("fused");
  EXPECT_EQ(separate.quantized_inputs, 2) << "x and gelu(pre)";
  EXPECT_EQ(fused.quantized_inputs, 1) << "the fused operator was not taken";
  EXPECT_EQ(fused.y.scalar_type(), dtype);
  const auto same = [](const at::Tensor& a, const at::Tensor& b) {
    return a.defined() && b.defined() && a.sizes() == b.sizes() &&
           a.scalar_type() == b.scalar_type() && at::equal(a, b);
  };
  const auto differing = [](const at::Tensor& a, const at::Tensor& b) {
    return a.sizes() == b.sizes() ? at::ne(a, b).sum().item<std::int64_t>() : -1;
  };
  EXPECT_TRUE(same(fused.y, separate.y)) << differing(fused.y, separate.y) << " outputs differ";
  EXPECT_TRUE(same(fused.dx, separate.dx))
      << differing(fused.dx, separate.dx) << " input gradients differ";
  ASSERT_EQ(fused.grads.size(), 4u);
  const char* names[] = {"up.weight", "up.bias", "down.weight", "down.bias"};
  for (std::size_t i = 0; i < 4; ++i) {
    ASSERT_TRUE(fused.grads[i].defined()) << names[i];
    EXPECT_EQ(fused.grads[i].scalar_type(), at::kFloat) << names[i] << ": a master's dtype";
    EXPECT_TRUE(same(fused.grads[i], separate.grads[i]))
        << names[i] << ": " << differing(fused.grads[i], separate.grads[i]) << " elements differ";
  }
}

TEST(Fp8, FusedFeedForwardGivesTheTwoLayersValuesAndGradients) {
  expect_fused_feed_forward_as_layers(at::kCPU, at::kFloat, 37, 64, 96, 48);
  expect_fused_feed_forward_as_layers(at::kCPU, at::kBFloat16, 37, 64, 96, 48);
}

// On a GPU the cast kernels apply GELU and its gradient as they read (kernels::Fp8Prologue),
// with ATen's fp32 arithmetic spelled alike: the same bits as ATen's GELU kernels' bf16 outputs
// quantised. 2002 token rows: many 64 x 64 tiles of the 16-byte kernel, padded transposed copies.
TEST(Fp8Gpu, FusedFeedForwardGivesTheTwoLayersValuesAndGradientsOnAGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  expect_fused_feed_forward_as_layers(c10::Device(c10::kCUDA, 0), at::kBFloat16, 1001, 256, 512,
                                      192);
}

// Layers that read one input (a block's q, k and v) through the kit's shared_input_forward on
// FP8 products with run.kernels.fp8_input_gradients = summed (fp8_shared_input_linears) against
// the same with separate (each layer's own forward, whose input gradients autograd adds): the
// outputs and every parameter's gradient bit for bit (the same products), the input gradient the
// same sum with fewer roundings (on the CPU's fp32 within 1e-6; bf16 on a GPU one rounding of the
// fp32 sum instead of one a term), the sums counted (inside cuBLASLt's products on a GPU), and an
// output without a gradient left out of them. A layer without a bias among them.
void expect_shared_input_as_layers(const c10::Device& device, at::ScalarType dtype,
                                   std::int64_t tokens, double dx_tol) {
  Fp8On on;
  at::manual_seed(37);
  const std::int64_t in = 64;
  const std::vector<std::int64_t> outs{48, 64, 32};
  std::vector<std::shared_ptr<wanhost::LinearLayer>> layers;
  for (std::size_t i = 0; i < outs.size(); ++i) {
    layers.push_back(wanhost::make_replicated_linear(in, outs[i], /*bias=*/i != 1,
                                                     wanhost::LinearRole::ColumnParallel));
    layers.back()->to(device);
  }
  std::vector<wanhost::LinearLayer*> raw;
  for (auto& l : layers) raw.push_back(l.get());
  auto gen = at::make_generator<at::CPUGeneratorImpl>(43);
  const at::Tensor x0 = at::randn({2, tokens, in}, gen);
  std::vector<at::Tensor> dys;
  for (const auto out : outs)
    dys.push_back((at::randn({2, tokens, out}, gen) * 1e-2).to(device, dtype));
  struct Result {
    std::vector<at::Tensor> ys, grads;
    at::Tensor dx;
    std::int64_t sums = 0, sums_in_products = 0;
  };
  // used[i]: whether output i gets a gradient.
  const auto run = [&](bool shared, const std::vector<bool>& used) {
    Fp8GeluOption scope("separate", shared ? "summed" : "separate");
    for (auto* l : raw)
      for (auto& p : l->parameters()) p.mutable_grad() = at::Tensor();
    const at::Tensor x = x0.to(device, dtype).clone().requires_grad_(true);
    const auto sums = wanhost::fp8_summed_input_gradients();
    const auto in_products = wanhost::fp8_summed_input_gradients_in_products();
    Result r;
    r.ys = wanhost::shared_input_forward(raw, x);
    std::vector<at::Tensor> outputs, grads;
    for (std::size_t i = 0; i < r.ys.size(); ++i)
      if (used[i]) outputs.push_back(r.ys[i]), grads.push_back(dys[i]);
    torch::autograd::backward(outputs, grads);
    r.dx = x.grad();
    r.sums = wanhost::fp8_summed_input_gradients() - sums;
    r.sums_in_products = wanhost::fp8_summed_input_gradients_in_products() - in_products;
    for (auto* l : raw)
      for (const auto& p : l->parameters()) r.grads.push_back(p.grad());
    return r;
  };
  const auto same = [](const at::Tensor& a, const at::Tensor& b) {
    return a.defined() == b.defined() &&
           (!a.defined() ||
            (a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() && at::equal(a, b)));
  };
  for (const std::vector<bool>& used :
       {std::vector<bool>{true, true, true}, std::vector<bool>{true, false, true}}) {
    const Result separate = run(false, used), shared = run(true, used);
    const std::int64_t terms = std::count(used.begin(), used.end(), true);
    const std::string what = std::string(c10::toString(dtype)) + " on " + device.str() + ", " +
                             std::to_string(terms) + " outputs used";
    EXPECT_EQ(separate.sums, 0) << what;
    EXPECT_EQ(shared.sums, terms - 1) << what << ": the operator was not taken";
    EXPECT_EQ(shared.sums_in_products, device.is_cuda() ? terms - 1 : 0)
        << what << ": sums inside cuBLASLt's products";
    ASSERT_EQ(shared.ys.size(), outs.size());
    for (std::size_t i = 0; i < outs.size(); ++i)
      EXPECT_TRUE(same(shared.ys[i], separate.ys[i])) << what << ": output " << i;
    ASSERT_EQ(shared.grads.size(), separate.grads.size());
    for (std::size_t i = 0; i < shared.grads.size(); ++i)
      EXPECT_TRUE(same(shared.grads[i], separate.grads[i])) << what << ": parameter gradient " << i;
    ASSERT_TRUE(shared.dx.defined()) << what;
    EXPECT_EQ(shared.dx.scalar_type(), dtype) << what;
    EXPECT_LT(rel_err(shared.dx, separate.dx), dx_tol) << what << ": input gradient";
    // Not the same arithmetic as one term: every used layer contributed.
    at::Tensor first;
    {
      std::vector<bool> only_first(outs.size(), false);
      only_first[0] = true;
      first = run(false, only_first).dx;
    }
    EXPECT_GT(rel_err(shared.dx, first), 0.1) << what << ": the other layers' terms are missing";
  }
}

TEST(Fp8, LayersOfOneInputSumItsGradientInTheirProducts) {
  expect_shared_input_as_layers(at::kCPU, at::kFloat, 37, 1e-6);
}

// bf16 on a GPU: cuBLASLt adds each product into the last one's output (one rounding of the fp32
// sum; autograd's adds round each product and each sum), so the two differ by bf16 roundings.
// 1001 token rows: padded transposed copies.
TEST(Fp8Gpu, LayersOfOneInputSumItsGradientInTheirProductsOnAGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  expect_shared_input_as_layers(c10::Device(c10::kCUDA, 0), at::kBFloat16, 1001, 1e-2);
}

TEST(Fp8, FeedForwardOptionNames) {
  EXPECT_FALSE(wanhost::KernelOptions{}.fp8_fused_gelu) << "separate by default";
  EXPECT_FALSE(wanhost::KernelOptions{}.fp8_summed_input_gradients) << "separate by default";
  EXPECT_TRUE(
      wanhost::parse_kernel_options("auto", "fused", "dgelu", "per_use", "separate", "summed")
          .fp8_summed_input_gradients);
  EXPECT_THROW(
      wanhost::parse_kernel_options("auto", "fused", "dgelu", "per_use", "separate", "added"),
      std::invalid_argument);
  EXPECT_TRUE(
      wanhost::parse_kernel_options("auto", "fused", "dgelu", "per_use", "fused").fp8_fused_gelu);
  EXPECT_THROW(wanhost::parse_kernel_options("auto", "fused", "dgelu", "per_use", "inline"),
               std::invalid_argument);
}

TEST(Fp8, FastAccumulationNames) {
  using wanhost::Fp8FastAccumulation;
  EXPECT_EQ(wanhost::fp8_fast_accumulation(), Fp8FastAccumulation::forward) << "the default";
  for (const auto which : {Fp8FastAccumulation::forward, Fp8FastAccumulation::input_gradients,
                           Fp8FastAccumulation::all})
    EXPECT_EQ(wanhost::parse_fp8_fast_accumulation(wanhost::fp8_fast_accumulation_name(which)),
              which);
  EXPECT_THROW(wanhost::parse_fp8_fast_accumulation("backward"), std::invalid_argument);
}

TEST(Fp8, RecipeNames) {
  EXPECT_EQ(wanhost::parse_fp8_recipe("off"), wanhost::Fp8Recipe::off);
  EXPECT_EQ(wanhost::parse_fp8_recipe("tensorwise"), wanhost::Fp8Recipe::tensorwise);
  EXPECT_THROW(wanhost::parse_fp8_recipe("rowwise"), std::invalid_argument);
}

}  // namespace
