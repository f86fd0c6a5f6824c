// wanhost::fused: the reference arithmetic (ATen) and, in CUDA builds, autograd functions around
// the kernels of kernels/fused_kernels.cu. The backward kernels return partial sums (per 128 rows)
// of the parameter gradients, summed here over blocks in a fixed order (deterministic).
#include "wanhost/fused.hpp"

#include <ATen/ATen.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/Exception.h>

#if WANHOST_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/csrc/autograd/custom_function.h>

#include "fused_kernels.hpp"
#endif

namespace wanhost::fused {
namespace {

void check_vectors(const at::Tensor& x, const at::Tensor& v, std::int64_t samples, const char* op,
                   const char* name) {
  TORCH_CHECK(x.dim() == 3, "fused::", op, ": tokens must be [B, S, D], got ", x.sizes());
  TORCH_CHECK(v.dim() == 3 && v.size(0) == samples && v.size(1) == 1 && v.size(2) == x.size(2),
              "fused::", op, ": ", name, " must be [", samples, ", 1, ", x.size(2), "], got ",
              v.sizes());
}

std::int64_t samples_of(const at::Tensor& x, const AttentionSegments* seg) {
  if (seg == nullptr) return x.size(0);
  TORCH_CHECK(x.size(0) == 1 && seg->host_cu_q.size() >= 2 && seg->host_cu_q.front() == 0 &&
                  seg->host_cu_q.back() == x.size(1),
              "fused: packed tokens must be [1, N, D] with segments covering N = ", x.size(1));
  return static_cast<std::int64_t>(seg->host_cu_q.size()) - 1;
}

// v [n, 1, D] applied to the tokens of each sample: dense by broadcasting, packed per segment.
template <typename F>
at::Tensor per_sample(const at::Tensor& tokens, const AttentionSegments* seg, F&& f) {
  if (seg == nullptr) return f(tokens, at::indexing::Slice());
  std::vector<at::Tensor> parts;
  const auto& cu = seg->host_cu_q;
  for (std::size_t i = 0; i + 1 < cu.size(); ++i)
    parts.push_back(f(tokens.narrow(1, cu[i], cu[i + 1] - cu[i]), static_cast<std::int64_t>(i)));
  return at::cat(parts, 1);
}

at::Tensor pick(const at::Tensor& v, const at::indexing::Slice&) {
  return v;
}
at::Tensor pick(const at::Tensor& v, std::int64_t i) {
  return v[i];
}

}  // namespace

namespace reference {

at::Tensor layer_norm_modulate(const at::Tensor& x, const at::Tensor& scale,
                               const at::Tensor& shift, double eps,
                               const AttentionSegments* segments) {
  const auto n = samples_of(x, segments);
  check_vectors(x, scale, n, "layer_norm_modulate", "scale");
  check_vectors(x, shift, n, "layer_norm_modulate", "shift");
  auto normed = at::layer_norm(x.to(at::kFloat), {x.size(-1)}, {}, {}, eps);
  return per_sample(
             normed, segments,
             [&](const at::Tensor& t, auto i) { return t * (1 + pick(scale, i)) + pick(shift, i); })
      .to(x.scalar_type());
}

at::Tensor gated_residual(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate,
                          const AttentionSegments* segments) {
  const auto n = samples_of(x, segments);
  check_vectors(x, gate, n, "gated_residual", "gate");
  TORCH_CHECK(x.sizes() == y.sizes(), "fused::gated_residual: x ", x.sizes(), " and y ", y.sizes(),
              " differ");
  auto update =
      per_sample(y, segments, [&](const at::Tensor& t, auto i) { return t * pick(gate, i); });
  return (x.to(at::kFloat) + update).to(x.scalar_type());
}

at::Tensor rms_norm_rope(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& cos,
                         const at::Tensor& sin, std::int64_t head_dim, double eps) {
  TORCH_CHECK(x.dim() == 3 && head_dim > 0 && x.size(2) % head_dim == 0 && head_dim % 2 == 0,
              "fused::rms_norm_rope: x must be [B, S, H * head_dim] with an even head_dim, got ",
              x.sizes(), " and head_dim ", head_dim);
  at::Tensor y;
  {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    y = at::rms_norm(x, {x.size(-1)}, weight.to(x.scalar_type()), eps);
  }
  y = y.unflatten(-1, {-1, head_dim});
  if (!cos.defined()) return y;
  const auto half = head_dim / 2;
  TORCH_CHECK(cos.numel() == x.size(1) * half && sin.numel() == cos.numel(),
              "fused::rms_norm_rope: reference path needs one table row per token position (",
              x.size(1), " x ", half, "), got ", cos.numel(), " values");
  const auto c = cos.reshape({1, x.size(1), 1, half}), s = sin.reshape({1, x.size(1), 1, half});
  auto pairs = y.unflatten(-1, {-1, 2});
  auto x1 = pairs.select(-1, 0), x2 = pairs.select(-1, 1);
  return at::stack({x1 * c - x2 * s, x1 * s + x2 * c}, -1).flatten(-2).to(x.scalar_type());
}

}  // namespace reference

#if WANHOST_WITH_CUDA
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Row grouping of a token tensor, as the kernels and the saved context hold it.
struct Rows {
  at::Tensor cu;  // int32 [n + 1] on the device, or undefined (dense)
  std::int64_t samples = 0, per_sample = 0, chunks = 0, dim = 0;
  std::int64_t x_stride = 0;    // see kernels::RowLayout
  std::int64_t vec_stride = 0;  // see kernels::RowLayout

