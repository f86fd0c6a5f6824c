// wanhost::fused: the reference arithmetic (ATen) and, in CUDA builds, autograd functions around
// the kernels of kernels/fused_kernels.cu. The backward kernels return partial sums (per 128 rows)
// of the parameter gradients, summed here over blocks in a fixed order (deterministic).
#include "wanhost/kit/fused.hpp"
#include "wanhost/kit/compute_weights.hpp"
#include "wanhost/kit/kernel_options.hpp"

#include <ATen/ATen.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/Exception.h>
#include <atomic>
#include <cstdlib>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#if WANHOST_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/csrc/autograd/custom_function.h>

#include "fused_kernels.hpp"
#include "lt_matmul.hpp"
#include "slot_sums.hpp"
#include "wanhost/log.hpp"
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

std::pair<at::Tensor, at::Tensor> layer_norm_modulate_with_input(
    const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, double eps,
    const AttentionSegments* segments) {
  return {x, reference::layer_norm_modulate(x, scale, shift, eps, segments)};
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
    y = at::rms_norm(x, {x.size(-1)}, compute_weight_differentiable(weight, x.scalar_type()), eps);
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

std::pair<at::Tensor, at::Tensor> gated_residual_norm(const at::Tensor& x, const at::Tensor& y,
                                                      const at::Tensor& gate,
                                                      const at::Tensor& scale,
                                                      const at::Tensor& shift, double eps,
                                                      const AttentionSegments* segments) {
  TORCH_CHECK(x.sizes() == y.sizes(), "fused::gated_residual_norm: x ", x.sizes(), " and y ",
              y.sizes(), " differ");
  auto x_out = gate.defined() ? reference::gated_residual(x, y, gate, segments)
                              : (x.to(at::kFloat) + y.to(at::kFloat)).to(x.scalar_type());
  return {x_out, reference::layer_norm_modulate(x_out, scale, shift, eps, segments)};
}

at::Tensor gelu_feed_forward(const at::Tensor& x, const at::Tensor& w_up, const at::Tensor& b_up,
                             const at::Tensor& w_down, const at::Tensor& b_down) {
  return at::linear(at::gelu(at::linear(x, w_up, b_up), "tanh"), w_down, b_down);
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
  std::int64_t gate_stride = 0;

  kernels::RowLayout layout() const {
    kernels::RowLayout l;
    l.cu = cu.defined() ? cu.data_ptr<std::int32_t>() : nullptr;
    l.rows_per_sample = per_sample;
    l.samples = samples;
    l.chunks = chunks;
    l.dim = dim;
    l.x_stride = x_stride;
    l.vec_stride = vec_stride;
    l.gate_stride = gate_stride;
    return l;
  }
  void save(AutogradContext* ctx) const {
    ctx->saved_data["cu"] = cu;
    ctx->saved_data["rows"] = std::vector<std::int64_t>{samples,  per_sample, chunks,     dim,
                                                        x_stride, vec_stride, gate_stride};
  }
  static Rows load(AutogradContext* ctx) {
    Rows r;
    r.cu = ctx->saved_data["cu"].toTensor();
    const auto v = ctx->saved_data["rows"].toIntVector();
    r.samples = v[0], r.per_sample = v[1], r.chunks = v[2], r.dim = v[3];
    r.x_stride = v[4], r.vec_stride = v[5], r.gate_stride = v[6];
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

// scale and shift of a modulated LayerNorm as the kernels read them (one stride for both, set in
// rows.vec_stride).
std::pair<at::Tensor, at::Tensor> norm_vectors(const at::Tensor& scale, const at::Tensor& shift,
                                               Rows& rows) {
  auto scv = sample_vectors(scale, rows.samples, rows.dim);
  auto shv = sample_vectors(shift, rows.samples, rows.dim);
  if (scv.stride != shv.stride) {
    scv = {scale.to(at::kFloat).reshape({rows.samples, rows.dim}).contiguous(), rows.dim};
    shv = {shift.to(at::kFloat).reshape({rows.samples, rows.dim}).contiguous(), rows.dim};
  }
  rows.vec_stride = scv.stride;
  return {scv.data, shv.data};
}

at::Tensor bf16_contiguous(const at::Tensor& t) {
  return t.to(at::kBFloat16).contiguous();
}

// The kernels' partial sums of K per-sample parameter gradients: [samples, chunks, K, D] fp32.
at::Tensor partial_sums(const Rows& rows, std::int64_t k, const at::Tensor& like) {
  return at::empty({rows.samples, kernels::partial_chunks(rows.layout()), k, rows.dim},
                   like.options().dtype(at::kFloat));
}

// The same for the one-pass backward kernels: a slot a block of rows, `blocks` a sample
// (the LayerNorms': a block of kernels::kRowsPerBlock rows, the layout's chunks).
at::Tensor block_sums(const Rows& rows, std::int64_t k, const at::Tensor& like,
                      std::int64_t blocks) {
  return at::empty({rows.samples, blocks, k, rows.dim}, like.options().dtype(at::kFloat));
}
at::Tensor block_sums(const Rows& rows, std::int64_t k, const at::Tensor& like) {
  return block_sums(rows, k, like, rows.layout().chunks);
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

// layer_norm_modulate(x) and, with `with_input`, x itself as a first output (x used as a residual
// connection's base too): the gradient reaching that output is added to the norm's dx inside the
// backward kernel instead of by autograd after it, a pass over the rows and a kernel less
// (docs/performance.md).
struct LayerNormModulate : torch::autograd::Function<LayerNormModulate> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& scale,
                               const at::Tensor& shift, double eps, Rows rows, bool with_input) {
    c10::cuda::CUDAGuard guard(x.device());
    auto xc = x.contiguous();
    const auto [sc, sh] = norm_vectors(scale, shift, rows);
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
    ctx->saved_data["with_input"] = with_input;
    if (with_input) return {x, y};  // an input returned: autograd hands out a view of it
    return {y};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    c10::cuda::CUDAGuard guard(x.device());
    const Rows rows = Rows::load(ctx);
    const bool with_input = ctx->saved_data["with_input"].toBool();
    const at::Tensor& grad_norm = grads[with_input ? 1 : 0];
    const auto g = grad_norm.defined() ? bf16_contiguous(grad_norm) : at::zeros_like(x);
    const auto through =
        with_input && grads[0].defined() ? bf16_contiguous(grads[0]) : at::Tensor();
    auto dx = at::empty_like(x);
    // d shift and d scale summed by the row kernel itself where it fits (a slot a block of rows).
    const bool one_pass = kernels::layer_norm_one_pass_fits(rows.layout());
    auto partials = one_pass ? block_sums(rows, 2, x) : partial_sums(rows, 2, x);
    const auto backward = one_pass ? kernels::layer_norm_modulate_backward_one_pass
                                   : kernels::layer_norm_modulate_backward;
    check_cuda(
        backward(rows.layout(), g.data_ptr(), x.data_ptr(), saved[1].data_ptr<float>(),
                 saved[2].data_ptr<float>(), saved[3].data_ptr<float>(),
                 through.defined() ? through.data_ptr() : nullptr, dx.data_ptr(),
                 partials.data_ptr<float>(), stream_of(x)),
        one_pass ? "layer_norm_modulate backward (one pass)" : "layer_norm_modulate backward");
    auto sums = slot_sums::summed(partials, 1, 1);  // [n, 2, D]
    return {dx,
            as_like(ctx, "scale", sums.select(1, 1)),
            as_like(ctx, "shift", sums.select(1, 0)),
            at::Tensor(),
            at::Tensor(),
            at::Tensor()};
  }
};

// (x_out, n) = (x + y * gate, layer_norm_modulate(x_out)); an empty gate (numel 0) is 1
// (custom autograd functions take no undefined tensors).
struct GatedResidualNorm : torch::autograd::Function<GatedResidualNorm> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& y,
                               const at::Tensor& gate, const at::Tensor& scale,
                               const at::Tensor& shift, double eps, Rows rows) {
    c10::cuda::CUDAGuard guard(x.device());
    auto xc = x.contiguous(), yc = y.contiguous();
    const auto [sc, sh] = norm_vectors(scale, shift, rows);
    at::Tensor gt;
    if (gate.numel() > 0) {
      const auto gv = sample_vectors(gate, rows.samples, rows.dim);
      gt = gv.data;
      rows.gate_stride = gv.stride;
    }
    auto x_out = at::empty_like(xc), n = at::empty_like(xc);
    const auto f32 = xc.options().dtype(at::kFloat);
    const auto tokens = xc.numel() / rows.dim;
    auto mean = at::empty({tokens}, f32), rstd = at::empty({tokens}, f32);
    check_cuda(kernels::gated_residual_norm_forward(
                   rows.layout(), xc.data_ptr(), yc.data_ptr(),
                   gt.defined() ? gt.data_ptr<float>() : nullptr, sc.data_ptr<float>(),
                   sh.data_ptr<float>(), static_cast<float>(eps), x_out.data_ptr(), n.data_ptr(),
                   mean.data_ptr<float>(), rstd.data_ptr<float>(), stream_of(xc)),
               "gated_residual_norm forward");
    ctx->save_for_backward({x_out, yc, sc, mean, rstd, gt});
    rows.save(ctx);
    remember_like(ctx, "scale", scale);
    remember_like(ctx, "shift", shift);
    if (gt.defined()) remember_like(ctx, "gate", gate);
    return {x_out, n};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &x_out = saved[0], &y = saved[1], &gt = saved[5];
    c10::cuda::CUDAGuard guard(x_out.device());
    const Rows rows = Rows::load(ctx);
    const auto gx = grads[0].defined() ? bf16_contiguous(grads[0]) : at::Tensor();
    const auto gn = grads[1].defined() ? bf16_contiguous(grads[1]) : at::zeros_like(x_out);
    auto dx = at::empty_like(x_out), dy = at::empty_like(x_out);
    const bool one_pass = kernels::layer_norm_one_pass_fits(rows.layout());
    auto norm_partials = one_pass ? block_sums(rows, 2, x_out) : partial_sums(rows, 2, x_out);
    const bool gate_grad = gt.defined() && ctx->needs_input_grad(2);
    at::Tensor gate_partials = gate_grad ? partial_sums(rows, 1, x_out) : at::Tensor();
    const auto backward = one_pass ? kernels::gated_residual_norm_backward_one_pass
                                   : kernels::gated_residual_norm_backward;
    check_cuda(
        backward(rows.layout(), gx.defined() ? gx.data_ptr() : nullptr, gn.data_ptr(),
                 x_out.data_ptr(), y.data_ptr(), gt.defined() ? gt.data_ptr<float>() : nullptr,
                 saved[2].data_ptr<float>(), saved[3].data_ptr<float>(), saved[4].data_ptr<float>(),
                 dx.data_ptr(), dy.data_ptr(), norm_partials.data_ptr<float>(),
                 gate_grad ? gate_partials.data_ptr<float>() : nullptr, stream_of(x_out)),
        one_pass ? "gated_residual_norm backward (one pass)" : "gated_residual_norm backward");
    auto sums = slot_sums::summed(norm_partials, 1, 1);  // [n, 2, D]
    at::Tensor dgate;
    if (gate_grad) dgate = as_like(ctx, "gate", slot_sums::summed(gate_partials, 1, 1));
    return {dx,
            dy,
            dgate,
            as_like(ctx, "scale", sums.select(1, 1)),
            as_like(ctx, "shift", sums.select(1, 0)),
            at::Tensor(),
            at::Tensor()};
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
    auto dgate = as_like(ctx, "gate", slot_sums::summed(partials, 1, 1));
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
    auto w = compute_weight(weight, x.scalar_type()).to(at::kFloat).contiguous();
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
    const auto layout = rows.layout();
    const float* cos_ptr = c.defined() ? c.data_ptr<float>() : nullptr;
    const float* sin_ptr = s.defined() ? s.data_ptr<float>() : nullptr;
    const auto table_rows = ctx->saved_data["table_rows"].toInt();
    // The weight gradient summed by the row kernel itself where it fits (a slot a block of rows,
    // as many rows a block as keep its grid to one wave), else by a column kernel.
    at::Tensor partials;
    if (kernels::rms_norm_rope_backward_one_pass_fits(layout)) {
      const auto per_block = kernels::rms_norm_rope_backward_one_pass_rows(layout);
      partials = block_sums(rows, 1, x,
                            kernels::rms_norm_rope_backward_one_pass_blocks(layout, per_block));
      check_cuda(kernels::rms_norm_rope_backward_one_pass(
                     layout, g.data_ptr(), x.data_ptr(), saved[1].data_ptr<float>(), cos_ptr,
                     sin_ptr, table_rows, head_dim, saved[2].data_ptr<float>(), dx.data_ptr(),
                     partials.data_ptr<float>(), per_block, stream_of(x)),
                 "rms_norm_rope backward (one pass)");
    } else {
      partials = partial_sums(rows, 1, x);
      check_cuda(kernels::rms_norm_rope_backward(
                     layout, g.data_ptr(), x.data_ptr(), saved[1].data_ptr<float>(), cos_ptr,
                     sin_ptr, table_rows, head_dim, saved[2].data_ptr<float>(), dx.data_ptr(),
                     partials.data_ptr<float>(), stream_of(x)),
                 "rms_norm_rope backward");
    }
    auto dw = as_like(ctx, "weight", slot_sums::summed(partials, 0, 3));
    return {dx, dw, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::atomic<std::int64_t> lt_fallbacks{0};

const char* epilogue_name(kernels::LtEpilogue e) {
  switch (e) {
    case kernels::LtEpilogue::GeluAuxBias:
      return "GELU (aux, bias)";
    case kernels::LtEpilogue::DGelu:
      return "GELU-gradient";
    case kernels::LtEpilogue::BGradB:
      return "bias-gradient";
  }
  return "?";
}

// Which cuBLASLt epilogues run: KernelOptions (run.kernels.lt_epilogues, `bench
// --lt-epilogues`). Default: dgelu. Measured on an H200 (docs/performance.md): cuBLASLt runs
// BGRADB, and DGELU with a bias gradient, as separate global reductions after the product (0.9 ms
// per 12480 x 8960 DGELU_BGRAD), so the bias gradients stay with wanhost's column kernel; the
// GELU_AUX_BIAS product ran at ~630 TFLOP/s, which costs what the separate GELU pass saves.
struct LtUse {
  bool gelu = false, dgelu = true, bgrad = false;
};

LtUse lt_use() {
  const KernelOptions& o = kernel_options();
  return LtUse{o.lt_gelu, o.lt_dgelu, o.lt_bgrad};
}

// The column sums of g [M, out] bf16 (a bias gradient), fp32 [out], by the column-sum kernel.
at::Tensor bias_grad(const at::Tensor& g) {
  const Rows rows = rows_flat(g);
  auto partials = partial_sums(rows, 1, g);
  check_cuda(
      kernels::column_sums(rows.layout(), g.data_ptr(), partials.data_ptr<float>(), stream_of(g)),
      "bias gradient");
  return slot_sums::summed(partials, 0, 3);
}

// A weight gradient g^T x [out, in] (g [M, out], x [M, in], both bf16) in `dtype`, the master
// weight's: with fp32 masters the product writes its fp32 accumulators as they are, so the
// gradient is never rounded to bf16 and needs no cast pass afterwards (autograd's cast of a bf16
// gradient up to an fp32 master was ~6 ms of a 1.3B step; Megatron-LM's
// gradient_accumulation_fusion, megatron/core/tensor_parallel/layers.py, keeps fp32 weight
// gradients the same way). at::mm with an output dtype is cuBLAS's; where it refuses, the bf16
// product is cast (said once).
at::Tensor weight_grad(const at::Tensor& g, const at::Tensor& x, at::ScalarType dtype) {
  static std::atomic<bool> out_dtype_usable{true};
  if (dtype == g.scalar_type()) return at::mm(g.t(), x);
  if (out_dtype_usable.load()) {
    try {
      return at::mm(g.t(), x, dtype);
    } catch (const c10::Error& e) {
      out_dtype_usable.store(false);
      logger()->warn("weight gradients: at::mm with an output dtype refused ({}); casting them",
                     e.what_without_backtrace());
    }
  }
  return at::mm(g.t(), x).to(dtype);
}

// The dtype remember_like() kept for `key` (a weight's, which its gradient gets).
at::ScalarType remembered_dtype(AutogradContext* ctx, const std::string& key) {
  return static_cast<at::ScalarType>(ctx->saved_data[key + "_dtype"].toInt());
}

// The cuBLASLt products of the operators below. Each returns false, before writing anything,
// when cuBLASLt has no algorithm for the case; the caller then computes it with ATen.
bool run_lt(const kernels::LtMatmul& p, const at::Tensor& like) {
  // ATen's own cuBLASLt workspace: its products run on the same stream, one after another.
  const auto status = kernels::lt_matmul(at::cuda::getCurrentCUDABlasLtHandle(), p,
                                         at::cuda::getCUDABlasLtWorkspace(),
                                         at::cuda::getCUDABlasLtWorkspaceSize(), stream_of(like));
  if (status == CUBLAS_STATUS_NOT_SUPPORTED) {
    static std::atomic<bool> warned[kernels::kLtEpilogues];
    if (!warned[static_cast<int>(p.epilogue)].exchange(true))
      logger()->warn(
          "cuBLASLt has no algorithm for a {} product of {} x {} x {}; ATen computes such "
          "products (slower)",
          epilogue_name(p.epilogue), p.m, p.n, p.k);
    ++lt_fallbacks;
    return false;
  }
  TORCH_CHECK(status == CUBLAS_STATUS_SUCCESS, "wanhost cuBLASLt product (", p.m, " x ", p.n, " x ",
              p.k, "): cuBLAS status ", static_cast<int>(status));
  return true;
}

// Whether the GELU-gradient product of this shape runs with the DGELU epilogue. cuBLASLt fuses
// the epilogue into the product at some shapes (sm90 "dgelu" kernels at the 1.3B shapes: +1-1.5%
// a step) and at others runs it as a separate pass after the product that costs more than ATen's
// gelu_backward (H200, 14B, 37440 x 13824 x 5120: cuBLASLt's epilogue kernel 4.0 ms a call,
// gelu_backward ~0.8 ms). So the first call of each shape times both ways on the current stream
// (CUDA events, after one untimed call of each; the separate way first, so that at most two
// token-by-hidden buffers live at once, as on that path) and keeps the faster; the choice is
// logged once. `epilogue()` runs the product into dpre (false: cuBLASLt refused), `separate()`
// returns the other way's result.
// Nothing can be timed while the stream is being captured into a CUDA graph: a shape first seen
// there takes the epilogue, untimed (wanhost bench --cuda-graph warms up before capturing).
bool dgelu_epilogue_pays(std::int64_t rows, std::int64_t hidden, std::int64_t out,
                         const at::Tensor& dpre, const std::function<bool()>& epilogue,
                         const std::function<at::Tensor()>& separate) {
  static std::mutex mutex;
  static std::map<std::tuple<std::int64_t, std::int64_t, std::int64_t, int>, bool> chosen;
  const auto key = std::make_tuple(rows, hidden, out, static_cast<int>(dpre.get_device()));
  std::lock_guard<std::mutex> lock(mutex);
  if (auto it = chosen.find(key); it != chosen.end()) return it->second;
  const auto current = at::cuda::getCurrentCUDAStream(dpre.get_device());
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  check_cuda(cudaStreamIsCapturing(current.stream(), &capture), "GELU-gradient timing");
  if (capture != cudaStreamCaptureStatusNone) return true;
  // Each way once untimed first: the first calls pay for heuristics, plans and module loading
  // on the host while the device waits (the first epilogue call measured 4-10 ms for a 0.5 ms
  // product), and the timed calls must not.
  constexpr int kTimed = 3;
  at::cuda::CUDAEvent start(cudaEventDefault), mid(cudaEventDefault), end(cudaEventDefault);
  separate();
  if (!epilogue()) return chosen[key] = false;  // refused: run_lt has said so
  start.record(current);
  for (int i = 0; i < kTimed; ++i) separate();
  mid.record(current);
  for (int i = 0; i < kTimed; ++i) epilogue();
  end.record(current);
  end.synchronize();
  const double separate_ms = start.elapsed_time(mid) / kTimed;
  const double epilogue_ms = mid.elapsed_time(end) / kTimed;
  const bool use = epilogue_ms <= separate_ms;
  logger()->info(
      "GELU-gradient product {} x {} x {}: cuBLASLt epilogue {:.3f} ms, product + "
      "gelu_backward {:.3f} ms: using the {}",
      rows, hidden, out, epilogue_ms, separate_ms, use ? "epilogue" : "separate pass");
  return chosen[key] = use;
}

// dw [out, in] = g^T x and db [out] = the column sums of g, in one product (BGRADB epilogue);
// g [M, out] and x [M, in] row-major bf16.
bool weight_and_bias_grads(const at::Tensor& g, const at::Tensor& x, at::Tensor& dw,
                           at::Tensor& db) {
  if (!lt_use().bgrad || !x.is_contiguous() || !g.is_contiguous()) return false;
  const auto rows = g.size(0), out = g.size(1), in = x.size(1);
  auto w = at::empty({out, in}, g.options());
  auto b = at::empty({out}, g.options());
  kernels::LtMatmul p;
  // Column-major view: dw^T [in, out] = x^T [in, M] * g [M, out].
  p.m = in, p.n = out, p.k = rows;
  p.a = x.data_ptr(), p.lda = in;
  p.trans_b = true, p.b = g.data_ptr(), p.ldb = out;
  p.d = w.data_ptr(), p.ldd = in;
  p.epilogue = kernels::LtEpilogue::BGradB, p.bias = b.data_ptr();
  if (!run_lt(p, g)) return false;
  dw = w, db = b;
  return true;
}

// down(gelu_tanh(x W1^T + b1)) with W2, b2; x [M, D] bf16 contiguous; weights and biases bf16 or
// fp32 masters (cast here, once, and their gradients returned in their own dtype). Saved for
// backward: x, the bf16 weights, the pre-activation (the epilogue's aux output) and the GELU
// output (the down-projection's input), as the unfused graph saves them.
struct GeluFeedForward : torch::autograd::Function<GeluFeedForward> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w1_in,
                            const at::Tensor& b1_in, const at::Tensor& w2_in,
                            const at::Tensor& b2_in) {
    c10::cuda::CUDAGuard guard(x.device());
    const auto dtype = x.scalar_type();
    const auto w1 = compute_weight(w1_in, dtype), b1 = compute_weight(b1_in, dtype);
    const auto w2 = compute_weight(w2_in, dtype), b2 = compute_weight(b2_in, dtype);
    const auto x2 = x.reshape({-1, x.size(-1)});
    const auto rows = x2.size(0), dim = x2.size(1), hidden = w1.size(0);
    at::Tensor pre, h;
    if (lt_use().gelu) {
      pre = at::empty({rows, hidden}, x.options());
      h = at::empty({rows, hidden}, x.options());
      kernels::LtMatmul p;
      // Column-major view: h^T [F, M] = gelu(W1 [F, D] * x^T [D, M] + b1).
      p.trans_a = true, p.m = hidden, p.n = rows, p.k = dim;
      p.a = w1.data_ptr(), p.lda = dim;
      p.b = x2.data_ptr(), p.ldb = dim;
      p.d = h.data_ptr(), p.ldd = hidden;
      p.epilogue = kernels::LtEpilogue::GeluAuxBias, p.bias = b1.data_ptr();
      p.aux = pre.data_ptr(), p.ldaux = hidden;
      if (!run_lt(p, x)) pre = h = at::Tensor();
    }
    if (!pre.defined()) {
      pre = at::linear(x2, w1, b1);
      h = at::gelu(pre, "tanh");
    }
    ctx->save_for_backward({x, w1, w2, pre, h});
    remember_like(ctx, "w1", w1_in);
    remember_like(ctx, "w2", w2_in);
    remember_like(ctx, "b1", b1_in);
    remember_like(ctx, "b2", b2_in);
    auto sizes = x.sizes().vec();
    sizes.back() = w2.size(0);
    return at::linear(h, w2, b2).view(sizes);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &w1 = saved[1], &w2 = saved[2], &pre = saved[3], &h = saved[4];
    c10::cuda::CUDAGuard guard(x.device());
    const auto out = w2.size(0), hidden = w1.size(0);
    const auto g = bf16_contiguous(grads[0]).view({-1, out});
    const auto rows = g.size(0);
    const auto x2 = x.reshape({-1, x.size(-1)});

    // d pre = (g W2) * gelu'(pre): in one product with the DGELU epilogue where that is faster.
    const auto separate = [&] { return at::gelu_backward(at::mm(g, w2), pre, "tanh"); };
    at::Tensor dpre;
    if (lt_use().dgelu) {
      dpre = at::empty({rows, hidden}, g.options());
      kernels::LtMatmul p;
      // Column-major view: dpre^T [F, M] = W2^T [F, D_out] * g^T [D_out, M].
      p.m = hidden, p.n = rows, p.k = out;
      p.a = w2.data_ptr(), p.lda = hidden;
      p.b = g.data_ptr(), p.ldb = out;
      p.d = dpre.data_ptr(), p.ldd = hidden;
      p.epilogue = kernels::LtEpilogue::DGelu;
      p.aux = const_cast<void*>(pre.data_ptr()), p.ldaux = hidden;
      const auto epilogue = [&] { return run_lt(p, g); };
      if (!dgelu_epilogue_pays(rows, hidden, out, dpre, epilogue, separate) || !epilogue())
        dpre = at::Tensor();
    }
    if (!dpre.defined()) dpre = separate();
    const auto db1 = bias_grad(dpre);
    at::Tensor dw2, db2;
    if (weight_and_bias_grads(g, h, dw2, db2)) {
      dw2 = as_like(ctx, "w2", dw2);
    } else {
      dw2 = weight_grad(g, h, remembered_dtype(ctx, "w2"));
      db2 = bias_grad(g);
    }
    at::Tensor dx, dw1;
    if (ctx->needs_input_grad(0)) dx = at::mm(dpre, w1).view(x.sizes());
    if (ctx->needs_input_grad(1)) dw1 = weight_grad(dpre, x2, remembered_dtype(ctx, "w1"));
    return {dx, dw1, as_like(ctx, "b1", db1), dw2, as_like(ctx, "b2", db2)};
  }
};

// Linear layers reading one input x: y_i = x W_i^T + b_i (fused::linear is the one-layer case;
// attention's q, k and v, and cross-attention's k and v, are several). W_i, b_i bf16 or fp32
// masters, cast here; their gradients come back in their own dtype, the weights' straight from
// their products (weight_grad). Backward: the input gradient accumulated by the products
// themselves (cuBLAS beta = 1: dx = g_0 W_0, then dx += g_i W_i) instead of one product per layer
// and autograd's sum of their results (two passes over a token-sized bf16 tensor per extra
// layer); the bias gradients from the column-sum kernel, or from the weight-gradient product's
// BGRADB epilogue where run.kernels.lt_epilogues asks for it.
struct LinearsOfOneInput : torch::autograd::Function<LinearsOfOneInput> {
  // `params` = W_0, b_0, W_1, b_1, ...; a TensorList: autograd counts a list's tensors as inputs
  // only in that type (a std::vector would be taken for a non-tensor argument, and get no
  // gradients).
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, at::TensorList params) {
    variable_list saved{x}, out;
    std::vector<std::int64_t> dtypes;  // the parameters' own, in order: their gradients'
    for (std::size_t i = 0; i < params.size(); i += 2) {
      const auto w = compute_weight(params[i], x.scalar_type());
      saved.push_back(w);
      dtypes.push_back(static_cast<std::int64_t>(params[i].scalar_type()));
      dtypes.push_back(static_cast<std::int64_t>(params[i + 1].scalar_type()));
      out.push_back(at::linear(x, w, compute_weight(params[i + 1], x.scalar_type())));
    }
    ctx->save_for_backward(saved);
    ctx->saved_data["dtypes"] = dtypes;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto dtypes = ctx->saved_data["dtypes"].toIntVector();
    auto dtype = [&](std::size_t k) { return static_cast<at::ScalarType>(dtypes[k]); };
    c10::cuda::CUDAGuard guard(x.device());
    const auto x2 = x.reshape({-1, x.size(-1)});
    at::Tensor dx;
    variable_list result(1 + 2 * grads.size());  // dx, then dW_i, db_i
    for (std::size_t i = 0; i < grads.size(); ++i) {
      if (!grads[i].defined()) continue;  // an output that did not reach the loss
      const auto& w = saved[i + 1];
      const auto g = bf16_contiguous(grads[i]).view({-1, w.size(0)});
      if (ctx->needs_input_grad(0)) {
        if (dx.defined())
          dx.addmm_(g, w);
        else
          dx = at::mm(g, w);
      }
      const bool need_w = ctx->needs_input_grad(1 + 2 * i),
                 need_b = ctx->needs_input_grad(2 + 2 * i);
      at::Tensor dw, db;
      if (need_w && need_b && weight_and_bias_grads(g, x2, dw, db)) {
        dw = dw.to(dtype(2 * i));
      } else {
        if (need_w) dw = weight_grad(g, x2, dtype(2 * i));
        if (need_b) db = bias_grad(g);
      }
      result[1 + 2 * i] = dw;
      if (db.defined()) result[2 + 2 * i] = db.to(dtype(2 * i + 1));
    }
    if (dx.defined()) result[0] = dx.view(x.sizes());
    return result;
  }
};

}  // namespace
#endif

