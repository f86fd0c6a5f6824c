// cuBLASLt products with epilogues (lt_matmul.hpp). The heuristic query costs tens of
// microseconds of host time, so its answer is cached per problem; descriptors are cheap host
// objects and are made per call (they hold the call's pointers).
#include "lt_matmul.hpp"

#include <array>
#include <map>
#include <memory>
#include <mutex>
#include <utility>

namespace wanhost::kernels {
namespace {

// Largest power of two (up to 256) dividing the address: the alignment cuBLASLt's heuristic sees.
int alignment(const void* p) {
  const auto v = reinterpret_cast<std::uintptr_t>(p);
  int a = 1;
  while (a < 256 && v % (2 * a) == 0) a *= 2;
  return a;
}

cublasLtEpilogue_t to_lt(LtEpilogue e) {
  switch (e) {
    case LtEpilogue::GeluAuxBias:
      return CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
    case LtEpilogue::DGelu:
      return CUBLASLT_EPILOGUE_DGELU;
    case LtEpilogue::BGradB:
      return CUBLASLT_EPILOGUE_BGRADB;
  }
  return CUBLASLT_EPILOGUE_DEFAULT;
}

bool uses_aux(LtEpilogue e) {
  return e == LtEpilogue::GeluAuxBias || e == LtEpilogue::DGelu;
}

// RAII holders of the cuBLASLt descriptors of one call.
struct Desc {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~Desc() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

#define LT_TRY(call)                                      \
  do {                                                    \
    const cublasStatus_t status_ = (call);                \
    if (status_ != CUBLAS_STATUS_SUCCESS) return status_; \
  } while (0)

// The workspace and the alignments of A, B and D (C is D) the heuristic is to assume.
cublasStatus_t prefer(Desc& d, std::size_t workspace_bytes, const void* a, const void* b,
                      const void* out) {
  LT_TRY(cublasLtMatmulPreferenceCreate(&d.pref));
  LT_TRY(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                              &workspace_bytes, sizeof(workspace_bytes)));
  const std::uint32_t align_a = alignment(a), align_b = alignment(b), align_d = alignment(out);
  LT_TRY(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                              &align_a, sizeof(align_a)));
  LT_TRY(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                              &align_b, sizeof(align_b)));
  LT_TRY(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                              &align_d, sizeof(align_d)));
  LT_TRY(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                              &align_d, sizeof(align_d)));
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t describe(const LtMatmul& p, std::size_t workspace_bytes, Desc& d) {
  LT_TRY(cublasLtMatmulDescCreate(&d.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = p.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t tb = p.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  LT_TRY(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  LT_TRY(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  const cublasLtEpilogue_t epilogue = to_lt(p.epilogue);
  LT_TRY(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue,
                                        sizeof(epilogue)));
  LT_TRY(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &p.bias,
                                        sizeof(p.bias)));
  const cudaDataType_t bf16 = CUDA_R_16BF;
  LT_TRY(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bf16,
                                        sizeof(bf16)));
  if (uses_aux(p.epilogue)) {
    LT_TRY(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &p.aux,
                                          sizeof(p.aux)));
    const std::int64_t ld = p.ldaux;
    LT_TRY(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld,
                                          sizeof(ld)));
    LT_TRY(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE, &bf16,
                                          sizeof(bf16)));
  }
  const auto rows = [](bool t, std::int64_t r, std::int64_t c) { return t ? c : r; };
  LT_TRY(cublasLtMatrixLayoutCreate(&d.a, CUDA_R_16BF, rows(p.trans_a, p.m, p.k),
                                    rows(p.trans_a, p.k, p.m), p.lda));
  LT_TRY(cublasLtMatrixLayoutCreate(&d.b, CUDA_R_16BF, rows(p.trans_b, p.k, p.n),
                                    rows(p.trans_b, p.n, p.k), p.ldb));
  LT_TRY(cublasLtMatrixLayoutCreate(&d.d, CUDA_R_16BF, p.m, p.n, p.ldd));
  return prefer(d, workspace_bytes, p.a, p.b, p.d);
}

// The first heuristic answer for a problem (C is D), asked once per key: the product's kind (its
// first element), its fields (zeros after the last one), then the alignments and workspace
// (run_cached's). A fixed array: no allocation per product.
constexpr std::size_t kKeyFields = 13, kKeySize = kKeyFields + 4;
using Key = std::array<std::int64_t, kKeySize>;

struct Choice {
  bool found = false;
  cublasLtMatmulAlgo_t algo{};
};