  kernels::RowLayout layout() const {
    kernels::RowLayout l;
    l.cu = cu.defined() ? cu.data_ptr<std::int32_t>() : nullptr;
    l.rows_per_sample = per_sample;
    l.samples = samples;
    l.chunks = chunks;
    l.dim = dim;
    l.x_stride = x_stride;
    l.vec_stride = vec_stride;
    return l;
  }
  void save(AutogradContext* ctx) const {
    ctx->saved_data["cu"] = cu;
    ctx->saved_data["rows"] =
        std::vector<std::int64_t>{samples, per_sample, chunks, dim, x_stride, vec_stride};
  }
  static Rows load(AutogradContext* ctx) {
    Rows r;
    r.cu = ctx->saved_data["cu"].toTensor();
    const auto v = ctx->saved_data["rows"].toIntVector();
    r.samples = v[0], r.per_sample = v[1], r.chunks = v[2], r.dim = v[3];
    r.x_stride = v[4], r.vec_stride = v[5];
    return r;
  }
};

std::int64_t chunks_for(std::int64_t rows) {
  return std::max<std::int64_t>(1, (rows + kernels::kRowsPerBlock - 1) / kernels::kRowsPerBlock);
}

Rows rows_of(const at::Tensor& x, const AttentionSegments* seg) {
  Rows r;
  r.dim = x.size(-1);
  if (seg == nullptr) {
    r.samples = x.size(0);
    r.per_sample = x.size(1);
    r.chunks = chunks_for(r.per_sample);
    return r;
  }
  r.samples = static_cast<std::int64_t>(seg->host_cu_q.size()) - 1;
  std::int64_t longest = seg->max_q;
  if (longest <= 0)
    for (std::size_t i = 0; i + 1 < seg->host_cu_q.size(); ++i)
      longest = std::max(longest, seg->host_cu_q[i + 1] - seg->host_cu_q[i]);
  r.chunks = chunks_for(longest);
  const auto& given = seg->cu_seqlens_q;
  if (given.defined() && given.device() == x.device() && given.scalar_type() == at::kInt &&
      given.is_contiguous()) {
    r.cu = given;
  } else {
    std::vector<std::int32_t> v(seg->host_cu_q.begin(), seg->host_cu_q.end());
    r.cu = at::tensor(v, at::TensorOptions().dtype(at::kInt)).to(x.device());
  }
  return r;
}

bool aligned(const at::Tensor& t) {
  return reinterpret_cast<std::uintptr_t>(t.data_ptr()) % 16 == 0;
}

// The row stride of x [B, S, D] when it is a row-major slice of a wider tensor that the kernels
// can read in place (rows equally spaced, 16-byte aligned); 0 otherwise (contiguous tensors too).
std::int64_t row_stride(const at::Tensor& x) {
  if (x.is_contiguous() || x.dim() != 3 || x.stride(2) != 1) return 0;
  const auto s = x.stride(1);
  if (s < x.size(2) || s % 8 != 0 || x.stride(0) != x.size(1) * s || !aligned(x)) return 0;
  return s;
}

// Rows of a whole tensor as one group (parameter gradients summed over every token).
Rows rows_flat(const at::Tensor& x) {
  Rows r;
  r.x_stride = row_stride(x);
  r.dim = x.size(-1);
  r.samples = 1;
  r.per_sample = x.numel() / r.dim;
  r.chunks = chunks_for(r.per_sample);
  return r;
}

void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "wanhost fused kernel ", what, ": ", cudaGetErrorString(err));
}

cudaStream_t stream_of(const at::Tensor& x) {
  return at::cuda::getCurrentCUDAStream(x.device().index()).stream();
}

