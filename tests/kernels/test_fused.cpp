// Parity of the fused operators: CUDA kernels vs the ATen reference (bf16 inputs drawn fresh per
// case, outputs and all gradients compared by relative L2 error), and the reference vs float64
// formulas on the CPU.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include <cmath>

#include "gpu_test_util.hpp"
#include "wanhost/kit/fused.hpp"
#include "wanhost/kit/layers.hpp"

namespace {

using namespace wanhost;

using wanhost::testing::rel_err;

bool have_gpu() {
  return fused::kernels_built() && at::hasCUDA();
}

std::shared_ptr<AttentionSegments> segments(const std::vector<std::int64_t>& lengths,
                                            const c10::Device& device) {
  auto s = std::make_shared<AttentionSegments>();
  s->host_cu_q = {0};
  for (auto l : lengths) s->host_cu_q.push_back(s->host_cu_q.back() + l);
  s->host_cu_kv = s->host_cu_q;
  std::vector<std::int32_t> v(s->host_cu_q.begin(), s->host_cu_q.end());
  s->cu_seqlens_q = at::tensor(v, at::TensorOptions().dtype(at::kInt)).to(device);
  s->cu_seqlens_kv = s->cu_seqlens_q;
  s->max_q = s->max_kv = *std::max_element(lengths.begin(), lengths.end());
  return s;
}

// Leaves: fresh copies requiring grad, so both paths see the same values.
std::vector<at::Tensor> leaves(const std::vector<at::Tensor>& ts) {
  std::vector<at::Tensor> out;
  for (const auto& t : ts) out.push_back(t.detach().clone().requires_grad_(true));
  return out;
}

std::vector<at::Tensor> grads_of(const at::Tensor& y, const at::Tensor& gy,
                                 const std::vector<at::Tensor>& in) {
  return torch::autograd::grad({y}, in, {gy});
}

void expect_close(const std::vector<at::Tensor>& got, const std::vector<at::Tensor>& want,
                  double tol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    ASSERT_TRUE(got[i].defined()) << what << " #" << i;
    EXPECT_EQ(got[i].sizes(), want[i].sizes()) << what << " #" << i;
    EXPECT_EQ(got[i].scalar_type(), want[i].scalar_type()) << what << " #" << i;
    EXPECT_LT(rel_err(got[i], want[i]), tol) << what << " #" << i;
  }
}

const auto kBf16Cuda = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
const auto kF32Cuda = at::TensorOptions().dtype(at::kFloat).device(at::kCUDA);

void check_layer_norm_modulate(std::int64_t b, std::int64_t s, std::int64_t d,
                               const AttentionSegments* seg, std::int64_t samples) {
  auto x = at::randn({b, s, d}, kBf16Cuda) * 3 + 0.5;
  auto scale = at::randn({samples, 1, d}, kF32Cuda) * 0.2;
  auto shift = at::randn({samples, 1, d}, kF32Cuda) * 0.2;
  auto gy = at::randn({b, s, d}, kBf16Cuda);
  auto in_k = leaves({x, scale, shift}), in_r = leaves({x, scale, shift});
  auto yk = fused::layer_norm_modulate(in_k[0], in_k[1], in_k[2], 1e-6, seg);
  auto yr = fused::reference::layer_norm_modulate(in_r[0], in_r[1], in_r[2], 1e-6, seg);
  expect_close({yk}, {yr}, 1e-2, "layer_norm_modulate output");
  expect_close(grads_of(yk, gy, in_k), grads_of(yr, gy, in_r), 1e-2,
               "layer_norm_modulate gradients");
}

TEST(FusedGpu, LayerNormModulateDense) {
  if (!have_gpu()) GTEST_SKIP() << "needs a CUDA build and a CUDA device";
  check_layer_norm_modulate(3, 70, 256, nullptr, 3);
  check_layer_norm_modulate(2, 33, 1536, nullptr, 2);
  // Several partial sums per sample (rows > 128) and a channel tile that is not full (D = 200).
  check_layer_norm_modulate(2, 300, 200, nullptr, 2);
  // Wider rows: a row to 4 warps' registers (D = 2048, and 14B's 5120 with a sample shorter
  // than a block's rows), and beyond them (D = 8192) rows read again for each pass.
  check_layer_norm_modulate(2, 150, 2048, nullptr, 2);
  check_layer_norm_modulate(2, 45, 5120, nullptr, 2);
  check_layer_norm_modulate(1, 70, 8192, nullptr, 1);
}

TEST(FusedGpu, LayerNormModulatePacked) {
  if (!have_gpu()) GTEST_SKIP() << "needs a CUDA build and a CUDA device";
  auto seg = segments({37, 64, 5, 90}, at::kCUDA);
  check_layer_norm_modulate(1, 196, 512, seg.get(), 4);
  auto long_seg = segments({300, 1, 260}, at::kCUDA);
  check_layer_norm_modulate(1, 561, 1536, long_seg.get(), 3);
}

