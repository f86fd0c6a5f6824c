// Packed (variable-length) attention on the GPU: wanhost::default_attention with segments, served
// by a fused kernel (runs of equal segments as dense SDPA batches, else flash attention 2 varlen;
// WANHOST_TEST_PACKED_ATTENTION=flash forces the latter), against float32 attention computed
// segment by segment; outputs and q/k/v gradients.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include "gpu_test_util.hpp"
#include "wanhost/kit/layers.hpp"
#include "wanhost/parallel.hpp"

namespace {

using namespace wanhost;

using wanhost::testing::rel_err;

AttentionSegments make_segments(const std::vector<std::int64_t>& q_len,
                                const std::vector<std::int64_t>& kv_len) {
  AttentionSegments s;
  s.host_cu_q = {0};
  s.host_cu_kv = {0};
  for (std::size_t i = 0; i < q_len.size(); ++i) {
    s.host_cu_q.push_back(s.host_cu_q.back() + q_len[i]);
    s.host_cu_kv.push_back(s.host_cu_kv.back() + kv_len[i]);
  }
  auto dev = [](const std::vector<std::int64_t>& v) {
    std::vector<std::int32_t> i32(v.begin(), v.end());
    return at::tensor(i32, at::TensorOptions().dtype(at::kInt)).to(at::kCUDA);
  };
  s.cu_seqlens_q = dev(s.host_cu_q);
  s.cu_seqlens_kv = dev(s.host_cu_kv);
  s.max_q = *std::max_element(q_len.begin(), q_len.end());
  s.max_kv = *std::max_element(kv_len.begin(), kv_len.end());
  return s;
}

// fp32 reference: plain softmax attention per segment.
at::Tensor reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const AttentionSegments& s) {
  std::vector<at::Tensor> parts;
  for (std::size_t i = 0; i + 1 < s.host_cu_q.size(); ++i) {
    auto qi = q.narrow(1, s.host_cu_q[i], s.host_cu_q[i + 1] - s.host_cu_q[i]).transpose(1, 2);
    auto ki = k.narrow(1, s.host_cu_kv[i], s.host_cu_kv[i + 1] - s.host_cu_kv[i]).transpose(1, 2);
    auto vi = v.narrow(1, s.host_cu_kv[i], s.host_cu_kv[i + 1] - s.host_cu_kv[i]).transpose(1, 2);
    auto w = at::softmax(at::matmul(qi, ki.transpose(-1, -2)) / std::sqrt(double(q.size(-1))), -1);
    parts.push_back(at::matmul(w, vi).transpose(1, 2));
  }
  return at::cat(parts, 1);
}

void check(const std::vector<std::int64_t>& q_len, const std::vector<std::int64_t>& kv_len,
           std::int64_t heads, std::int64_t dh) {
  const auto s = make_segments(q_len, kv_len);
  const auto bf16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  auto q = at::randn({1, s.host_cu_q.back(), heads, dh}, bf16);
  auto k = at::randn({1, s.host_cu_kv.back(), heads, dh}, bf16);
  auto v = at::randn({1, s.host_cu_kv.back(), heads, dh}, bf16);
  auto gy = at::randn_like(q);
  std::vector<at::Tensor> in_k, in_r;
  for (const auto& t : {q, k, v}) {
    in_k.push_back(t.detach().clone().requires_grad_(true));
    in_r.push_back(t.detach().to(at::kFloat).requires_grad_(true));
  }
  AttentionArgs args;
  args.segments = &s;
  auto yk = default_attention(in_k[0], in_k[1], in_k[2], args);
  auto yr = reference(in_r[0], in_r[1], in_r[2], s);
  ASSERT_EQ(yk.sizes(), yr.sizes());
  EXPECT_EQ(yk.scalar_type(), at::kBFloat16);
  EXPECT_LT(rel_err(yk, yr), 1e-2) << "output";
  auto gk = torch::autograd::grad({yk}, in_k, {gy});
  auto gr = torch::autograd::grad({yr}, in_r, {gy.to(at::kFloat)});
  const char* names[] = {"dq", "dk", "dv"};
  for (int i = 0; i < 3; ++i) EXPECT_LT(rel_err(gk[i], gr[i]), 2e-2) << names[i];
}

TEST(PackedAttentionGpu, SelfAttentionUnevenSegments) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device";
  check({37, 128, 5, 200}, {37, 128, 5, 200}, 4, 128);
}

TEST(PackedAttentionGpu, CrossAttentionOtherKeyLengths) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device";
  check({390, 390, 17}, {512, 3, 512}, 12, 128);
}

TEST(PackedAttentionGpu, EqualSegmentsAsDenseBatch) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device";
  check({390, 390, 390}, {512, 512, 512}, 12, 128);
  check({100, 100}, {100, 100}, 4, 128);
}

// A pack of mixed sizes grouped by size (as the collators order it): one dense batch a run.
TEST(PackedAttentionGpu, RunsOfEqualSegments) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device";
  check({390, 390, 390, 400, 400, 384}, {390, 390, 390, 400, 400, 384}, 12, 128);
  check({390, 390, 390, 400, 400, 384}, {512, 512, 512, 512, 512, 512}, 12, 128);
}

TEST(PackedAttentionGpu, HeadDim64) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device";
  check({64, 100}, {64, 100}, 2, 64);
}

}  // namespace