// Per-sample vectors [n, 1, D] as the kernels read them: fp32 rows `stride` elements apart. Chunks
// of a [n, 6, D] modulation table and expanded shared vectors are read in place; anything else
// is copied to [n, D].
struct SampleVectors {
  at::Tensor data;
  std::int64_t stride = 0;
};

SampleVectors sample_vectors(const at::Tensor& v, std::int64_t samples, std::int64_t dim) {
  if (v.scalar_type() == at::kFloat && v.dim() == 3 && v.size(1) == 1 && v.stride(2) == 1 &&
      v.stride(0) % 4 == 0 && reinterpret_cast<std::uintptr_t>(v.data_ptr()) % 16 == 0)
    return {v, samples == 1 ? 0 : v.stride(0)};
  return {v.to(at::kFloat).reshape({samples, dim}).contiguous(), dim};
}

at::Tensor bf16_contiguous(const at::Tensor& t) {
  return t.to(at::kBFloat16).contiguous();
}

// The kernels' partial sums of K per-sample parameter gradients: [samples, chunks, K, D] fp32.
at::Tensor partial_sums(const Rows& rows, std::int64_t k, const at::Tensor& like) {
  return at::empty({rows.samples, kernels::partial_chunks(rows.layout()), k, rows.dim},
                   like.options().dtype(at::kFloat));
}

// A gradient is returned in its input's shape and dtype: remember them in forward ...
void remember_like(AutogradContext* ctx, const std::string& key, const at::Tensor& t) {
  ctx->saved_data[key + "_sizes"] = t.sizes().vec();
  ctx->saved_data[key + "_dtype"] = static_cast<std::int64_t>(t.scalar_type());
}

// ... and give the summed gradient that shape and dtype in backward.
at::Tensor as_like(AutogradContext* ctx, const std::string& key, const at::Tensor& grad) {
  return grad.reshape(ctx->saved_data[key + "_sizes"].toIntVector())
      .to(static_cast<at::ScalarType>(ctx->saved_data[key + "_dtype"].toInt()));
}

struct LayerNormModulate : torch::autograd::Function<LayerNormModulate> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& scale,
                            const at::Tensor& shift, double eps, Rows rows) {
    c10::cuda::CUDAGuard guard(x.device());
    auto xc = x.contiguous();
    auto scv = sample_vectors(scale, rows.samples, rows.dim);
    auto shv = sample_vectors(shift, rows.samples, rows.dim);
    if (scv.stride != shv.stride) {  // the kernels take one stride for both
      scv = {scale.to(at::kFloat).reshape({rows.samples, rows.dim}).contiguous(), rows.dim};
      shv = {shift.to(at::kFloat).reshape({rows.samples, rows.dim}).contiguous(), rows.dim};
    }
    rows.vec_stride = scv.stride;
    const auto &sc = scv.data, &sh = shv.data;
    auto y = at::empty_like(xc);
    const auto f32 = xc.options().dtype(at::kFloat);
    const auto tokens = xc.numel() / rows.dim;
    auto mean = at::empty({tokens}, f32), rstd = at::empty({tokens}, f32);
    check_cuda(kernels::layer_norm_modulate_forward(
                   rows.layout(), xc.data_ptr(), sc.data_ptr<float>(), sh.data_ptr<float>(),
                   static_cast<float>(eps), y.data_ptr(), mean.data_ptr<float>(),
                   rstd.data_ptr<float>(), stream_of(xc)),
               "layer_norm_modulate forward");
    ctx->save_for_backward({xc, sc, mean, rstd});
    rows.save(ctx);
    remember_like(ctx, "scale", scale);
    remember_like(ctx, "shift", shift);
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    c10::cuda::CUDAGuard guard(x.device());
    const Rows rows = Rows::load(ctx);
    auto g = bf16_contiguous(grads[0]);
    auto dx = at::empty_like(x);
    auto partials = partial_sums(rows, 2, x);
    check_cuda(kernels::layer_norm_modulate_backward(
                   rows.layout(), g.data_ptr(), x.data_ptr(), saved[1].data_ptr<float>(),
                   saved[2].data_ptr<float>(), saved[3].data_ptr<float>(), dx.data_ptr(),
                   partials.data_ptr<float>(), stream_of(x)),
               "layer_norm_modulate backward");
    auto sums = partials.sum(1);  // [n, 2, D]
    return {dx, as_like(ctx, "scale", sums.select(1, 1)), as_like(ctx, "shift", sums.select(1, 0)),
            at::Tensor(), at::Tensor()};
  }
};

