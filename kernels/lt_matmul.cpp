// cuBLASLt products with epilogues (lt_matmul.hpp). The heuristic query costs tens of
// microseconds of host time, so its answer is cached per problem; descriptors are cheap host
// objects and are made per call (they hold the call's pointers).
#include "lt_matmul.hpp"

#include <map>
#include <memory>
#include <mutex>
#include <tuple>

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
  LT_TRY(cublasLtMatmulPreferenceCreate(&d.pref));
  LT_TRY(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                              &workspace_bytes, sizeof(workspace_bytes)));
  const std::uint32_t align_a = alignment(p.a), align_b = alignment(p.b), align_d = alignment(p.d);
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

using Key = std::tuple<bool, bool, std::int64_t, std::int64_t, std::int64_t, std::int64_t,
                       std::int64_t, std::int64_t, std::int64_t, int, int, int, int, int, int,
                       std::size_t, cublasLtHandle_t>;

struct Choice {
  bool found = false;
  cublasLtMatmulAlgo_t algo{};
};

}  // namespace

cublasStatus_t lt_matmul(cublasLtHandle_t handle, const LtMatmul& p, void* workspace,
                         std::size_t workspace_bytes, cudaStream_t stream) {
  if (p.m <= 0 || p.n <= 0 || p.k <= 0 || (uses_aux(p.epilogue) && p.ldaux % 8 != 0))
    return CUBLAS_STATUS_INVALID_VALUE;
  Desc d;
  LT_TRY(describe(p, workspace_bytes, d));

  static std::mutex mutex;
  static std::map<Key, Choice> cache;
  const Key key{p.trans_a,
                p.trans_b,
                p.m,
                p.n,
                p.k,
                p.lda,
                p.ldb,
                p.ldd,
                p.ldaux,
                static_cast<int>(p.epilogue),
                alignment(p.a),
                alignment(p.b),
                alignment(p.d),
                alignment(p.bias),
                alignment(p.aux),
                workspace_bytes,
                handle};
  Choice choice;
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = cache.find(key);
    if (it == cache.end()) {
      cublasLtMatmulHeuristicResult_t result{};
      int count = 0;
      const auto status = cublasLtMatmulAlgoGetHeuristic(handle, d.op, d.a, d.b, d.d, d.d, d.pref,
                                                         1, &result, &count);
      Choice c;
      c.found =
          status == CUBLAS_STATUS_SUCCESS && count > 0 && result.state == CUBLAS_STATUS_SUCCESS;
      if (c.found) c.algo = result.algo;
      it = cache.emplace(key, c).first;
    }
    choice = it->second;
  }
  if (!choice.found) return CUBLAS_STATUS_NOT_SUPPORTED;
  const float alpha = 1.0f, beta = 0.0f;
  return cublasLtMatmul(handle, d.op, &alpha, p.a, d.a, p.b, d.b, &beta, p.d, d.d, p.d, d.d,
                        &choice.algo, workspace, workspace_bytes, stream);
}

}  // namespace wanhost::kernels
