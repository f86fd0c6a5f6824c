// The row kernels' parameter-gradient sums made in the row pass itself (kernels/fused_kernels.hpp:
// rms_norm_rope_backward_one_pass, layer_norm_modulate_backward_one_pass,
// gated_residual_norm_backward_one_pass) against the two-pass forms (a column kernel reading g and
// x again), called with raw pointers as the kit calls them, at the 1.3B stage-1 shapes: the
// gradients the row kernels write bit for bit (the same arithmetic), the parameter gradients'
// sums within float rounding of the other order; dense and packed rows, with and without RoPE. A
// disabled test times both (run with --gtest_also_run_disabled_tests). Also kernels::sum_slots,
// which reduces such partial sums for the kit, against ATen's sum; and disabled figures of the
// wide rows' forms (14B). GPU only: built where the kernels are. (The LayerNorm backwards' one-pass
// form with rows read again measured no faster on an H100, 2026-12-05: 97.1 -> 95.8 us and 166.3 ->
// 166.1 us; its register form, tested here, is: 89.7 -> 78.0 us and 159.2 -> 143.3 us on an
// H100, 2026-12-05 22:27 UTC.)
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "fused_kernels.hpp"
#include "gpu_timing.hpp"

namespace {

namespace k = wanhost::kernels;

// The inputs of one rms_norm_rope backward: rows [T, D] grouped by sample (dense S each, or by
// `cu`), the saved rstd, a RoPE table per position (or none).
struct Case {
  k::RowLayout layout;
  at::Tensor g, x, w, rstd, cos, sin, cu;
  std::int64_t head_dim = 128, table_rows = 1;
};

Case make_case(std::int64_t samples, std::int64_t per_sample, std::int64_t dim, bool rope,
               const std::vector<std::int32_t>& packed = {}) {
  const auto bf16 = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  const auto f32 = bf16.dtype(at::kFloat);
  Case c;
  std::int64_t rows = samples * per_sample, longest = per_sample;
  if (!packed.empty()) {
    std::vector<std::int32_t> cu{0};
    longest = 0;
    for (auto n : packed) {
      cu.push_back(cu.back() + n);
      longest = std::max<std::int64_t>(longest, n);
    }
    rows = cu.back();
    samples = static_cast<std::int64_t>(packed.size());
    c.cu = at::tensor(cu, at::TensorOptions().dtype(at::kInt)).to(at::kCUDA);
    c.layout.cu = c.cu.data_ptr<std::int32_t>();
  }
  c.layout.rows_per_sample = per_sample;
  c.layout.samples = samples;
  c.layout.chunks = (longest + k::kRowsPerBlock - 1) / k::kRowsPerBlock;
  c.layout.dim = dim;
  c.g = at::randn({rows, dim}, bf16);
  c.x = at::randn({rows, dim}, bf16) * 2;
  c.w = at::rand({dim}, f32) + 0.5;
  c.rstd = at::rand({rows}, f32) + 0.5;
  if (rope) {
    c.table_rows = rows;
    const at::Tensor angles = at::rand({rows, c.head_dim / 2}, f32) * 6.28;
    c.cos = angles.cos();
    c.sin = angles.sin();
  }
  return c;
}

const float* ptr(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<float>() : nullptr;
}

// dx and the weight gradient (fp32 [D]) by the two-pass or the one-pass form (`rows_per_block`
// rows a block; 0: the kernels' one-wave choice, as the kit calls it).
std::pair<at::Tensor, at::Tensor> backward(const Case& c, bool one_pass,
                                           std::int64_t rows_per_block = 0) {
  const auto stream = at::cuda::getCurrentCUDAStream().stream();
  at::Tensor dx = at::empty_like(c.g);
  const auto f32 = c.w.options();
  at::Tensor partials;
  if (one_pass) {
    const auto rows =
        rows_per_block > 0 ? rows_per_block : k::rms_norm_rope_backward_one_pass_rows(c.layout);
    partials = at::empty(
        {c.layout.samples, k::rms_norm_rope_backward_one_pass_blocks(c.layout, rows), c.layout.dim},
        f32);
    EXPECT_EQ(k::rms_norm_rope_backward_one_pass(c.layout, c.g.data_ptr(), c.x.data_ptr(), ptr(c.w),
                                                 ptr(c.cos), ptr(c.sin), c.table_rows, c.head_dim,
                                                 ptr(c.rstd), dx.data_ptr(),
                                                 partials.data_ptr<float>(), rows, stream),
              cudaSuccess);
  } else {
    partials = at::empty({c.layout.samples, k::partial_chunks(c.layout), 1, c.layout.dim}, f32);
    EXPECT_EQ(
        k::rms_norm_rope_backward(c.layout, c.g.data_ptr(), c.x.data_ptr(), ptr(c.w), ptr(c.cos),
                                  ptr(c.sin), c.table_rows, c.head_dim, ptr(c.rstd), dx.data_ptr(),
                                  partials.data_ptr<float>(), stream),
        cudaSuccess);
  }
  return {dx, partials.view({-1, c.layout.dim}).sum(0)};
}

void expect_one_pass_matches(const Case& c, const char* what, std::int64_t rows_per_block = 0) {
  ASSERT_TRUE(k::rms_norm_rope_backward_one_pass_fits(c.layout)) << what;
  const auto [dx2, dw2] = backward(c, false);
  const auto [dx1, dw1] = backward(c, true, rows_per_block);
  EXPECT_TRUE(at::equal(dx1, dx2)) << what << ": the input gradient";
  // The same fp32 terms added in another order (by warp and block of rows, not by column lanes
  // over 128 rows): within ~1e-6 of the sums' own size over ~10^4 terms.
  const double scale = dw2.abs().max().item<double>() + 1.0;
  EXPECT_LT((dw1 - dw2).abs().max().item<double>(), 1e-5 * scale)
      << what << ": the weight gradient";
}

TEST(RowKernelSums, RmsNormRopeOnePassMatchesTwoPassesOnAGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  expect_one_pass_matches(make_case(32, 390, 1536, true), "stage 1 self-attention q (dense)");
  expect_one_pass_matches(make_case(32, 256, 1536, false), "stage 1 cross-attention k (text rows)");
  expect_one_pass_matches(make_case(1, 397, 512, true, {3, 100, 294}), "packed, a 3-row sample");
  // The kit's layout (every row one group, rows_flat): 390 blocks of 32 rows are more than an
  // H100 holds at once, so the kernels take more rows a block (one wave); any multiple of 8 of
  // at least 32 gives the same dx and sums within rounding.
  const Case flat = make_case(1, 32 * 390, 1536, true);
  const auto rows = k::rms_norm_rope_backward_one_pass_rows(flat.layout);
  EXPECT_EQ(rows % 8, 0);
  EXPECT_GE(rows, k::kRowsPerBlock);
  std::printf("[ info ] one-pass RMSNorm backward of 12480 rows: %lld rows a block, %lld blocks\n",
              static_cast<long long>(rows),
              static_cast<long long>(k::rms_norm_rope_backward_one_pass_blocks(flat.layout, rows)));
  expect_one_pass_matches(flat, "stage 1 q, one group (the kit's layout)");
  expect_one_pass_matches(flat, "stage 1 q, 32 rows a block", 32);
  expect_one_pass_matches(flat, "stage 1 q, 200 rows a block", 200);
  expect_one_pass_matches(make_case(1, 397, 512, true, {3, 100, 294}), "packed, 40 rows a block",
                          40);
  for (const std::int64_t bad : {0, 20, 36}) {
    at::Tensor dx = at::empty_like(flat.g), p = at::empty({1 << 20}, flat.w.options());
    EXPECT_EQ(k::rms_norm_rope_backward_one_pass(
                  flat.layout, flat.g.data_ptr(), flat.x.data_ptr(), ptr(flat.w), ptr(flat.cos),
                  ptr(flat.sin), flat.table_rows, flat.head_dim, ptr(flat.rstd), dx.data_ptr(),
                  p.data_ptr<float>(), bad, at::cuda::getCurrentCUDAStream().stream()),
              cudaErrorInvalidValue)
        << bad << " rows a block";
  }
  // Beyond the one-pass form's shared memory: the caller takes the two passes.
  k::RowLayout wide;
  wide.dim = 2048;
  EXPECT_FALSE(k::rms_norm_rope_backward_one_pass_fits(wide));
}

// A LayerNorm + modulation backward's inputs: per-sample scale vectors [samples, D], the saved
// mean and rstd; for the residual form also the gradient reaching x_out, the branch y and a gate.
struct NormCase {
  Case rows;  // g, x (x_out), layout
  at::Tensor scale, mean, gx, y, gate;
};

NormCase make_norm_case(std::int64_t samples, std::int64_t per_sample, std::int64_t dim,
                        const std::vector<std::int32_t>& packed = {}) {
  NormCase n;
  n.rows = make_case(samples, per_sample, dim, false, packed);
  n.rows.layout.vec_stride = dim;
  n.rows.layout.gate_stride = dim;
  const auto f32 = n.rows.w.options();
  const std::int64_t rows = n.rows.g.size(0);
  n.scale = at::randn({n.rows.layout.samples, dim}, f32) * 0.2;
  n.mean = at::randn({rows}, f32) * 0.1;
  n.gx = at::randn_like(n.rows.g);
  n.y = at::randn_like(n.rows.g);
  n.gate = at::randn({n.rows.layout.samples, dim}, f32) * 0.2;
  return n;
}

// dx (and dy with `residual`) and the [samples, 2, D] sums (d shift, d scale) of either form;
// the residual form's gate sums (the column kernel in both) as a third output.
std::vector<at::Tensor> norm_backward(const NormCase& n, bool residual, bool one_pass) {
  const auto stream = at::cuda::getCurrentCUDAStream().stream();
  const Case& c = n.rows;
  const auto f32 = c.w.options();
  const auto& l = c.layout;
  at::Tensor dx = at::empty_like(c.g), dy = at::empty_like(c.g);
  at::Tensor sums = one_pass ? at::empty({l.samples, l.chunks, 2, l.dim}, f32)
                             : at::empty({l.samples, k::partial_chunks(l), 2, l.dim}, f32);
  at::Tensor gate_sums = at::empty({l.samples, k::partial_chunks(l), 1, l.dim}, f32);
  cudaError_t err;
  if (residual) {
    const auto backward =
        one_pass ? k::gated_residual_norm_backward_one_pass : k::gated_residual_norm_backward;
    err = backward(l, n.gx.data_ptr(), c.g.data_ptr(), c.x.data_ptr(), n.y.data_ptr(), ptr(n.gate),
                   ptr(n.scale), ptr(n.mean), ptr(c.rstd), dx.data_ptr(), dy.data_ptr(),
                   sums.data_ptr<float>(), gate_sums.data_ptr<float>(), stream);
  } else {
    const auto backward =
        one_pass ? k::layer_norm_modulate_backward_one_pass : k::layer_norm_modulate_backward;
    err = backward(l, c.g.data_ptr(), c.x.data_ptr(), ptr(n.scale), ptr(n.mean), ptr(c.rstd),
                   nullptr, dx.data_ptr(), sums.data_ptr<float>(), stream);
  }
  EXPECT_EQ(err, cudaSuccess);
  std::vector<at::Tensor> out{dx, sums.sum(1)};
  if (residual) {
    out.push_back(dy);
    out.push_back(gate_sums.sum(1));
  }
  return out;
}

void expect_norm_one_pass_matches(const NormCase& n, bool residual, const char* what) {
  ASSERT_TRUE(k::layer_norm_one_pass_fits(n.rows.layout)) << what;
  const auto two = norm_backward(n, residual, false), one = norm_backward(n, residual, true);
  EXPECT_TRUE(at::equal(one[0], two[0])) << what << ": dx";
  const double scale = two[1].abs().max().item<double>() + 1.0;
  EXPECT_LT((one[1] - two[1]).abs().max().item<double>(), 1e-5 * scale)
      << what << ": d shift and d scale";
  if (residual) {
    EXPECT_TRUE(at::equal(one[2], two[2])) << what << ": dy";
    EXPECT_TRUE(at::equal(one[3], two[3])) << what << ": d gate (the column kernel in both)";
  }
}

TEST(RowKernelSums, LayerNormOnePassMatchesTwoPassesOnAGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  for (const bool residual : {false, true}) {
    expect_norm_one_pass_matches(make_norm_case(32, 390, 1536), residual, "stage 1 (dense)");
    expect_norm_one_pass_matches(make_norm_case(1, 8190, 1536), residual, "stage 2 (one clip)");
    expect_norm_one_pass_matches(make_norm_case(1, 397, 512, {3, 100, 294}), residual,
                                 "packed, a 3-row sample");
  }
  k::RowLayout wide;
  wide.dim = 2048;
  EXPECT_FALSE(k::layer_norm_one_pass_fits(wide));
}

// kernels::sum_slots against ATen's sum over the same dimensions: per-sample sums over chunks
// (LayerNorm's [samples, chunks, 2, D]), whole-tensor sums (a bias gradient's [samples * chunks,
// D], the FP8 cast's [M / 64, C]), widths that are not a multiple of 4 (the scalar path), no
// slots at all (zeros) and more groups than a grid has rows (65535); and the same result twice,
// bit for bit (a fixed order).
TEST(RowKernelSums, SlotSumsMatchAtenOnAGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  const auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  const auto stream = at::cuda::getCurrentCUDAStream().stream();
  struct Shape {
    std::int64_t groups, slots, width;
  };
  for (const Shape sh : {Shape{32, 4, 2 * 1536}, Shape{1, 128, 1536}, Shape{1, 195, 8960},
                         Shape{3, 7, 202}, Shape{2, 5, 3}, Shape{4, 0, 64}, Shape{70000, 3, 8}}) {
    const auto p = at::randn({sh.groups, sh.slots, sh.width}, f32);
    auto out = at::full({sh.groups, sh.width}, 7.f, f32), again = at::empty_like(out);
    ASSERT_EQ(k::sum_slots(p.data_ptr<float>(), sh.groups, sh.slots, sh.width,
                           out.data_ptr<float>(), stream),
              cudaSuccess);
    ASSERT_EQ(k::sum_slots(p.data_ptr<float>(), sh.groups, sh.slots, sh.width,
                           again.data_ptr<float>(), stream),
              cudaSuccess);
    const auto expected = p.sum(1);
    const std::string what = std::to_string(sh.groups) + " x " + std::to_string(sh.slots) + " x " +
                             std::to_string(sh.width);
    // fp32 sums of up to 195 unit normals in another order: within a few ulps of ~14.
    EXPECT_LT((out - expected).abs().max().item<double>(), 1e-4) << what;
    EXPECT_TRUE(at::equal(out, again)) << what << ": not deterministic";
  }
}

// The row kernels at 14B's rows (37440 x 5120: a row to 4 warps' registers) against rows just
// beyond that form (37440 x 6400: a warp reading its row again for each pass), in GB/s of the
// passes each call makes over [T, D] bf16 (the backwards with their column kernel): the wide form
// is kept only if it moves more bytes a second.
TEST(RowKernelSums, DISABLED_WideRowFiguresOnAGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  using wanhost::testing::time_us;
  const auto stream = at::cuda::getCurrentCUDAStream().stream();
  for (const std::int64_t dim : {5120, 6400}) {
    Case c = make_case(1, 37440, dim, true);
    const auto f32 = c.w.options();
    const std::int64_t rows = c.g.size(0);
    at::Tensor y = at::empty_like(c.g), dx = at::empty_like(c.g), mean = at::empty({rows}, f32);
    at::Tensor vec = at::randn({1, dim}, f32) * 0.2;
    at::Tensor partials = at::empty({1, k::partial_chunks(c.layout), 2, dim}, f32);
    const double bytes = static_cast<double>(rows) * static_cast<double>(dim) * 2.0;
    const auto report = [&](const char* what, double passes, double us) {
      std::printf("[ figures ] %s, %lld x %lld: %.1f us, %.0f GB/s\n", what,
                  static_cast<long long>(rows), static_cast<long long>(dim), us,
                  passes * bytes / us / 1e3);
    };
    report("layer_norm_modulate forward", 2, time_us([&] {
             (void)k::layer_norm_modulate_forward(c.layout, c.x.data_ptr(), ptr(vec), ptr(vec),
                                                  1e-6f, y.data_ptr(), mean.data_ptr<float>(),
                                                  c.rstd.data_ptr<float>(), stream);
           }));
    report("layer_norm_modulate backward (with its column kernel)", 5, time_us([&] {
             (void)k::layer_norm_modulate_backward(
                 c.layout, c.g.data_ptr(), c.x.data_ptr(), ptr(vec), ptr(mean), ptr(c.rstd),
                 nullptr, dx.data_ptr(), partials.data_ptr<float>(), stream);
           }));
    report("rms_norm_rope forward", 2, time_us([&] {
             (void)k::rms_norm_rope_forward(c.layout, c.x.data_ptr(), ptr(c.w), ptr(c.cos),
                                            ptr(c.sin), c.table_rows, c.head_dim, 1e-6f,
                                            y.data_ptr(), c.rstd.data_ptr<float>(), stream);
           }));
    report("rms_norm_rope backward (with its column kernel)", 5, time_us([&] {
             (void)k::rms_norm_rope_backward(c.layout, c.g.data_ptr(), c.x.data_ptr(), ptr(c.w),
                                             ptr(c.cos), ptr(c.sin), c.table_rows, c.head_dim,
                                             ptr(c.rstd), dx.data_ptr(), partials.data_ptr<float>(),
                                             stream);
           }));
  }
}

TEST(RowKernelSums, DISABLED_FiguresOnAGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  using wanhost::testing::replayed_time_us;
  using wanhost::testing::time_us;
  const Case c = make_case(32, 390, 1536, true);
  const double two = time_us([&] { backward(c, false); });
  const double one = time_us([&] { backward(c, true); });
  std::printf(
      "[ figures ] rms_norm_rope backward, 32 x 390 x 1536 with RoPE (the weight gradient summed "
      "by ATen included): two passes %.1f us, one pass %.1f us\n",
      two, one);
  // The kit's layout (one group of 12480 rows): blocks of 32 rows against the one-wave choice.
  const Case flat = make_case(1, 32 * 390, 1536, true);
  const auto wave_rows = k::rms_norm_rope_backward_one_pass_rows(flat.layout);
  const double rows32 = time_us([&] { backward(flat, true, 32); });
  const double wave = time_us([&] { backward(flat, true, wave_rows); });
  std::printf(
      "[ figures ] rms_norm_rope backward, one pass, 12480 x 1536 as one group: 32 rows a block "
      "%.1f us, %lld rows a block (one wave) %.1f us\n",
      rows32, static_cast<long long>(wave_rows), wave);
  const NormCase n = make_norm_case(32, 390, 1536);
  for (const bool residual : {false, true}) {
    const double norm_two = time_us([&] { norm_backward(n, residual, false); });
    const double norm_one = time_us([&] { norm_backward(n, residual, true); });
    std::printf(
        "[ figures ] %s backward, 32 x 390 x 1536 (the sums by ATen included): two passes %.1f "
        "us, one pass %.1f us\n",
        residual ? "gated_residual_norm" : "layer_norm_modulate", norm_two, norm_one);
  }
  // The slot sums of a bias gradient (128 slots of 1536) and of a LayerNorm's per-sample pair
  // (32 samples, 4 chunks, 2 x 1536): ATen's reduction against kernels::sum_slots.
  // Replayed from a CUDA graph, as in a training step: eagerly the host's launch work is timed.
  const auto f32 = c.w.options();
  for (const auto& [groups, slots, width] :
       std::vector<std::array<std::int64_t, 3>>{{1, 128, 1536}, {32, 4, 3072}}) {
    const auto p = at::randn({groups, slots, width}, f32);
    auto out = at::empty({groups, width}, f32);
    const double aten = replayed_time_us([&] { (void)p.sum(1); });
    const double ours = replayed_time_us([&] {
      (void)k::sum_slots(p.data_ptr<float>(), groups, slots, width, out.data_ptr<float>(),
                         at::cuda::getCurrentCUDAStream().stream());
    });
    std::printf(
        "[ figures ] slot sums %lld x %lld x %lld: ATen sum %.1f us, kernels::sum_slots %.1f us\n",
        static_cast<long long>(groups), static_cast<long long>(slots),
        static_cast<long long>(width), aten, ours);
  }
}

}  // namespace