struct GatedResidual : torch::autograd::Function<GatedResidual> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& y,
                            const at::Tensor& gate, Rows rows) {
    c10::cuda::CUDAGuard guard(x.device());
    auto xc = x.contiguous(), yc = y.contiguous();
    const auto gv = sample_vectors(gate, rows.samples, rows.dim);
    rows.vec_stride = gv.stride;
    const auto& gt = gv.data;
    auto out = at::empty_like(xc);
    check_cuda(kernels::gated_residual_forward(rows.layout(), xc.data_ptr(), yc.data_ptr(),
                                               gt.data_ptr<float>(), out.data_ptr(), stream_of(xc)),
               "gated_residual forward");
    ctx->save_for_backward({yc, gt});
    rows.save(ctx);
    remember_like(ctx, "gate", gate);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& y = saved[0];
    c10::cuda::CUDAGuard guard(y.device());
    const Rows rows = Rows::load(ctx);
    auto g = bf16_contiguous(grads[0]);
    auto dy = at::empty_like(y);
    auto partials = partial_sums(rows, 1, y);
    check_cuda(kernels::gated_residual_backward(rows.layout(), g.data_ptr(), y.data_ptr(),
                                                saved[1].data_ptr<float>(), dy.data_ptr(),
                                                partials.data_ptr<float>(), stream_of(y)),
               "gated_residual backward");
    auto dgate = as_like(ctx, "gate", partials.sum(1));
    return {g, dy, dgate, at::Tensor()};
  }
};

struct RmsNormRope : torch::autograd::Function<RmsNormRope> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& cos, const at::Tensor& sin, std::int64_t head_dim,
                            double eps) {
    c10::cuda::CUDAGuard guard(x.device());
    // A row-strided slice (q or k of a merged projection) is read in place.
    auto xc = row_stride(x) > 0 ? x : x.contiguous();
    const Rows rows = rows_flat(xc);
    // The weight in x's dtype, as torch.nn.RMSNorm of a bf16 model applies it.
    auto w = weight.to(x.scalar_type()).to(at::kFloat).contiguous();
    at::Tensor c, s;
    std::int64_t table_rows = 1;
    if (cos.numel() > 0) {  // an empty table: no rotation (autograd inputs must be defined)
      c = cos.to(at::kFloat).contiguous();
      s = sin.to(at::kFloat).contiguous();
      table_rows = c.numel() / (head_dim / 2);
    }
    auto y = at::empty(xc.sizes(), xc.options());
    auto rstd = at::empty({rows.per_sample}, xc.options().dtype(at::kFloat));
    check_cuda(kernels::rms_norm_rope_forward(rows.layout(), xc.data_ptr(), w.data_ptr<float>(),
                                              c.defined() ? c.data_ptr<float>() : nullptr,
                                              s.defined() ? s.data_ptr<float>() : nullptr,
                                              table_rows, head_dim, static_cast<float>(eps),
                                              y.data_ptr(), rstd.data_ptr<float>(), stream_of(xc)),
               "rms_norm_rope forward");
    ctx->save_for_backward({xc, w, rstd});
    ctx->saved_data["cos"] = c;
    ctx->saved_data["sin"] = s;
    ctx->saved_data["table_rows"] = table_rows;
    ctx->saved_data["head_dim"] = head_dim;
    remember_like(ctx, "weight", weight);
    return y.unflatten(-1, {-1, head_dim});
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    c10::cuda::CUDAGuard guard(x.device());
    const Rows rows = rows_flat(x);
    const auto c = ctx->saved_data["cos"].toTensor(), s = ctx->saved_data["sin"].toTensor();
    const auto head_dim = ctx->saved_data["head_dim"].toInt();
    auto g = bf16_contiguous(grads[0]);
    auto dx = at::empty(x.sizes(), x.options());
    auto partials = partial_sums(rows, 1, x);
    check_cuda(kernels::rms_norm_rope_backward(
                   rows.layout(), g.data_ptr(), x.data_ptr(), saved[1].data_ptr<float>(),
                   c.defined() ? c.data_ptr<float>() : nullptr,
                   s.defined() ? s.data_ptr<float>() : nullptr,
                   ctx->saved_data["table_rows"].toInt(), head_dim, saved[2].data_ptr<float>(),
                   dx.data_ptr(), partials.data_ptr<float>(), stream_of(x)),
               "rms_norm_rope backward");
    auto dw = as_like(ctx, "weight", partials.sum({0, 1, 2}));
    return {dx, dw, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// y = x W^T + b with the bias gradient from the column-sum kernel; the matrix products of the
// backward are the ones autograd's AddmmBackward would run.
struct LinearColumnSumBias : torch::autograd::Function<LinearColumnSumBias> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w,
                            const at::Tensor& b) {
    ctx->save_for_backward({x, w});
    remember_like(ctx, "bias", b);
    return at::linear(x, w, b);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &w = saved[1];
    c10::cuda::CUDAGuard guard(x.device());
    const auto out = w.size(0);
    auto g = bf16_contiguous(grads[0]).view({-1, out});
    at::Tensor dx, dw, db;
    if (ctx->needs_input_grad(0)) dx = at::mm(g, w).view(x.sizes());
    if (ctx->needs_input_grad(1)) dw = at::mm(g.t(), x.reshape({-1, x.size(-1)}));
    if (ctx->needs_input_grad(2)) {
      const Rows rows = rows_flat(g);
      auto partials = partial_sums(rows, 1, g);
      check_cuda(kernels::column_sums(rows.layout(), g.data_ptr(), partials.data_ptr<float>(),
                                      stream_of(g)),
                 "linear bias gradient");
      db = as_like(ctx, "bias", partials.sum({0, 1, 2}));
    }
    return {dx, dw, db};
  }
};

}  // namespace
#endif