// fused::layer_norm_modulate_with_input: x's values unchanged as the first output, and x's
// gradient the sum of what reaches it through both outputs, added inside the norm's backward
// kernel (one rounding) where the reference lets autograd add two bf16 gradients; with only one
// output used the other's gradient is absent.
void check_layer_norm_modulate_with_input(std::int64_t b, std::int64_t s, std::int64_t d,
                                          const AttentionSegments* seg, std::int64_t samples) {
  auto x = at::randn({b, s, d}, kBf16Cuda) * 3 + 0.5;
  auto scale = at::randn({samples, 1, d}, kF32Cuda) * 0.2;
  auto shift = at::randn({samples, 1, d}, kF32Cuda) * 0.2;
  auto g_through = at::randn({b, s, d}, kBf16Cuda), g_norm = at::randn({b, s, d}, kBf16Cuda);
  const std::string what = "layer_norm_modulate_with_input (D = " + std::to_string(d) + ")";
  for (const int used : {0, 1, 2}) {  // both outputs, the norm only, x's own output only
    auto in_k = leaves({x, scale, shift}), in_r = leaves({x, scale, shift});
    auto k = fused::layer_norm_modulate_with_input(in_k[0], in_k[1], in_k[2], 1e-6, seg);
    auto r = fused::reference::layer_norm_modulate_with_input(in_r[0], in_r[1], in_r[2], 1e-6, seg);
    EXPECT_TRUE(at::equal(k.first, x)) << what << ": the first output is x";
    expect_close({k.second}, {r.second}, 1e-2, what + " output");
    auto grads = [&](std::pair<at::Tensor, at::Tensor>& out, std::vector<at::Tensor>& in) {
      std::vector<at::Tensor> outs, gs;
      if (used != 1) outs.push_back(out.first), gs.push_back(g_through);
      if (used != 2) outs.push_back(out.second), gs.push_back(g_norm);
      return torch::autograd::grad(outs, in, gs, std::nullopt, false, true);
    };
    auto gk = grads(k, in_k), gr = grads(r, in_r);
    const std::string case_name = what + (used == 0 ? "" : used == 1 ? ", norm only" : ", x only");
    if (used == 2) {  // no gradient through the norm: x's is g_through, scale and shift get none
      EXPECT_TRUE(at::equal(gk[0], g_through)) << case_name;
      EXPECT_FALSE(gk[1].defined() && gk[1].abs().max().item<double>() > 0) << case_name;
      continue;
    }
    expect_close(gk, gr, 2e-2, case_name + " gradients");
  }
}

TEST(FusedGpu, LayerNormModulateWithInput) {
  if (!have_gpu()) GTEST_SKIP() << "needs a CUDA build and a CUDA device";
  check_layer_norm_modulate_with_input(4, 390, 1536, nullptr, 4);  // one pass (D <= 1536)
  check_layer_norm_modulate_with_input(2, 150, 2048, nullptr, 2);  // a row to 4 warps
  check_layer_norm_modulate_with_input(1, 70, 8192, nullptr, 1);   // rows read again
  auto seg = segments({37, 64, 5, 90}, at::kCUDA);
  check_layer_norm_modulate_with_input(1, 196, 512, seg.get(), 4);
}

// The parameter gradients are sums over many blocks' rows, always taken in the same order (no
// float atomics): the same inputs give the same bits, run after run, dense or packed.
TEST(FusedGpu, ParameterGradientsRepeatBitForBit) {
  if (!have_gpu()) GTEST_SKIP() << "needs a CUDA build and a CUDA device";
  auto seg = segments({300, 1, 260, 517}, at::kCUDA);
  auto x = at::randn({1, 1078, 1536}, kBf16Cuda);
  auto scale = at::randn({4, 1, 1536}, kF32Cuda) * 0.2;
  auto shift = at::randn({4, 1, 1536}, kF32Cuda) * 0.2;
  auto w = at::rand({1536}, kF32Cuda) + 0.5;
  auto gy = at::randn({1, 1078, 1536}, kBf16Cuda);
  auto run = [&] {
    auto in = leaves({x, scale, shift, w});
    auto y = fused::layer_norm_modulate(in[0], in[1], in[2], 1e-6, seg.get());
    auto z = fused::rms_norm_rope(y, in[3], at::Tensor(), at::Tensor(), 128, 1e-6);
    return grads_of(z, gy.view({1, 1078, 12, 128}), in);
  };
  const auto first = run();
  for (int repeat = 0; repeat < 3; ++repeat) {
    const auto again = run();
    for (std::size_t i = 0; i < first.size(); ++i)
      EXPECT_TRUE(at::equal(first[i], again[i])) << "gradient " << i << ", repeat " << repeat;
  }
}