namespace {

// `t` (may be undefined) in x's dtype: a differentiable cast of a master copy (or its copy from
// the step's one cast pass, compute_weights.hpp) on the paths that compute in x's dtype through
// ATen.
at::Tensor as_dtype_of(const at::Tensor& t, const at::Tensor& x) {
  return compute_weight_differentiable(t, x.scalar_type());
}

// Parameters the fused products take: in x's dtype, or fp32 master copies (cast inside, their
// gradients returned in fp32).
[[maybe_unused]] bool weight_dtype_ok(const at::Tensor& t, const at::Tensor& x) {
  return t.scalar_type() == x.scalar_type() || t.scalar_type() == at::kFloat;
}

}  // namespace

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

#if WANHOST_WITH_CUDA
namespace {

// LayerNormModulate on the kernels' tensors, the vectors checked under the name of `op`.
torch::autograd::variable_list layer_norm_modulate_kernels(const char* op, const at::Tensor& x,
                                                           const at::Tensor& scale,
                                                           const at::Tensor& shift, double eps,
                                                           const AttentionSegments* segments,
                                                           bool with_input) {
  const auto n = samples_of(x, segments);
  check_vectors(x, scale, n, op, "scale");
  check_vectors(x, shift, n, op, "shift");
  return LayerNormModulate::apply(x, scale, shift, eps, rows_of(x, segments), with_input);
}

}  // namespace
#endif

