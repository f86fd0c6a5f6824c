// The FP8 cast kernel itself (kernels/fp8_kernels.hpp, fp8_cast_transpose), called with raw
// pointers as the kit calls it, on matrices large enough that a block casts several row tiles
// one after the other (12493 x 1536: 196 row tiles, 9 a block on a 132-multiprocessor GPU where
// 4 blocks fit a multiprocessor, the last 7; 203 x 1536: one a block), every output against ATen's
// arithmetic on the same GPU, bit for bit: the row-major bytes, the transposed copy with its zero
// padding, the column sums per 64-row tile (added in the kernel's order), the scale, and under
// delayed scaling the scale from the history and the max|x| recorded into it. GPU only: built where
// the kernels are.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "fp8_kernels.hpp"
#include "gpu_timing.hpp"

namespace {

namespace k = wanhost::kernels;

constexpr std::int64_t kTileRows = k::kFp8CastTileRows;

std::int64_t round_up(std::int64_t n, std::int64_t m) {
  return (n + m - 1) / m * m;
}

// What fp8_cast_transpose wrote.
struct Cast {
  at::Tensor q, qt, column_partials, scale;
};

// Outputs for a cast of x [rows, cols]: the transposed copy filled with 0x5a, so that a byte the
// kernel does not write (its zero padding included) shows.
Cast outputs_for(const at::Tensor& x) {
  const std::int64_t rows = x.size(0), cols = x.size(1), padded = round_up(rows, 16);
  const auto bytes = x.options().dtype(at::kByte);
  return {at::empty({rows, cols}, bytes), at::full({cols, padded}, 0x5a, bytes),
          at::empty({(padded + kTileRows - 1) / kTileRows, cols}, x.options().dtype(at::kFloat)),
          at::empty({}, x.options().dtype(at::kFloat))};
}

// One call of the kernel on x (bf16 or fp32 [rows, cols] on the GPU) into r, scaled from max|x|
// (the kernels' own partial maxima, into `partials`) or, with a history, from the history
// (delayed scaling).
void cast_into(Cast& r, at::Tensor& partials, const at::Tensor& x, bool gradient,
               k::Fp8Prologue prologue, const at::Tensor& aux, at::Tensor* history = nullptr,
               const at::Tensor* step = nullptr) {
  const std::int64_t rows = x.size(0), cols = x.size(1), padded = r.qt.size(1);
  const auto stream = at::cuda::getCurrentCUDAStream().stream();
  const auto source = x.scalar_type() == at::kFloat ? k::Fp8Source::f32 : k::Fp8Source::bf16;
  const void* aux_ptr = aux.defined() ? aux.data_ptr() : nullptr;
  k::Fp8Scale scale;
  if (history == nullptr) {
    if (!partials.defined())
      partials = at::empty({k::fp8_amax_blocks(x.numel())}, x.options().dtype(at::kFloat));
    EXPECT_EQ(k::fp8_amax_partials(source, x.data_ptr(), x.numel(), partials.data_ptr<float>(),
                                   stream, prologue, aux_ptr),
              cudaSuccess);
    scale.amax_partials = partials.data_ptr<float>();
    scale.amax_count = static_cast<int>(partials.numel());
  } else {
    scale.history = history->data_ptr<float>();
    scale.history_len = static_cast<int>(history->numel());
    scale.step = step->data_ptr<std::int64_t>();
  }
  scale.min_amax = 1e-12f;
  scale.inv_top = static_cast<float>(1.0 / (gradient ? 57344.0 : 448.0));
  scale.scale_out = r.scale.data_ptr<float>();
  EXPECT_EQ(k::fp8_cast_transpose(
                source, x.data_ptr(), rows, cols, scale,
                gradient ? k::Fp8Format::e5m2 : k::Fp8Format::e4m3, r.q.data_ptr(), r.qt.data_ptr(),
                padded, r.column_partials.defined() ? r.column_partials.data_ptr<float>() : nullptr,
                stream, prologue, aux_ptr),
            cudaSuccess);
}

Cast cast(const at::Tensor& x, bool gradient, k::Fp8Prologue prologue, const at::Tensor& aux,
          at::Tensor* history = nullptr, const at::Tensor* step = nullptr) {
  Cast r = outputs_for(x);
  at::Tensor partials;
  cast_into(r, partials, x, gradient, prologue, aux, history, step);
  return r;
}

// The kernel's column sums of v [rows, cols] (fp32) with its rounding: each 64-row tile's rows
// g and g + 32 added first, then those 32 sums in order of g.
at::Tensor column_partials_of(const at::Tensor& v, std::int64_t padded) {
  const std::int64_t tiles = (padded + kTileRows - 1) / kTileRows, cols = v.size(1);
  const at::Tensor t = at::constant_pad_nd(v, {0, 0, 0, tiles * kTileRows - v.size(0)}, 0)
                           .view({tiles, 2, 32, cols});
  at::Tensor total = at::zeros({tiles, cols}, v.options());
  for (std::int64_t g = 0; g < 32; ++g)
    total = total + (t.select(2, g).select(1, 0) + t.select(2, g).select(1, 1));
  return total;
}

// Every output of one cast against ATen: q the bytes of (v * (1 / scale)) in the format
// (saturated at its largest value when `saturate`), qt its transpose with zero padding.
void expect_cast(const Cast& c, const at::Tensor& v, const at::Tensor& scale, bool gradient,
                 bool saturate, const std::string& what) {
  const double top = gradient ? 57344.0 : 448.0;
  at::Tensor scaled = v * scale.reciprocal();
  if (saturate) scaled = scaled.clamp(-top, top);
  const at::Tensor want =
      scaled.to(gradient ? at::kFloat8_e5m2 : at::kFloat8_e4m3fn).view(at::kByte);
  EXPECT_TRUE(at::equal(c.scale, scale))
      << what << ": scale " << c.scale.item<float>() << " vs " << scale.item<float>();
  EXPECT_TRUE(at::equal(c.q, want)) << what << ": row-major bytes";
  const std::int64_t padded = c.qt.size(1);
  const at::Tensor want_t = at::constant_pad_nd(want, {0, 0, 0, padded - want.size(0)}, 0).t();
  EXPECT_TRUE(at::equal(c.qt, want_t)) << what << ": transposed bytes and their zero padding";
  EXPECT_TRUE(at::equal(c.column_partials, column_partials_of(v, padded)))
      << what << ": column sums per 64-row tile";
}

struct Shape {
  std::int64_t rows, cols;
};

TEST(Fp8CastKernel, BlocksOfSeveralTilesCastAsATileABlockOnAGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  auto gen = at::make_generator<at::CPUGeneratorImpl>(41);
  const c10::Device gpu(c10::kCUDA, 0);
  for (const Shape s : {Shape{12493, 1536}, Shape{203, 1536}}) {
    const at::Tensor x0 = at::randn({s.rows, s.cols}, gen) * 5;
    const at::Tensor aux0 = at::randn({s.rows, s.cols}, gen) * 2;
    for (const auto dtype : {at::kFloat, at::kBFloat16}) {
      for (const bool gradient : {false, true}) {
        const at::Tensor x = x0.to(gpu, dtype);
        const std::string what = std::to_string(s.rows) + "x" + std::to_string(s.cols) + " " +
                                 c10::toString(dtype) + (gradient ? " E5M2" : " E4M3");
        // Current scaling: the kernels' own max|x|.
        const at::Tensor v = x.to(at::kFloat);
        const double top = gradient ? 57344.0 : 448.0;
        const at::Tensor scale = v.abs().amax().clamp_min(1e-12) / top;
        expect_cast(cast(x, gradient, k::Fp8Prologue::none, {}), v, scale, gradient, false, what);
        // Delayed scaling: the scale from the history's slots but the current and next ones
        // (a maximum below this operand's: values saturate), this max|x| recorded into the
        // current slot, the next one cleared.
        const std::int64_t step_count = 7;  // ring of 5: slot 2 current, 3 next
        at::Tensor history =
            at::tensor(std::vector<float>{0.5f, 1.25f, 0.f, 99.f, 0.75f}, v.options());
        const at::Tensor step = at::full({1}, step_count, v.options().dtype(at::kLong));
        const at::Tensor from_history = at::scalar_tensor(1.25, v.options()) / top;
        expect_cast(cast(x, gradient, k::Fp8Prologue::none, {}, &history, &step), v, from_history,
                    gradient, true, what + " delayed");
        const at::Tensor recorded = at::tensor(
            std::vector<float>{0.5f, 1.25f, v.abs().max().item<float>(), 0.f, 0.75f}, v.options());
        EXPECT_TRUE(at::equal(history, recorded)) << what << " delayed: history " << history;
      }
    }
    // The GELU-gradient prologue (bf16): the cast of at::gelu_backward(x, aux)'s bf16 values.
    const at::Tensor x = x0.to(gpu, at::kBFloat16), aux = aux0.to(gpu, at::kBFloat16);
    const at::Tensor v = at::gelu_backward(x, aux, "tanh").to(at::kFloat);
    const at::Tensor scale = v.abs().amax().clamp_min(1e-12) / 57344.0;
    expect_cast(cast(x, true, k::Fp8Prologue::gelu_grad, aux), v, scale, true, false,
                std::to_string(s.rows) + " rows, GELU-gradient prologue");
  }
}

// A measurement, not a test (disabled: it checks nothing, so the suite does not count it; run it
// with --gtest_also_run_disabled_tests, as scripts/device/fp8.sh does): how fast the cast runs at
// the 1.3B model's stage-1 shapes (an activation and the feed-forward's hidden tensor), beside a
// bf16 copy of the same tensor (what the memory gives a plain read and write in this process),
// for working on the kernel between whole-step runs (docs/performance.md). Bytes: bf16 read,
// E4M3 rows and transposed copy written.
TEST(Fp8CastKernel, DISABLED_FiguresOnAGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  const c10::Device gpu(c10::kCUDA, 0);
  using wanhost::testing::time_us;
  for (const Shape s : {Shape{12480, 1536}, Shape{12480, 8960}}) {
    const at::Tensor x =
        at::randn({s.rows, s.cols}, at::TensorOptions().device(gpu)).to(at::kBFloat16);
    at::Tensor copy = at::empty_like(x);
    at::Tensor history = at::zeros({18}, x.options().dtype(at::kFloat));
    history[0] = 4.f;
    const at::Tensor step = at::full({1}, 1, x.options().dtype(at::kLong));
    const double elements = static_cast<double>(x.numel());
    Cast out = outputs_for(x);
    at::Tensor partials;
    const double copy_us = time_us([&] { copy.copy_(x); });
    const double tensorwise_us =
        time_us([&] { cast_into(out, partials, x, false, k::Fp8Prologue::none, {}); });
    // A gradient's cast (E5M2, the bias gradient's column sums) and the feed-forward's (GELU's
    // derivative applied to it: a second bf16 operand read).
    const double gradient_us = time_us(
        [&] { cast_into(out, partials, x, true, k::Fp8Prologue::none, {}, &history, &step); });
    const at::Tensor aux = at::randn_like(x);
    const double gelu_grad_us = time_us([&] {
      cast_into(out, partials, x, true, k::Fp8Prologue::gelu_grad, aux, &history, &step);
    });
    Cast no_sums = outputs_for(x);
    no_sums.column_partials = at::Tensor();
    const double delayed_us = time_us(
        [&] { cast_into(no_sums, partials, x, false, k::Fp8Prologue::none, {}, &history, &step); });
    const auto gbps = [&](double bytes_per_element, double us) {
      return bytes_per_element * elements / us / 1e3;
    };
    std::printf(
        "[ figures ] %lld x %lld bf16: copy %.1f us (%.0f GB/s); cast to E4M3 rows + transposed: "
        "tensorwise %.1f us (max|x| pass and column sums included), delayed %.1f us (%.0f GB/s); "
        "E5M2 with column sums %.1f us (%.0f GB/s); with GELU's derivative %.1f us (%.0f GB/s)\n",
        static_cast<long long>(s.rows), static_cast<long long>(s.cols), copy_us, gbps(4, copy_us),
        tensorwise_us, delayed_us, gbps(4, delayed_us), gradient_us, gbps(4, gradient_us),
        gelu_grad_us, gbps(6, gelu_grad_us));
  }
}

}  // namespace