void check_gated(std::int64_t b, std::int64_t s, std::int64_t d, const AttentionSegments* seg,
                 std::int64_t samples) {
  auto x = at::randn({b, s, d}, kBf16Cuda), y = at::randn({b, s, d}, kBf16Cuda);
  auto gate = at::randn({samples, 1, d}, kF32Cuda);
  auto gy = at::randn({b, s, d}, kBf16Cuda);
  auto in_k = leaves({x, y, gate}), in_r = leaves({x, y, gate});
  auto ok = fused::gated_residual(in_k[0], in_k[1], in_k[2], seg);
  auto orf = fused::reference::gated_residual(in_r[0], in_r[1], in_r[2], seg);
  expect_close({ok}, {orf}, 1e-2, "gated_residual output");
  expect_close(grads_of(ok, gy, in_k), grads_of(orf, gy, in_r), 1e-2, "gated_residual gradients");
}

TEST(FusedGpu, GatedResidual) {
  if (!have_gpu()) GTEST_SKIP() << "needs a CUDA build and a CUDA device";
  check_gated(4, 45, 512, nullptr, 4);
  auto seg = segments({3, 100, 41}, at::kCUDA);
  check_gated(1, 144, 1536, seg.get(), 3);
}

void check_rms_rope(std::int64_t b, std::int64_t s, std::int64_t heads, std::int64_t hd, bool rope,
                    std::int64_t table_rows) {
  const auto d = heads * hd;
  auto x = at::randn({b, s, d}, kBf16Cuda) * 2;
  auto w = at::rand({d}, kF32Cuda) + 0.5;
  at::Tensor c, sn;
  if (rope) {
    auto ang = at::rand({table_rows, hd / 2}, kF32Cuda) * 6.28;
    c = ang.cos();
    sn = ang.sin();
  }
  auto gy = at::randn({b, s, heads, hd}, kBf16Cuda);
  auto in_k = leaves({x, w}), in_r = leaves({x, w});
  auto yk = fused::rms_norm_rope(in_k[0], in_k[1], c, sn, hd, 1e-6);
  // The reference takes one table row per position of x's sequence dimension.
  auto yr = fused::reference::rms_norm_rope(in_r[0], in_r[1], c, sn, hd, 1e-6);
  expect_close({yk}, {yr}, 1e-2, "rms_norm_rope output");
  expect_close(grads_of(yk, gy, in_k), grads_of(yr, gy, in_r), 2e-2, "rms_norm_rope gradients");
}

TEST(FusedGpu, RmsNormRope) {
  if (!have_gpu()) GTEST_SKIP() << "needs a CUDA build and a CUDA device";
  check_rms_rope(2, 75, 4, 128, true, 75);     // dense: table per position
  check_rms_rope(1, 300, 12, 128, true, 300);  // packed: table per token
  check_rms_rope(3, 40, 2, 64, false, 0);      // cross-attention q/k: no rotation
  // Beyond the one-pass backward's shared memory (two passes): D = 2048 and 14B's 5120 with a
  // row to 4 warps' registers, D = 8192 with rows read again.
  check_rms_rope(2, 50, 16, 128, true, 50);
  check_rms_rope(1, 90, 40, 128, true, 90);
  check_rms_rope(1, 40, 64, 128, true, 40);
}

// The block's per-sample vectors are chunks of a [n, 6, D] modulation table, and the affine norm2
// passes one vector expanded over the samples: both are read in place (sample stride 6 D or 0).
TEST(FusedGpu, ModulationChunksAndSharedVectorsReadInPlace) {
  if (!have_gpu()) GTEST_SKIP() << "needs a CUDA build and a CUDA device";
  const std::int64_t n = 3, s = 140, d = 512;
  auto x = at::randn({n, s, d}, kBf16Cuda);
  auto table = at::randn({n, 6, d}, kF32Cuda) * 0.2;
  auto w = at::randn({1, 1, d}, kF32Cuda) * 0.2, b = at::randn({1, 1, d}, kF32Cuda) * 0.2;
  auto gy = at::randn({n, s, d}, kBf16Cuda);
  auto run = [&](bool kernels, const std::vector<at::Tensor>& in) {
    auto m = in[1].chunk(6, 1);
    auto ln = kernels ? fused::layer_norm_modulate : fused::reference::layer_norm_modulate;
    auto gated = kernels ? fused::gated_residual : fused::reference::gated_residual;
    auto y = gated(in[0], ln(in[0], m[1], m[0], 1e-6, nullptr), m[2], nullptr);
    return ln(y, in[2].expand({n, 1, d}), in[3].expand({n, 1, d}), 1e-6, nullptr);
  };
  auto in_k = leaves({x, table, w, b}), in_r = leaves({x, table, w, b});
  auto yk = run(true, in_k), yr = run(false, in_r);
  expect_close({yk}, {yr}, 1e-2, "chained output");
  expect_close(grads_of(yk, gy, in_k), grads_of(yr, gy, in_r), 2e-2, "chained gradients");
}