at::Tensor layer_norm_modulate(const at::Tensor& x, const at::Tensor& scale,
                               const at::Tensor& shift, double eps,
                               const AttentionSegments* segments) {
#if WANHOST_WITH_CUDA
  if (kernels_apply(x))
    return layer_norm_modulate_kernels("layer_norm_modulate", x, scale, shift, eps, segments,
                                       false)[0];
#endif
  return reference::layer_norm_modulate(x, scale, shift, eps, segments);
}

std::pair<at::Tensor, at::Tensor> layer_norm_modulate_with_input(
    const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, double eps,
    const AttentionSegments* segments) {
#if WANHOST_WITH_CUDA
  if (kernels_apply(x)) {
    auto out = layer_norm_modulate_kernels("layer_norm_modulate_with_input", x, scale, shift, eps,
                                           segments, true);
    return {out[0], out[1]};
  }
#endif
  return reference::layer_norm_modulate_with_input(x, scale, shift, eps, segments);
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

std::pair<at::Tensor, at::Tensor> gated_residual_norm(const at::Tensor& x, const at::Tensor& y,
                                                      const at::Tensor& gate,
                                                      const at::Tensor& scale,
                                                      const at::Tensor& shift, double eps,
                                                      const AttentionSegments* segments) {
#if WANHOST_WITH_CUDA
  if (kernels_apply(x) && y.scalar_type() == at::kBFloat16 && y.sizes() == x.sizes() &&
      y.device() == x.device() && x.dim() == 3) {
    const auto n = samples_of(x, segments);
    check_vectors(x, scale, n, "gated_residual_norm", "scale");
    check_vectors(x, shift, n, "gated_residual_norm", "shift");
    if (gate.defined()) check_vectors(x, gate, n, "gated_residual_norm", "gate");
    const auto g = gate.defined() ? gate : at::empty({0}, x.options().dtype(at::kFloat));
    auto out = GatedResidualNorm::apply(x, y, g, scale, shift, eps, rows_of(x, segments));
    return {out[0], out[1]};
  }
#endif
  return reference::gated_residual_norm(x, y, gate, scale, shift, eps, segments);
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

std::int64_t lt_fallback_count() {
#if WANHOST_WITH_CUDA
  return lt_fallbacks.load();
#else
  return 0;
#endif
}

at::Tensor gelu_feed_forward(const at::Tensor& x, const at::Tensor& w_up, const at::Tensor& b_up,
                             const at::Tensor& w_down, const at::Tensor& b_down) {
#if WANHOST_WITH_CUDA
  auto eligible = [&](const at::Tensor& t) {
    return t.defined() && t.device() == x.device() && weight_dtype_ok(t, x) && t.is_contiguous() &&
           aligned(t);
  };
  if ((lt_use().gelu || lt_use().dgelu) && x.dim() >= 2 && kernels_apply(x) && x.is_contiguous() &&
      eligible(w_up) && eligible(b_up) && eligible(w_down) && eligible(b_down) && w_up.dim() == 2 &&
      w_down.dim() == 2 && w_up.size(1) == x.size(-1) && w_down.size(1) == w_up.size(0) &&
      b_up.numel() == w_up.size(0) && b_down.numel() == w_down.size(0) && w_up.size(0) % 8 == 0 &&
      w_down.size(0) % 8 == 0)
    return GeluFeedForward::apply(x, w_up, b_up, w_down, b_down);
#endif
  return reference::gelu_feed_forward(x, as_dtype_of(w_up, x), as_dtype_of(b_up, x),
                                      as_dtype_of(w_down, x), as_dtype_of(b_down, x));
}

namespace {

// Whether LinearsOfOneInput takes x and these (weight, bias) pairs: x bf16 on the kernels' device
// and contiguous; biases present (the column-sum kernel reads the output gradient [tokens, out]
// bf16: out a multiple of 8).
[[maybe_unused]] bool linears_take(const at::Tensor& x, const std::vector<at::Tensor>& params) {
  if (params.empty() || x.dim() < 2 || !kernels_apply(x) || !x.is_contiguous()) return false;
  for (std::size_t i = 0; i < params.size(); i += 2) {
    const auto &w = params[i], &b = params[i + 1];
    if (!w.defined() || !b.defined() || !weight_dtype_ok(w, x) || !weight_dtype_ok(b, x) ||
        w.dim() != 2 || w.size(0) % 8 != 0 || w.size(1) != x.size(-1) || w.device() != x.device())
      return false;
  }
  return true;
}

// x W^T + b through ATen, the parameters cast to x's dtype.
at::Tensor aten_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  const auto b = as_dtype_of(bias, x);
  return at::linear(x, as_dtype_of(weight, x),
                    b.defined() ? std::optional<at::Tensor>(b) : std::nullopt);
}

}  // namespace

std::vector<at::Tensor> shared_input_linears(const at::Tensor& x,
                                             const std::vector<at::Tensor>& weights_and_biases) {
  TORCH_CHECK(weights_and_biases.size() % 2 == 0,
              "fused::shared_input_linears: weights and biases come in pairs, got ",
              weights_and_biases.size(), " tensors");
#if WANHOST_WITH_CUDA
  if (linears_take(x, weights_and_biases))
    return LinearsOfOneInput::apply(x, at::TensorList(weights_and_biases));
#endif
  std::vector<at::Tensor> out;
  for (std::size_t i = 0; i < weights_and_biases.size(); i += 2)
    out.push_back(aten_linear(x, weights_and_biases[i], weights_and_biases[i + 1]));
  return out;
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
#if WANHOST_WITH_CUDA
  if (linears_take(x, {weight, bias}))
    return LinearsOfOneInput::apply(x, at::TensorList{weight, bias})[0];
#endif
  return aten_linear(x, weight, bias);
}

}  // namespace wanhost::fused