Choice choice_for(const Key& key, cublasLtHandle_t handle, const Desc& d) {
  static std::mutex mutex;
  static std::map<std::pair<Key, cublasLtHandle_t>, Choice> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find({key, handle});
  if (it == cache.end()) {
    cublasLtMatmulHeuristicResult_t result{};
    int count = 0;
    const auto status = cublasLtMatmulAlgoGetHeuristic(handle, d.op, d.a, d.b, d.d, d.d, d.pref, 1,
                                                       &result, &count);
    Choice c;
    c.found = status == CUBLAS_STATUS_SUCCESS && count > 0 && result.state == CUBLAS_STATUS_SUCCESS;
    if (c.found) c.algo = result.algo;
    it = cache.emplace(std::make_pair(key, handle), c).first;
  }
  return it->second;
}

cublasStatus_t describe_fp8(const LtFp8Matmul& p, std::size_t workspace_bytes, Desc& d) {
  LT_TRY(cublasLtMatmulDescCreate(&d.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  LT_TRY(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  LT_TRY(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  LT_TRY(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &p.a_scale,
                                        sizeof(p.a_scale)));
  LT_TRY(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &p.b_scale,
                                        sizeof(p.b_scale)));
  const std::int8_t fast = p.fast_accumulation ? 1 : 0;
  LT_TRY(
      cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof(fast)));
  const auto fp8 = [](bool e5m2) { return e5m2 ? CUDA_R_8F_E5M2 : CUDA_R_8F_E4M3; };
  LT_TRY(cublasLtMatrixLayoutCreate(&d.a, fp8(p.a_e5m2), p.k, p.m, p.lda));
  LT_TRY(cublasLtMatrixLayoutCreate(&d.b, fp8(p.b_e5m2), p.k, p.n, p.ldb));
  LT_TRY(cublasLtMatrixLayoutCreate(&d.d, CUDA_R_16BF, p.m, p.n, p.ldd));
  return prefer(d, workspace_bytes, p.a, p.b, p.d);
}

// D = A B + beta D, the product `d` describes, with the algorithm cached for `key` (the key
// completed with the alignments the heuristic saw and the workspace); NOT_SUPPORTED when there
// is none.
cublasStatus_t run_cached(cublasLtHandle_t handle, const Desc& d, Key key, const void* a,
                          const void* b, void* out, float beta, void* workspace,
                          std::size_t workspace_bytes, cudaStream_t stream) {
  key[kKeyFields] = alignment(a), key[kKeyFields + 1] = alignment(b);
  key[kKeyFields + 2] = alignment(out);
  key[kKeyFields + 3] = static_cast<std::int64_t>(workspace_bytes);
  const Choice choice = choice_for(key, handle, d);
  if (!choice.found) return CUBLAS_STATUS_NOT_SUPPORTED;
  const float alpha = 1.0f;
  return cublasLtMatmul(handle, d.op, &alpha, a, d.a, b, d.b, &beta, out, d.d, out, d.d,
                        &choice.algo, workspace, workspace_bytes, stream);
}

}  // namespace

cublasStatus_t lt_matmul(cublasLtHandle_t handle, const LtMatmul& p, void* workspace,
                         std::size_t workspace_bytes, cudaStream_t stream) {
  if (p.m <= 0 || p.n <= 0 || p.k <= 0 || (uses_aux(p.epilogue) && p.ldaux % 8 != 0))
    return CUBLAS_STATUS_INVALID_VALUE;
  Desc d;
  LT_TRY(describe(p, workspace_bytes, d));
  const Key key{0,
                p.trans_a,
                p.trans_b,
                p.m,
                p.n,
                p.k,
                p.lda,
                p.ldb,
                p.ldd,
                p.ldaux,
                static_cast<int>(p.epilogue),
                alignment(p.bias),
                alignment(p.aux)};
  return run_cached(handle, d, key, p.a, p.b, p.d, 0.0f, workspace, workspace_bytes, stream);
}

cublasStatus_t lt_fp8_matmul(cublasLtHandle_t handle, const LtFp8Matmul& p, void* workspace,
                             std::size_t workspace_bytes, cudaStream_t stream) {
  if (p.m <= 0 || p.n <= 0 || p.k <= 0 || p.a_scale == nullptr || p.b_scale == nullptr)
    return CUBLAS_STATUS_INVALID_VALUE;
  Desc d;
  LT_TRY(describe_fp8(p, workspace_bytes, d));
  const Key key{
      1, p.m, p.n, p.k, p.lda, p.ldb, p.ldd, p.a_e5m2, p.b_e5m2, p.accumulate, p.fast_accumulation};
  return run_cached(handle, d, key, p.a, p.b, p.d, p.accumulate ? 1.0f : 0.0f, workspace,
                    workspace_bytes, stream);
}

}  // namespace wanhost::kernels
