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

}  // namespace wanhost::kernels