// q and k as column slices of a merged q/k/v projection: the kernels read them in place.
TEST(FusedGpu, RmsNormRopeReadsRowStridedSlices) {
  if (!have_gpu()) GTEST_SKIP() << "needs a CUDA build and a CUDA device";
  const std::int64_t b = 2, s = 150, heads = 4, hd = 128, d = heads * hd;
  auto qkv = at::randn({b, s, 3 * d}, kBf16Cuda) * 2;
  auto w = at::rand({d}, kF32Cuda) + 0.5;
  auto ang = at::rand({s, hd / 2}, kF32Cuda) * 6.28;
  auto gy = at::randn({b, s, heads, hd}, kBf16Cuda);
  auto in_k = leaves({qkv, w}), in_r = leaves({qkv, w});
  auto yk = fused::rms_norm_rope(in_k[0].narrow(-1, d, d), in_k[1], ang.cos(), ang.sin(), hd, 1e-6);
  auto yr = fused::reference::rms_norm_rope(in_r[0].narrow(-1, d, d), in_r[1], ang.cos(), ang.sin(),
                                            hd, 1e-6);
  expect_close({yk}, {yr}, 1e-2, "strided rms_norm_rope output");
  expect_close(grads_of(yk, gy, in_k), grads_of(yr, gy, in_r), 2e-2,
               "strided rms_norm_rope gradients");
}

// fused::linear: the bias gradient from the column-sum kernel (with run.kernels.lt_epilogues
// including bgrad: the weight-gradient product's BGRADB epilogue), the rest as at::linear.
void check_linear(std::int64_t b, std::int64_t s, std::int64_t in, std::int64_t out) {
  auto x = at::randn({b, s, in}, kBf16Cuda);
  auto w = at::randn({out, in}, kBf16Cuda) * 0.05;
  auto bias = at::randn({out}, kBf16Cuda);
  auto gy = at::randn({b, s, out}, kBf16Cuda);
  auto in_k = leaves({x, w, bias}), in_r = leaves({x, w, bias});
  auto yk = fused::linear(in_k[0], in_k[1], in_k[2]);
  auto yr = at::linear(in_r[0], in_r[1], in_r[2]);
  expect_close({yk}, {yr}, 1e-3, "linear output");
  const auto fallbacks = fused::lt_fallback_count();
  expect_close(grads_of(yk, gy, in_k), grads_of(yr, gy, in_r), 1e-2, "linear gradients");
  // Only meaningful with run.kernels.lt_epilogues including bgrad (off by default: then no cuBLASLt
  // product runs here and the count cannot change); scripts/device/perf.sh runs this test with
  // run.kernels.lt_epilogues=all too.
  EXPECT_EQ(fused::lt_fallback_count(), fallbacks) << "cuBLASLt refused the BGRADB epilogue";
}

TEST(FusedGpu, LinearBiasGradient) {
  if (!have_gpu()) GTEST_SKIP() << "needs a CUDA build and a CUDA device";
  check_linear(4, 390, 256, 1536);
  check_linear(1, 1000, 128, 200);
}

// fused::gated_residual_norm against gated_residual then layer_norm_modulate (reference), with
// a per-sample gate, with no gate (x + y), and with shared affine vectors beside a table gate
// (the kernels read table chunks and expanded vectors in place, each with its own stride).
void check_gated_residual_norm(std::int64_t b, std::int64_t s, std::int64_t d,
                               const AttentionSegments* seg, std::int64_t samples, bool gate,
                               bool shared) {
  auto x = at::randn({b, s, d}, kBf16Cuda) * 3 + 0.5;
  auto y = at::randn({b, s, d}, kBf16Cuda);
  auto table = at::randn({samples, 6, d}, kF32Cuda) * 0.2;
  auto affine = at::randn({2, d}, kF32Cuda) * 0.2;
  auto gx = at::randn({b, s, d}, kBf16Cuda), gn = at::randn({b, s, d}, kBf16Cuda);
  const std::string what = std::string("gated_residual_norm") + (gate ? "" : " (no gate)") +
                           (shared ? " (shared vectors)" : "");
  auto run = [&](bool kernels, std::vector<at::Tensor>& in) {
    // in: x, y, table, affine (leaves); the vectors are views of them.
    auto vec = [&](int i) {
      return shared ? in[3][i].view({1, 1, d}).expand({samples, 1, d}) : in[2].narrow(1, i, 1);
    };
    const auto g = gate ? in[2].narrow(1, 2, 1) : at::Tensor();
    auto out =
        kernels ? fused::gated_residual_norm(in[0], in[1], g, vec(1), vec(0), 1e-6, seg)
                : fused::reference::gated_residual_norm(in[0], in[1], g, vec(1), vec(0), 1e-6, seg);
    auto grads =
        torch::autograd::grad({out.first, out.second}, in, {gx, gn}, std::nullopt, false, true);
    std::vector<at::Tensor> all{out.first, out.second};
    for (std::size_t i = 0; i < grads.size(); ++i)
      if ((i != 2 || gate || !shared) && (i != 3 || shared)) all.push_back(grads[i]);  // used
    return all;
  };
  auto in_k = leaves({x, y, table, affine}), in_r = leaves({x, y, table, affine});
  auto k = run(true, in_k), r = run(false, in_r);
  // x + y * gate: the kernel rounds once to bf16 (a fused multiply-add in fp32), the reference
  // rounds y * gate to bf16 first and then the sum, so an element may differ by a rounding of
  // either (the product's matters where x cancels it), and only a few elements may differ at
  // all (a norm-wise bound failed at random: ~80 of 2.4 M elements one step apart on an H100,
  // 2026-12-05). Without a gate both round x + y once: equal.
  {
    const auto got = k[0].to(at::kDouble).cpu(), want = r[0].to(at::kDouble).cpu();
    // |y * gate| bounded by |y| times the largest gate (per sample or per packed segment).
    const auto product =
        gate ? y.to(at::kDouble).abs().cpu() * table.narrow(1, 2, 1).abs().max().item<double>()
             : at::zeros_like(want);
    // A bf16 rounding moves a value by at most 2^-8 of it (8 significant bits, half an ulp): the
    // reference's two roundings (the product, then the sum) and the kernel's one (the sum) apart
    // by at most 2^-8 (|y gate| + 2 |sum|), up to the sums' own difference.
    const double step = std::ldexp(1.0, -8);
    const auto off = (got - want).abs();
    EXPECT_EQ((off > (want.abs() * 2 + product) * step * (1 + 1e-6)).sum().item<std::int64_t>(), 0)
        << what << " residual sum: an element beyond the roundings of the sum and the product";
    const auto differing = (off > 0).sum().item<std::int64_t>();
    if (gate)
      EXPECT_LE(differing, want.numel() / 1000) << what << " residual sum: elements differing";
    else
      EXPECT_EQ(differing, 0) << what << " residual sum";
  }
  expect_close({k[1]}, {r[1]}, 1e-2, what + " output");
  expect_close(std::vector<at::Tensor>(k.begin() + 2, k.end()),
               std::vector<at::Tensor>(r.begin() + 2, r.end()), 2e-2, what + " gradients");
}