bool kernels_built() {
  return WANHOST_WITH_CUDA != 0;
}

bool kernels_apply(const at::Tensor& x) {
#if WANHOST_WITH_CUDA
  return x.defined() && x.is_cuda() && x.scalar_type() == at::kBFloat16 && x.dim() >= 1 &&
         x.size(-1) % 8 == 0 && x.numel() > 0 &&
         (!x.is_contiguous() || aligned(x));  // 16-byte accesses
#else
  (void)x;
  return false;
#endif
}

at::Tensor layer_norm_modulate(const at::Tensor& x, const at::Tensor& scale,
                               const at::Tensor& shift, double eps,
                               const AttentionSegments* segments) {
#if WANHOST_WITH_CUDA
  if (kernels_apply(x)) {
    const auto n = samples_of(x, segments);
    check_vectors(x, scale, n, "layer_norm_modulate", "scale");
    check_vectors(x, shift, n, "layer_norm_modulate", "shift");
    return LayerNormModulate::apply(x, scale, shift, eps, rows_of(x, segments));
  }
#endif
  return reference::layer_norm_modulate(x, scale, shift, eps, segments);
}

at::Tensor gated_residual(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate,
                          const AttentionSegments* segments) {
#if WANHOST_WITH_CUDA
  if (kernels_apply(x) && y.scalar_type() == at::kBFloat16 && y.sizes() == x.sizes() &&
      y.device() == x.device()) {
    const auto n = samples_of(x, segments);
    check_vectors(x, gate, n, "gated_residual", "gate");
    return GatedResidual::apply(x, y, gate, rows_of(x, segments));
  }
#endif
  return reference::gated_residual(x, y, gate, segments);
}

at::Tensor rms_norm_rope(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& cos,
                         const at::Tensor& sin, std::int64_t head_dim, double eps) {
#if WANHOST_WITH_CUDA
  if (kernels_apply(x) && x.dim() == 3 && head_dim > 0 && head_dim % 8 == 0 &&
      x.size(2) % head_dim == 0 && weight.numel() == x.size(2)) {
    const auto tokens = x.size(0) * x.size(1);
    const bool rope_ok =
        !cos.defined() || (cos.numel() == sin.numel() && cos.numel() % (head_dim / 2) == 0 &&
                           cos.numel() > 0 && tokens % (cos.numel() / (head_dim / 2)) == 0 &&
                           cos.device() == x.device() && aligned(cos.contiguous()));
    const at::Tensor none = at::empty({0}, x.options().dtype(at::kFloat));
    if (rope_ok)
      return RmsNormRope::apply(x, weight, cos.defined() ? cos : none, sin.defined() ? sin : none,
                                head_dim, eps);
  }
#endif
  return reference::rms_norm_rope(x, weight, cos, sin, head_dim, eps);
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
#if WANHOST_WITH_CUDA
  // The kernel reads the output gradient, [tokens, out] bf16: out must be a multiple of 8.
  if (bias.defined() && x.dim() >= 2 && kernels_apply(x) &&
      weight.scalar_type() == x.scalar_type() && bias.scalar_type() == x.scalar_type() &&
      weight.dim() == 2 && weight.size(0) % 8 == 0 && x.is_contiguous())
    return LinearColumnSumBias::apply(x, weight, bias);
#endif
  return at::linear(x, weight, bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt);
}

}  // namespace wanhost::fused
