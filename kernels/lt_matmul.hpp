// bf16 matrix products through cuBLASLt with the epilogues that ATen's linear does not expose:
// GELU with its pre-activation kept for backward (GELU_AUX_BIAS), the GELU gradient applied to a
// product (DGELU), and the bias gradient summed from the weight-gradient product's B operand
// (BGRADB). Each saves a pass over a token-sized tensor that would otherwise be a separate
// kernel, unless cuBLASLt runs the epilogue as a kernel of its own (it does for BGRADB on H100/
// H200; docs/performance.md).
//
// Column-major cuBLAS semantics (what the caller maps its row-major tensors onto):
//   D[m, n] = op(A)[m, k] * op(B)[k, n], all bf16, fp32 accumulation; A is stored [k, m] when
//   trans_a (else [m, k]), B [n, k] when trans_b (else [k, n]); leading dimensions in elements.
// The GELU is the tanh approximation (torch.nn.functional.gelu(approximate="tanh")).
#pragma once

#include <cstddef>
#include <cstdint>

#include <cublasLt.h>
#include <cuda_runtime_api.h>

namespace wanhost::kernels {

enum class LtEpilogue {
  GeluAuxBias,  // aux = AB + bias[m]; D = gelu(aux)            (bias: input; aux: output)
  DGelu,        // D = AB * gelu'(aux)                          (aux: input)
  BGradB,       // D = AB; bias[n] = sum_k op(B)                (bias: output, bf16 [n])
};
constexpr int kLtEpilogues = 3;  // the number of LtEpilogue values (tables indexed by them)

struct LtMatmul {
  bool trans_a = false, trans_b = false;
  std::int64_t m = 0, n = 0, k = 0;
  const void* a = nullptr;
  std::int64_t lda = 0;
  const void* b = nullptr;
  std::int64_t ldb = 0;
  void* d = nullptr;
  std::int64_t ldd = 0;
  LtEpilogue epilogue = LtEpilogue::DGelu;
  void* bias = nullptr;
  void* aux = nullptr;  // [m, n] column-major, leading dimension ldaux (a multiple of 8)
  std::int64_t ldaux = 0;
};

// Runs the product on `stream`. Returns CUBLAS_STATUS_NOT_SUPPORTED, before touching any output,
// when cuBLASLt offers no algorithm for this combination (the caller then computes it another
// way). Algorithm choices are cached per shape, layout, epilogue and pointer alignment.
cublasStatus_t lt_matmul(cublasLtHandle_t handle, const LtMatmul& p, void* workspace,
                         std::size_t workspace_bytes, cudaStream_t stream);

// An FP8 product that can add into its output (what at::_scaled_mm cannot: its output is new):
//   D[m, n] = scale_a * scale_b * A^T[m, k] B[k, n] + (accumulate ? D : 0),
// A stored [k, m] and B [k, n] (column-major; the "TN" layout Hopper's FP8 products take), each
// E4M3 or E5M2, their dequantisation scales fp32 on the device; D bf16, fp32 accumulation (the
// sum with D's old value in fp32, rounded once). The FP8 layers that read one input sum its
// gradient this way (sdk/kit/src/fp8.cpp) instead of adding bf16 products in passes of their own.
struct LtFp8Matmul {
  std::int64_t m = 0, n = 0, k = 0;
  const void* a = nullptr;
  bool a_e5m2 = false;
  std::int64_t lda = 0;
  const void* b = nullptr;
  bool b_e5m2 = false;
  std::int64_t ldb = 0;
  const float* a_scale = nullptr;
  const float* b_scale = nullptr;
  void* d = nullptr;
  std::int64_t ldd = 0;
  bool accumulate = false;
  // Hopper's fast FP8 accumulation (at::_scaled_mm's use_fast_accum).
  bool fast_accumulation = false;
};
// As lt_matmul: CUBLAS_STATUS_NOT_SUPPORTED before touching D when cuBLASLt has no algorithm.
cublasStatus_t lt_fp8_matmul(cublasLtHandle_t handle, const LtFp8Matmul& p, void* workspace,
                             std::size_t workspace_bytes, cudaStream_t stream);

}  // namespace wanhost::kernels