TEST(FusedGpu, GatedResidualNorm) {
  if (!have_gpu()) GTEST_SKIP() << "needs a CUDA build and a CUDA device";
  check_gated_residual_norm(4, 390, 1536, nullptr, 4, true, false);
  check_gated_residual_norm(4, 390, 1536, nullptr, 4, false, false);
  check_gated_residual_norm(2, 130, 2048, nullptr, 2, true, false);  // a row to 4 warps
  check_gated_residual_norm(1, 75, 5120, nullptr, 1, true, false);   // 14B's rows
  check_gated_residual_norm(1, 40, 8192, nullptr, 1, false, false);  // rows read again
  check_gated_residual_norm(2, 100, 256, nullptr, 2, true, true);
  auto seg = segments({100, 37, 260}, at::kCUDA);
  check_gated_residual_norm(1, 397, 512, seg.get(), 3, true, false);
  check_gated_residual_norm(1, 397, 512, seg.get(), 3, false, true);
}

// fused::gelu_feed_forward: GELU in the up-projection's cuBLASLt epilogue, its gradient in the
// epilogue of the product that makes the hidden gradient (as run.kernels.lt_epilogues picks).
// Against the ATen reference in bf16, and both against float64 arithmetic on the same bf16
// inputs: the fused path rounds fewer intermediates, so it must not be farther from it.
void check_gelu_feed_forward(std::int64_t b, std::int64_t s, std::int64_t d, std::int64_t f,
                             std::int64_t d_out) {
  auto x = at::randn({b, s, d}, kBf16Cuda);
  auto w1 = at::randn({f, d}, kBf16Cuda) / std::sqrt(static_cast<double>(d));
  auto b1 = at::randn({f}, kBf16Cuda) * 0.5;
  auto w2 = at::randn({d_out, f}, kBf16Cuda) / std::sqrt(static_cast<double>(f));
  auto b2 = at::randn({d_out}, kBf16Cuda) * 0.5;
  auto gy = at::randn({b, s, d_out}, kBf16Cuda);
  const auto fallbacks = fused::lt_fallback_count();
  auto in_k = leaves({x, w1, b1, w2, b2}), in_r = leaves({x, w1, b1, w2, b2});
  auto in_d = leaves({x.to(at::kDouble), w1.to(at::kDouble), b1.to(at::kDouble), w2.to(at::kDouble),
                      b2.to(at::kDouble)});
  auto yk = fused::gelu_feed_forward(in_k[0], in_k[1], in_k[2], in_k[3], in_k[4]);
  auto yr = fused::reference::gelu_feed_forward(in_r[0], in_r[1], in_r[2], in_r[3], in_r[4]);
  auto yd = fused::reference::gelu_feed_forward(in_d[0], in_d[1], in_d[2], in_d[3], in_d[4]);
  expect_close({yk}, {yr}, 1e-2, "gelu_feed_forward output");
  EXPECT_LE(rel_err(yk, yd), rel_err(yr, yd) * 1.05 + 1e-4) << "output vs float64";
  auto gk = grads_of(yk, gy, in_k), gr = grads_of(yr, gy, in_r);
  auto gd = grads_of(yd, gy.to(at::kDouble), in_d);
  expect_close(gk, gr, 2e-2, "gelu_feed_forward gradients");
  for (std::size_t i = 0; i < gk.size(); ++i)
    EXPECT_LE(rel_err(gk[i], gd[i]), rel_err(gr[i], gd[i]) * 1.05 + 1e-4)
        << "gradient #" << i << " vs float64";
  EXPECT_EQ(fused::lt_fallback_count(), fallbacks) << "cuBLASLt refused an epilogue";
}

