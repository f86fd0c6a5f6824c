// The FP8 arithmetic of the kit's FP8 layers (fp8_arithmetic.hpp). The products go through
// at::_scaled_mm, whose scales are dequantisation factors: out = (a * scale_a) (b * scale_b), a
// row-major, b column-major. On a GPU one kernel (kernels/fp8_kernels.cu) scales, rounds and
// writes an operand row-major and transposed in one pass; elsewhere ATen does the same
// arithmetic in several.
#include "fp8_arithmetic.hpp"

#include <atomic>
#include <cstdint>
#include <limits>
#include <optional>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "wanhost/kit/fp8.hpp"
#include "wanhost/log.hpp"

#if WANHOST_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>

#include "fp8_kernels.hpp"
#include "lt_matmul.hpp"
#include "slot_sums.hpp"
#endif

namespace wanhost {
namespace fp8_arithmetic {
namespace {

constexpr double kE4m3Max = 448.0, kE5m2Max = 57344.0;
// An all-zero operand keeps a finite scale (its quantised values are zeros either way).
constexpr double kMinAmax = 1e-12;

at::ScalarType format(bool gradient) {
  return gradient ? at::kFloat8_e5m2 : at::kFloat8_e4m3fn;
}

std::int64_t round_up(std::int64_t n, std::int64_t m) {
  return (n + m - 1) / m * m;
}

// rows [M, C] -> [C, round_up(M, 16)] (transposed, zero rows appended), byte-wise so that no
// FP8 kernel of ATen is needed.
at::Tensor transposed_padded(const at::Tensor& q) {
  const std::int64_t m = q.size(0), padded = round_up(m, kAlign);
  at::Tensor bytes = q.view(at::kByte);
  if (padded != m) bytes = at::constant_pad_nd(bytes, {0, 0, 0, padded - m}, 0);
  return bytes.t().contiguous().view(q.scalar_type());
}

at::Tensor applied(const at::Tensor& x, const Prologue& p) {
  switch (p.f) {
    case Elementwise::none:
      return x;
    case Elementwise::gelu:
      return at::gelu(x, "tanh");
    case Elementwise::gelu_grad:
      return at::gelu_backward(x, p.aux, "tanh");
  }
  return x;
}

double top_of(bool gradient) {
  return gradient ? kE5m2Max : kE4m3Max;
}

// The dequantisation scale max|x| / (the format's largest value), fp32, on x's device. (On a GPU
// fp8_kernels.cu makes it from its own max|x| with the same arithmetic.)
at::Tensor scale_of(const at::Tensor& x, bool gradient) {
  // max|x| in one reduction (the infinity norm), in fp32.
  const at::Tensor amax = at::linalg_vector_norm(x, std::numeric_limits<double>::infinity(),
                                                 std::nullopt, false, at::kFloat);
  return amax.clamp_min(kMinAmax) / top_of(gradient);
}

#if WANHOST_WITH_CUDA
// The one-pass kernel takes contiguous fp32/bf16 matrices with an even column count, starting at
// an address of a whole element pair (it reads pairs: float2, __nv_bfloat162).
bool kernel_takes(const at::Tensor& x) {
  return x.is_cuda() && x.dim() == 2 && x.is_contiguous() && x.size(0) > 0 && x.size(1) % 2 == 0 &&
         (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16) &&
         reinterpret_cast<std::uintptr_t>(x.data_ptr()) % (2 * x.element_size()) == 0;
}

// A prologue on the kernels: bf16 x, and for gelu_grad an aux the kernels read alike.
bool kernel_takes(const at::Tensor& x, const Prologue& p) {
  if (!kernel_takes(x)) return false;
  if (p.f == Elementwise::none) return true;
  if (x.scalar_type() != at::kBFloat16) return false;
  return p.f != Elementwise::gelu_grad ||
         (p.aux.sizes() == x.sizes() && p.aux.device() == x.device() && kernel_takes(p.aux) &&
          p.aux.scalar_type() == at::kBFloat16);
}

kernels::Fp8Prologue kernel_prologue(Elementwise f) {
  switch (f) {
    case Elementwise::gelu:
      return kernels::Fp8Prologue::gelu;
    case Elementwise::gelu_grad:
      return kernels::Fp8Prologue::gelu_grad;
    case Elementwise::none:
      break;
  }
  return kernels::Fp8Prologue::none;
}

Quantized quantize_on_gpu(const at::Tensor& x, bool gradient, Outputs want, const Prologue& p,
                          const std::optional<fp8_history::SiteUse>& site) {
  Quantized r;
  // max|x| as partial maxima of one pass with 16-byte loads; the scale and its reciprocal are
  // made inside the cast kernel from them (no reduction of ATen's, no clamp, division and
  // reciprocal kernels of their own). Delayed scaling from the history: no such pass at all.
  const auto source =
      x.scalar_type() == at::kFloat ? kernels::Fp8Source::f32 : kernels::Fp8Source::bf16;
  const auto stream = at::cuda::getCurrentCUDAStream(x.device().index()).stream();
  const auto prologue = kernel_prologue(p.f);
  const void* aux = p.f == Elementwise::gelu_grad ? p.aux.data_ptr() : nullptr;
  kernels::Fp8Scale scale;
  at::Tensor partials_of_amax;
  if (!site || !site->from_history) {
    partials_of_amax =
        at::empty({kernels::fp8_amax_blocks(x.numel())}, x.options().dtype(at::kFloat));
    const cudaError_t amax_err = kernels::fp8_amax_partials(
        source, x.data_ptr(), x.numel(), partials_of_amax.data_ptr<float>(), stream, prologue, aux);
    TORCH_CHECK(amax_err == cudaSuccess, "fp8: the max|x| kernel failed on x ", x.sizes(), ": ",
                cudaGetErrorString(amax_err));
    scale.amax_partials = partials_of_amax.data_ptr<float>();
    scale.amax_count = static_cast<int>(partials_of_amax.numel());
  }
  if (site) {
    scale.history = site->ring.data_ptr<float>();
    scale.history_len = static_cast<int>(site->ring.numel());
    scale.step = site->step.data_ptr<std::int64_t>();
  }
  r.scale = at::empty({}, x.options().dtype(at::kFloat));
  scale.min_amax = static_cast<float>(kMinAmax);
  scale.inv_top = static_cast<float>(1.0 / top_of(gradient));  // ATen's division by a host scalar
  scale.scale_out = r.scale.data_ptr<float>();
  const std::int64_t m = x.size(0), c = x.size(1), padded = round_up(m, kAlign);
  const auto options = x.options().dtype(format(gradient));
  if (want.rows) r.q = at::empty({m, c}, options);
  if (want.transposed) r.qt = at::empty({c, padded}, options);
  at::Tensor partials;  // per 64 rows, summed below in a fixed order
  if (want.column_sums)
    partials = at::empty({(padded + kernels::kFp8CastTileRows - 1) / kernels::kFp8CastTileRows, c},
                         x.options().dtype(at::kFloat));
  const cudaError_t err = kernels::fp8_cast_transpose(
      source, x.data_ptr(), m, c, scale,
      gradient ? kernels::Fp8Format::e5m2 : kernels::Fp8Format::e4m3,
      want.rows ? r.q.data_ptr() : nullptr, want.transposed ? r.qt.data_ptr() : nullptr, padded,
      want.column_sums ? partials.data_ptr<float>() : nullptr, stream, prologue, aux);
  TORCH_CHECK(err == cudaSuccess, "fp8: the cast kernel failed on x ", x.sizes(), ": ",
              cudaGetErrorString(err));
  if (want.column_sums) r.column_sums = slot_sums::summed(partials, 0, 1);
  return r;
}
#endif

std::atomic<std::int64_t> g_summed_input_gradients{0};
std::atomic<std::int64_t> g_summed_input_gradients_in_products{0};

#if WANHOST_WITH_CUDA
// so_far += dy W in so_far's memory through cuBLASLt (lt_fp8_matmul): true when it did, false
// (nothing written) when cuBLASLt has no algorithm for the case (said once).
bool added_by_cublaslt(const at::Tensor& so_far, const Quantized& g, const at::Tensor& wqt,
                       const at::Tensor& w_scale) {
  if (!so_far.is_contiguous() || so_far.scalar_type() != at::kBFloat16 || !g.q.is_contiguous() ||
      !wqt.is_contiguous())
    return false;
  // Column-major: so_far^T [in, M] = (W^T [in, out], stored as W^T's rows: A^T) (dy^T [out, M]).
  kernels::LtFp8Matmul p;
  p.m = wqt.size(0), p.n = g.q.size(0), p.k = wqt.size(1);
  p.a = wqt.data_ptr(), p.lda = p.k, p.a_e5m2 = false;
  p.b = g.q.data_ptr(), p.ldb = p.k, p.b_e5m2 = true;
  p.a_scale = w_scale.data_ptr<float>(), p.b_scale = g.scale.data_ptr<float>();
  p.d = so_far.data_ptr(), p.ldd = p.m;
  p.accumulate = true;
  p.fast_accumulation = fast_input_gradients();
  const auto status = kernels::lt_fp8_matmul(
      at::cuda::getCurrentCUDABlasLtHandle(), p, at::cuda::getCUDABlasLtWorkspace(),
      at::cuda::getCUDABlasLtWorkspaceSize(),
      at::cuda::getCurrentCUDAStream(so_far.device().index()).stream());
  if (status == CUBLAS_STATUS_NOT_SUPPORTED) {
    static std::atomic<bool> said{false};
    if (!said.exchange(true))
      logger()->warn(
          "FP8: cuBLASLt has no algorithm adding an input-gradient product of {} x {} x {} into "
          "its output; such gradients are summed by a separate pass (slower)",
          p.m, p.n, p.k);
    return false;
  }
  TORCH_CHECK(status == CUBLAS_STATUS_SUCCESS, "fp8: cuBLASLt's input-gradient product (", p.m,
              " x ", p.n, " x ", p.k, "): cuBLAS status ", static_cast<int>(status));
  return true;
}
#endif

}  // namespace

bool fast_input_gradients() {
  return fp8_fast_accumulation() != Fp8FastAccumulation::forward;
}
bool fast_weight_gradients() {
  return fp8_fast_accumulation() == Fp8FastAccumulation::all;
}

Quantized quantize(const at::Tensor& x, bool gradient, Outputs want, const Prologue& p,
                   const std::optional<fp8_history::SiteUse>& site) {
  at::NoGradGuard no_grad;
  if (site && site->from_history) fp8_history::count_delayed_quantization();
#if WANHOST_WITH_CUDA
  if (kernel_takes(x, p)) return quantize_on_gpu(x, gradient, want, p, site);
#endif
  if (p.f != Elementwise::none) return quantize(applied(x, p), gradient, want, {}, site);
  Quantized r;
  r.scale = site && site->from_history
                ? fp8_history::history_scale(*site, kMinAmax, top_of(gradient))
                : scale_of(x, gradient);
  at::Tensor scaled = x.to(at::kFloat) * r.scale.reciprocal();
  // ATen's conversion makes NaN of what lies beyond the format; the kernel saturates, but an
  // infinite x stays non-finite (NaN): an overflow of the model must not be clamped away.
  if (site && site->from_history)
    scaled = scaled.clamp(-top_of(gradient), top_of(gradient))
                 .masked_fill(x.isinf(), std::numeric_limits<double>::quiet_NaN());
  if (site) fp8_history::record_amax(*site, x);
  const at::Tensor q = scaled.to(format(gradient));
  if (want.rows) r.q = q;
  if (want.transposed) r.qt = transposed_padded(q);
  if (want.column_sums) r.column_sums = x.sum(0, false, at::kFloat);
  return r;
}

at::Tensor scaled_mm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& a_scale,
                     const at::Tensor& b_scale, const at::Tensor& bias, at::ScalarType out_dtype,
                     bool fast_accumulation) {
  if (a.is_cuda())
    return at::_scaled_mm(a, b, a_scale, b_scale,
                          bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt,
                          std::nullopt, out_dtype, fast_accumulation);
  at::Tensor out = at::mm(a.to(at::kFloat) * a_scale, b.to(at::kFloat) * b_scale);
  if (bias.defined()) out = out + bias.to(at::kFloat);
  return out.to(out_dtype);
}

at::Tensor input_gradient(const Quantized& g, const at::Tensor& wqt, const at::Tensor& w_scale,
                          at::ScalarType dtype, const at::Tensor& so_far) {
  if (!so_far.defined())
    return scaled_mm(g.q, wqt.t(), g.scale, w_scale, {}, dtype, fast_input_gradients());
  g_summed_input_gradients.fetch_add(1);
#if WANHOST_WITH_CUDA
  if (so_far.is_cuda() && added_by_cublaslt(so_far, g, wqt, w_scale)) {
    g_summed_input_gradients_in_products.fetch_add(1);
    return so_far;
  }
#endif
  return (scaled_mm(g.q, wqt.t(), g.scale, w_scale, {}, at::kFloat, fast_input_gradients()) +
          so_far.to(at::kFloat))
      .to(dtype);
}

}  // namespace fp8_arithmetic

using fp8_arithmetic::g_summed_input_gradients;
using fp8_arithmetic::g_summed_input_gradients_in_products;

std::int64_t fp8_summed_input_gradients() {
  return g_summed_input_gradients.load();
}

std::int64_t fp8_summed_input_gradients_in_products() {
  return g_summed_input_gradients_in_products.load();
}

}  // namespace wanhost