TEST(FusedGpu, GeluFeedForward) {
  if (!have_gpu()) GTEST_SKIP() << "needs a CUDA build and a CUDA device";
  check_gelu_feed_forward(4, 390, 256, 1024, 256);
  check_gelu_feed_forward(1, 1000, 128, 448, 200);  // rows and widths off the usual tiles
}

// fp32 master weights (what ReplicatedLinear passes): the products run in bf16 on bf16 casts, the
// gradients come back in fp32, the weights' straight from their products. Against the cast-then-
// compute graph (autograd rounds those weight gradients to bf16 before casting them up) and both
// against float64 arithmetic on the same bf16-representable values: never farther from float64,
// and a linear layer's weight gradient clearly nearer.
void check_master_weights(std::int64_t rows, std::int64_t d, std::int64_t f) {
  auto x = at::randn({1, rows, d}, kBf16Cuda);
  auto w1 = (at::randn({f, d}, kF32Cuda) / std::sqrt(static_cast<double>(d)))
                .to(at::kBFloat16)
                .to(at::kFloat);  // values a bf16 cast keeps: both paths see the same operands
  auto b1 = (at::randn({f}, kF32Cuda) * 0.5).to(at::kBFloat16).to(at::kFloat);
  auto w2 = (at::randn({d, f}, kF32Cuda) / std::sqrt(static_cast<double>(f)))
                .to(at::kBFloat16)
                .to(at::kFloat);
  auto b2 = (at::randn({d}, kF32Cuda) * 0.5).to(at::kBFloat16).to(at::kFloat);
  // Output gradients: the feed-forward returns d features, the linear layer (w1, b1) f.
  auto gy_ffn = at::randn({1, rows, d}, kBf16Cuda), gy_linear = at::randn({1, rows, f}, kBf16Cuda);
  auto as_bf16 = [](const std::vector<at::Tensor>& in) {
    std::vector<at::Tensor> out{in[0]};
    for (std::size_t i = 1; i < in.size(); ++i) out.push_back(in[i].to(at::kBFloat16));
    return out;
  };
  for (bool ffn : {false, true}) {
    const std::string what = ffn ? "gelu_feed_forward (fp32 masters)" : "linear (fp32 masters)";
    auto run = [&](const std::vector<at::Tensor>& in, bool fused_path) {
      if (!ffn)
        return fused_path ? fused::linear(in[0], in[1], in[2]) : at::linear(in[0], in[1], in[2]);
      return fused_path ? fused::gelu_feed_forward(in[0], in[1], in[2], in[3], in[4])
                        : fused::reference::gelu_feed_forward(in[0], in[1], in[2], in[3], in[4]);
    };
    std::vector<at::Tensor> params =
        ffn ? std::vector<at::Tensor>{x, w1, b1, w2, b2} : std::vector<at::Tensor>{x, w1, b1};
    auto in_k = leaves(params), in_r = leaves(params);
    std::vector<at::Tensor> in_d;
    for (const auto& t : params) in_d.push_back(t.detach().to(at::kDouble).requires_grad_(true));
    const auto& gy = ffn ? gy_ffn : gy_linear;
    auto yk = run(in_k, true);
    auto yr = run(as_bf16(in_r), false);  // casts inside the graph: autograd casts back
    auto yd = run(in_d, false);
    EXPECT_EQ(yk.scalar_type(), at::kBFloat16) << what;
    expect_close({yk}, {yr}, 1e-2, what + " output");
    auto gk = grads_of(yk, gy, in_k), gr = grads_of(yr, gy, in_r);
    auto gd = grads_of(yd, gy.to(at::kDouble), in_d);
    expect_close(gk, gr, 2e-2, what + " gradients");
    for (std::size_t i = 1; i < gk.size(); ++i) {
      EXPECT_EQ(gk[i].scalar_type(), at::kFloat) << what << " gradient #" << i;
      EXPECT_LE(rel_err(gk[i], gd[i]), rel_err(gr[i], gd[i]) * 1.05 + 1e-5)
          << what << " gradient #" << i << " vs float64";
    }
    // The linear layer's operands are exact bf16 values on every path, so the cast path's weight
    // gradient error is its bf16 rounding (relative ~2^-9) and the fp32 one's only the
    // accumulation's. (Inside the feed-forward both paths round the hidden activations and their
    // gradient to bf16, which dominates.)
    if (!ffn) {
      EXPECT_LT(rel_err(gk[1], gd[1]), 0.1 * rel_err(gr[1], gd[1]))
          << what << " weight gradient vs float64";
    }
  }
}

TEST(FusedGpu, MasterWeightsGetFp32GradientsFromTheirProducts) {
  if (!have_gpu()) GTEST_SKIP() << "needs a CUDA build and a CUDA device";
  check_master_weights(1000, 256, 1024);
}

// fused::shared_input_linears (attention's q, k, v on one input) against one fused::linear per
// layer: the same outputs and parameter gradients bit for bit (the same products), the input
// gradient accumulated inside the products instead of summed afterwards: close, and no farther
// from float64 arithmetic on the same values.
TEST(FusedGpu, SharedInputLinearsMatchOneLinearPerLayer) {
  if (!have_gpu()) GTEST_SKIP() << "needs a CUDA build and a CUDA device";
  const std::int64_t d = 256;
  auto x = at::randn({4, 390, d}, kBf16Cuda);
  std::vector<at::Tensor> params, gys;
  for (int i = 0; i < 3; ++i) {
    params.push_back((at::randn({d, d}, kF32Cuda) * 0.05).to(at::kBFloat16).to(at::kFloat));
    params.push_back((at::randn({d}, kF32Cuda) * 0.5).to(at::kBFloat16).to(at::kFloat));
    gys.push_back(at::randn({4, 390, d}, kBf16Cuda));
  }
  std::vector<at::Tensor> all{x};
  all.insert(all.end(), params.begin(), params.end());
  auto in_k = leaves(all), in_r = leaves(all);
  std::vector<at::Tensor> in_d;
  for (const auto& t : all) in_d.push_back(t.detach().to(at::kDouble).requires_grad_(true));
  auto tail = [](const std::vector<at::Tensor>& v) {
    return std::vector<at::Tensor>(v.begin() + 1, v.end());
  };
  const auto yk = fused::shared_input_linears(in_k[0], tail(in_k));
  std::vector<at::Tensor> yr, yd;
  for (int i = 0; i < 3; ++i) {
    yr.push_back(fused::linear(in_r[0], in_r[1 + 2 * i], in_r[2 + 2 * i]));
    yd.push_back(at::linear(in_d[0], in_d[1 + 2 * i], in_d[2 + 2 * i]));
  }
  ASSERT_EQ(yk.size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(yk[i].equal(yr[i])) << "output " << i;
  auto gk = torch::autograd::grad(yk, in_k, gys);
  auto gr = torch::autograd::grad(yr, in_r, gys);
  std::vector<at::Tensor> gys_d;
  for (const auto& g : gys) gys_d.push_back(g.to(at::kDouble));
  auto gd = torch::autograd::grad(yd, in_d, gys_d);
  for (std::size_t i = 1; i < gk.size(); ++i) {
    EXPECT_EQ(gk[i].scalar_type(), at::kFloat) << "parameter gradient " << i;
    EXPECT_TRUE(gk[i].equal(gr[i])) << "parameter gradient " << i;
  }
  EXPECT_LT(rel_err(gk[0], gr[0]), 1e-2) << "input gradient";
  EXPECT_LE(rel_err(gk[0], gd[0]), rel_err(gr[0], gd[0]) * 1.05 + 1e-5)
      << "input gradient vs float64";
  // An output that does not reach the loss: no gradient for its layer, the others unchanged.
  auto in_u = leaves(all);
  const auto yu = fused::shared_input_linears(in_u[0], tail(in_u));
  auto gu = torch::autograd::grad({yu[0], yu[2]}, in_u, {gys[0], gys[2]}, std::nullopt, false,
                                  /*allow_unused=*/true);
  EXPECT_FALSE(gu[3].defined() && gu[3].abs().sum().item<double>() != 0) << "unused layer";
  EXPECT_TRUE(gu[1].equal(gr[1]));
}

// Kernels and reference inside one small model-like chain: gradients reach every input.
TEST(FusedGpu, NoHostSyncInsideKernels) {
  if (!have_gpu()) GTEST_SKIP() << "needs a CUDA build and a CUDA device";
  auto seg = segments({10, 22}, at::kCUDA);
  auto x = at::randn({1, 32, 256}, kBf16Cuda).requires_grad_(true);
  auto sc = at::zeros({2, 1, 256}, kF32Cuda).requires_grad_(true);
  auto y = fused::layer_norm_modulate(x, sc, sc, 1e-6, seg.get());
  auto z = fused::gated_residual(x, y, sc + 1, seg.get());
  z.to(at::kFloat).sum().backward();
  ASSERT_TRUE(x.grad().defined());
  ASSERT_TRUE(sc.grad().defined());
  EXPECT_GT(sc.grad().abs().sum().item<double>(), 0.0);
}

// Off the kernels' tensors (here the CPU) shared_input_linears is one linear per layer, in order;
// parameters come in pairs.
TEST(FusedReference, SharedInputLinearsAreOneLinearPerLayer) {
  at::manual_seed(3);
  auto x = at::randn({2, 5, 8});
  std::vector<at::Tensor> params = {at::randn({4, 8}), at::randn({4}), at::randn({6, 8}),
                                    at::randn({6})};
  const auto y = fused::shared_input_linears(x, params);
  ASSERT_EQ(y.size(), 2u);
  EXPECT_TRUE(y[0].equal(at::linear(x, params[0], params[1])));
  EXPECT_TRUE(y[1].equal(at::linear(x, params[2], params[3])));
  EXPECT_THROW(fused::shared_input_linears(x, {params[0]}), c10::Error);
}

// The reference (what the CPU and the model's plain path run) against float64 formulas.
TEST(FusedReference, MatchesFloat64Formulas) {
  at::manual_seed(1);
  const std::int64_t b = 2, s = 6, d = 16, hd = 8;
  auto x = at::randn({b, s, d});
  auto scale = at::randn({b, 1, d}), shift = at::randn({b, 1, d}), gate = at::randn({b, 1, d});
  auto y = at::randn({b, s, d});
  auto xd = x.to(at::kDouble);
  auto mean = xd.mean(-1, true), var = (xd - mean).pow(2).mean(-1, true);
  auto ln = (xd - mean) / (var + 1e-6).sqrt();
  auto want = ln * (1 + scale.to(at::kDouble)) + shift.to(at::kDouble);
  EXPECT_LT(rel_err(fused::layer_norm_modulate(x, scale, shift, 1e-6), want), 1e-5);
  EXPECT_LT(rel_err(fused::gated_residual(x, y, gate), xd + y.to(at::kDouble) * gate), 1e-6);

  // Packed: two samples of 4 and 8 tokens, each with its own modulation.
  auto seg = segments({4, 8}, at::kCPU);
  auto xp = at::randn({1, 12, d});
  auto got = fused::layer_norm_modulate(xp, scale, shift, 1e-6, seg.get());
  for (int i = 0; i < 2; ++i) {
    auto part = xp.narrow(1, i == 0 ? 0 : 4, i == 0 ? 4 : 8).to(at::kDouble);
    auto m = part.mean(-1, true), v = (part - m).pow(2).mean(-1, true);
    auto w =
        (part - m) / (v + 1e-6).sqrt() * (1 + scale[i].to(at::kDouble)) + shift[i].to(at::kDouble);
    EXPECT_LT(rel_err(got.narrow(1, i == 0 ? 0 : 4, i == 0 ? 4 : 8), w), 1e-5) << "sample " << i;
  }

  // RMSNorm + RoPE: pairs (2k, 2k+1) of each head rotated by the position's angle k.
  auto w = at::rand({d}) + 0.5;
  auto ang = at::rand({s, hd / 2}) * 6.28;
  auto r = fused::rms_norm_rope(x, w, ang.cos(), ang.sin(), hd, 1e-6);
  ASSERT_EQ(r.sizes(), (at::IntArrayRef{b, s, d / hd, hd}));
  auto nd = xd / (xd.pow(2).mean(-1, true) + 1e-6).sqrt() * w.to(at::kDouble);
  auto heads = nd.view({b, s, d / hd, hd / 2, 2});
  auto a = ang.to(at::kDouble).view({1, s, 1, hd / 2});
  auto e = heads.select(-1, 0), o = heads.select(-1, 1);
  auto rot = at::stack({e * a.cos() - o * a.sin(), e * a.sin() + o * a.cos()}, -1)
                 .view({b, s, d / hd, hd});
  EXPECT_LT(rel_err(r, rot), 1e-5);
}

// On the CPU (the reference path) the first output is x itself, and x's gradient is what reaches
// it through both outputs.
TEST(FusedReference, LayerNormModulateWithInputSumsBothGradients) {
  at::manual_seed(2);
  auto x = at::randn({2, 5, 16}).requires_grad_(true);
  auto scale = at::randn({2, 1, 16}), shift = at::randn({2, 1, 16});
  auto g_through = at::randn({2, 5, 16}), g_norm = at::randn({2, 5, 16});
  auto [through, n] = fused::layer_norm_modulate_with_input(x, scale, shift, 1e-6);
  EXPECT_TRUE(through.equal(x));
  EXPECT_TRUE(n.equal(fused::layer_norm_modulate(x, scale, shift, 1e-6)));
  const auto got = torch::autograd::grad({through, n}, {x}, {g_through, g_norm})[0];
  auto x2 = x.detach().clone().requires_grad_(true);
  const auto via_norm = torch::autograd::grad({fused::layer_norm_modulate(x2, scale, shift, 1e-6)},
                                              {x2}, {g_norm})[0];
  EXPECT_TRUE(got.allclose(g_through + via_norm, 1e-6, 1e-6));
  EXPECT_THROW(fused::layer_norm_modulate_with_input(x, at::randn({3, 1, 16}), shift, 1e-6),
               c10::Error);
}

TEST(FusedReference, RejectsMisshapedVectors) {
  auto x = at::randn({2, 4, 8});
  EXPECT_THROW(fused::layer_norm_modulate(x, at::randn({3, 1, 8}), at::randn({2, 1, 8}), 1e-6),
               c10::Error);
  EXPECT_THROW(fused::gated_residual(x, at::randn({2, 4, 8}), at::randn({2, 8})), c10::Error);
  EXPECT_THROW(fused::rms_norm_rope(x, at::ones({8}), {}, {}, 3, 1e-6), c10::Error);
}

}  // namespace
